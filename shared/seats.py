"""Seats: a worker's free slot, with a pipeline running, offered to the API's create step.

One at a time, a WebSocket start made three Redis round trips one after another
before the API could answer (ops/bench/start_trace.py): the API's create step, the
worker's claim and take once the doorbell woke it, and the API's wake on ``ready``;
each wakes a process that had gone idle, and the answer came 3.6 ms (p50) after the
session was queued. Yet a worker waiting for work with a free slot and a WebSocket
pipeline running knows beforehand all that its take of the next session will write.
So it writes that down as it starts to wait: a seat (``keys.worker_seat``, its take's
arguments). The create step of a new WebSocket session takes the session in the seat's
name, moves it on to ``ready`` and pushes it to the worker's seated list, all in the one
step (``shared.live``'s ``seat``): the API answers with the worker's address at once, and
the worker's blocking pop, on its seated list as on the doorbell, brings the session in
while the answer travels. A client that is sooner still is held by the worker's
listener for a moment (``worker.worker.TAKEN_ARRIVAL_S``). Measured on a shared 2-core
machine, the hop saved is worth 0-0.8 ms of the answer's 6-7 ms (two interleaved start
traces, README, Performance): the wake of a process gone idle dominates each hop there,
and one round trip with its wakes is what a seat removes.

This is dispatch without a start job for that one case, where DESIGN has arq dispatch
every start: a seated session is not waiting for anybody, so there is nothing for a
queue to hold, expire or retry. Every other start (another transport, a profile with no
pipeline running, any session while one waits in the pool, a worker with no seat
offered) is queued as before, and a session of a worker that dies is recovered through
the queue as before.

What holds, and where it is kept:

- A seat is offered only while its worker's poll waits for work, with a free slot and
  the pipelines its take binds held out for it (worker.warm), and is withdrawn
  (``withdraw``) before the worker claims anything again: a slot is never both seated and
  claimed from the queue, and a seated session always finds its pipeline.
- A seat never jumps the queue: the create step seats a session only while nothing
  waits in the pool.
- A draining or stalled worker's seat is not taken (its slots entry offers none), nor one
  whose heartbeat lapsed; and a seat expires ``SEAT_SLACK_S`` after the wait it was
  offered for (1.5 s with the 1 s safety poll): a worker killed while offering one can be
  handed at most one session, within that time, and that session goes the way of any
  session of a lost worker (the reaper queues it again: ``recovering``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis

from shared import keys
from shared.live import TakeStep
from shared.queue import RING

SEAT_SLACK_S = 0.5
"""A seat outlives the wait it was offered for by this much: its worker, alive, offers it
again (or withdraws it) before then."""

SEATED_TTL_MS = 60_000
"""A seated list nobody pops (its worker died) is dropped after this long."""

WAKE = "-"
"""What a worker pushes to its own seated list to end its wait now: a drain (to withdraw
its seat), a pipeline built (to offer one)."""

# KEYS: 1 the worker's seat, 2 the pool's seats, 3 the worker's seated list. ARGV: 1 the
# worker id. The seat is gone from here on; returns what was seated meanwhile (and wakes).
_WITHDRAW = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
local seated = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return seated
"""


class Seated(NamedTuple):
    """A session the create step seated in a worker's seat: ready, and the worker's."""

    session_id: str
    meta: dict[str, str]
    """Its hash as the take left it (what a worker's own take returns)."""


class Woken(NamedTuple):
    """What ended a worker's wait (``WorkerSeat.wait``); neither: a timeout or a wake."""

    seated: Seated | None = None
    ring: str | None = None
    """A ring's session ('' for a ring naming none: ``queue.RING``); None: no ring."""


def offer(step: TakeStep, profiles: list[str], protocol: int) -> str:
    """A seat: the worker's take of any session (``LiveSessions.take_step``, for no session
    in particular: its head is the create step's), for sessions of ``profiles``."""
    return json.dumps(
        {
            "protocol": str(protocol),
            "profiles": " ".join(profiles),
            "take": [str(arg) for arg in step.args[3:]],
        }
    )


class WorkerSeat:
    """One worker's seat in its pool: offered as it waits, withdrawn as it wakes."""

    def __init__(self, redis: aioredis.Redis, pool: str, worker_id: str):
        self.redis = redis
        self.pool = pool
        self.worker_id = worker_id
        self._withdraw = redis.register_script(_WITHDRAW)
        self._keys = [
            keys.worker_seat(worker_id),
            keys.pool_seats(pool),
            keys.worker_seated(worker_id),
        ]

    async def wait(self, timeout: float, seat: str | None = None) -> Woken:
        """With ``seat``, offer it; and wait, in one round trip, until a session is seated
        in it, a job of the pool is rung in, the worker is woken (``wake``), or ``timeout``
        seconds pass. The seat is still offered after a ring or a timeout: ``withdraw`` it."""
        seat_key, seats_key, seated_key = self._keys
        async with self.redis.pipeline(transaction=False) as pipe:
            if seat is not None:
                pipe.set(seat_key, seat, px=int((timeout + SEAT_SLACK_S) * 1000))
                pipe.sadd(seats_key, self.worker_id)
            pipe.blpop([seated_key, keys.doorbell(self.pool)], timeout)  # type: ignore[arg-type]  # redis-py: timeout typed int; Redis takes float seconds
            *_, popped = await pipe.execute()
        if popped is None:
            return Woken()
        key, value = (_text(x) for x in popped)
        if key == seated_key:
            return Woken(seated=_seated(value))
        return Woken(ring="" if value == RING else value)

    async def withdraw(self) -> Seated | None:
        """Withdraw the seat; the session seated in it meanwhile, if one was."""
        found = await cast(
            "Awaitable[list[Any]]", self._withdraw(keys=self._keys, args=[self.worker_id])
        )
        for value in (_text(x) for x in found):
            seated = _seated(value)
            if seated is not None:
                return seated  # one at most: the seat went with it
        return None

    async def wake(self, *, withdraw: bool = False) -> None:
        """End the worker's wait now; with ``withdraw``, its seat is gone at once, before
        the wait has woken (what was seated before comes in through the wait, as ever)."""
        seat_key, seats_key, seated_key = self._keys
        async with self.redis.pipeline(transaction=False) as pipe:
            if withdraw:
                pipe.delete(seat_key)
                pipe.srem(seats_key, self.worker_id)
            pipe.rpush(seated_key, WAKE)
            pipe.pexpire(seated_key, SEATED_TTL_MS)
            await pipe.execute()


def _seated(value: str) -> Seated | None:
    if value == WAKE:
        return None
    session_id, flat = json.loads(value)
    return Seated(session_id, dict(zip(flat[::2], flat[1::2], strict=True)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
