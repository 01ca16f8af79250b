"""Seats (shared/seats.py): a waiting worker's free slot, taken in a session's create step.

Against a real redis-server: the create step's Lua and the worker's offer, wait and
withdrawal, as the API and a worker make them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, create_pool
from arq.constants import job_key_prefix

from shared import keys, queue, seats
from shared.connections import arq_redis_settings
from shared.fleet import PROTOCOL
from shared.lifecycle import OWNER_CONNECT
from shared.live import Created, LiveSessions, ReadyAtTake, SeatOffer
from shared.seats import WorkerSeat

LISTENER = {"ws_url": "ws://127.0.0.1:1/ws", "ws_listener": "listener-w1"}


@pytest.fixture
async def arq(redis, redis_server) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(arq_redis_settings(redis_server.url))
    yield pool
    await pool.aclose()


async def _worker_alive(redis: Any, worker_id: str = "w1", offered: int = 2) -> None:
    """A worker's beat and its pool's slots entry, as its heartbeat writes them."""
    await redis.set(keys.worker(worker_id), "{}", px=10_000)
    await redis.hset(keys.pool_slots("server"), worker_id, f"{offered} {offered} echo,websocket")


def _offer(redis: Any, worker_id: str = "w1", protocol: int = PROTOCOL) -> str:
    """A seat as a worker offers it: its take of any session, with the ready move."""
    ready = ReadyAtTake(
        profiles=["echo"],
        data={"transport": "websocket", **LISTENER},
        private={OWNER_CONNECT: json.dumps(LISTENER)},
    )
    step = LiveSessions(redis).take_step("", worker_id, data={"pool": "server"}, ready_if=ready)
    return seats.offer(step, ["echo"], protocol)


async def _create(
    arq: ArqRedis, redis: Any, session_id: str, transport: str = "websocket", profile: str = "echo"
) -> Created:
    """A new session as the API's create step makes it (job, ring, and a seat if offered)."""
    fields = {
        "conversation_id": "c",
        "pool": "server",
        "transport": transport,
        "profile": profile,
        "protocol": str(PROTOCOL),
    }
    return await LiveSessions(redis).create(
        session_id,
        "u1",
        fields,
        job=queue.new_start_job(arq, session_id, "server", expires_s=60),
        seat=SeatOffer(PROTOCOL, seats.SEATED_TTL_MS),
    )


async def _offered(redis: Any, seat: WorkerSeat, offer: str) -> asyncio.Task[seats.Woken]:
    """The worker waiting on its seat (a task), once the seat is there."""
    waiting = asyncio.create_task(seat.wait(5.0, offer))
    for _ in range(200):
        if await redis.exists(keys.worker_seat(seat.worker_id)):
            return waiting
        await asyncio.sleep(0.005)
    raise AssertionError("the seat was never offered")


async def _states(redis: Any, session_id: str) -> list[str]:
    entries = await redis.xrange(keys.session_events(session_id))
    return [json.loads(fields["data"])["state"] for _id, fields in entries]


async def test_a_new_websocket_session_is_seated_in_a_waiting_workers_seat(arq, redis) -> None:
    await _worker_alive(redis)
    seat = WorkerSeat(redis, "server", "w1")
    waiting = await _offered(redis, seat, _offer(redis))

    created = await _create(arq, redis, "s1")

    # Ready on w1 in its create step, with its listener for the API to mint a token for.
    assert created.seated is not None and created.position == 0
    assert created.seated["state"] == "ready" and created.seated["worker_id"] == "w1"
    assert json.loads(created.seated[OWNER_CONNECT]) == LISTENER
    assert await _states(redis, "s1") == ["queued", "starting", "ready"]
    assert await redis.get(keys.session_alive("s1")) == "w1"
    # Nothing queued for it: no job, no ring; and the seat is gone.
    assert await redis.zcard(keys.queue("server")) == 0
    assert not await redis.exists(job_key_prefix + "s1")
    assert await redis.llen(keys.doorbell("server")) == 0
    assert not await redis.exists(keys.worker_seat("w1"))
    assert await redis.smembers(keys.pool_seats("server")) == set()
    # The worker's wait brings it in, with the hash its own take would have returned.
    woken = await asyncio.wait_for(waiting, 5)
    assert woken.seated is not None and woken.ring is None
    assert woken.seated.session_id == "s1"
    assert woken.seated.meta["state"] == "ready" and woken.seated.meta["transport"] == "websocket"

    # The seat was one slot: the next session is queued, and rung in, as before.
    second = await _create(arq, redis, "s2")
    assert second.seated is None
    assert await redis.zcard(keys.queue("server")) == 1
    assert (await LiveSessions(redis).get("s2"))["state"] == "queued"


async def _not_seated(arq: ArqRedis, redis: Any, session_id: str, **create: str) -> None:
    created = await _create(arq, redis, session_id, **create)
    assert created.seated is None
    assert (await LiveSessions(redis).get(session_id))["state"] == "queued"
    assert await redis.zscore(keys.queue("server"), session_id) is not None


@pytest.mark.parametrize(
    "case",
    ["webrtc", "another profile", "another protocol", "a session waits", "draining", "gone"],
)
async def test_a_seat_takes_only_what_its_worker_would_and_never_jumps_the_queue(
    arq, redis, case
) -> None:
    await _worker_alive(redis, offered=0 if case == "draining" else 2)
    await _worker_alive(redis, "w2")  # another, with free slots and no seat: a slot is free
    protocol = PROTOCOL + 1 if case == "another protocol" else PROTOCOL
    seat = WorkerSeat(redis, "server", "w1")
    waiting = await _offered(redis, seat, _offer(redis, protocol=protocol))
    if case == "a session waits":
        await _not_seated(arq, redis, "ahead", transport="webrtc")
    if case == "gone":  # its beat lapsed (a worker killed): its seat is forgotten
        await redis.delete(keys.worker("w1"))

    if case == "webrtc":
        await _not_seated(arq, redis, "s1", transport="webrtc")
    elif case == "another profile":
        await _not_seated(arq, redis, "s1", profile="assistant")
    else:
        await _not_seated(arq, redis, "s1")

    if case in ("draining", "gone"):
        assert await redis.smembers(keys.pool_seats("server")) == set()
    else:  # still offered, for a session it can take
        assert await redis.smembers(keys.pool_seats("server")) == {"w1"}
    # Its worker woke for the ring of the queued one, and withdraws the seat.
    woken = await asyncio.wait_for(waiting, 5)
    assert woken.seated is None and woken.ring is not None
    assert await seat.withdraw() is None
    assert not await redis.exists(keys.worker_seat("w1"))


async def test_a_seat_lapses_when_its_worker_does_not_offer_it_again(arq, redis) -> None:
    await _worker_alive(redis)
    seat = WorkerSeat(redis, "server", "w1")
    woken = await seat.wait(0.05, _offer(redis))  # a wait that ended; the worker then died
    assert woken == seats.Woken()
    await asyncio.sleep(0.05 + seats.SEAT_SLACK_S + 0.05)
    await _not_seated(arq, redis, "s1")
    assert await redis.smembers(keys.pool_seats("server")) == set()


async def test_a_session_seated_as_the_worker_wakes_for_something_else_is_withdrawn_with_it(
    arq, redis
) -> None:
    await _worker_alive(redis)
    seat = WorkerSeat(redis, "server", "w1")
    # The wait ended on its own (a ring, the safety poll), the seat still offered: a create
    # seats a session in it before the worker withdraws it.
    await seat.wait(0.01, _offer(redis))
    created = await _create(arq, redis, "s1")
    assert created.seated is not None

    seated = await seat.withdraw()
    assert seated is not None and seated.session_id == "s1"
    assert seated.meta["state"] == "ready"
    assert await seat.withdraw() is None  # brought in once
    assert not await redis.exists(keys.worker_seated("w1"))
    await _not_seated(arq, redis, "s2")  # withdrawn: nothing seated


async def test_a_wake_ends_the_wait_and_is_not_a_session(redis) -> None:
    await _worker_alive(redis)
    seat = WorkerSeat(redis, "server", "w1")
    waiting = await _offered(redis, seat, _offer(redis))
    await seat.wake()
    woken = await asyncio.wait_for(waiting, 5)
    assert woken == seats.Woken()
    assert await seat.withdraw() is None
    assert await redis.smembers(keys.pool_seats("server")) == set()
