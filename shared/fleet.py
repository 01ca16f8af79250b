"""A worker's heartbeat: what it tells the fleet about itself, read the same way everywhere.

The worker writes it (``keys.worker(id)``, short TTL) every heartbeat; the API
lists it to operators and the reaper counts capacity from it. A worker is
counted as capacity only while it is polling its queue: the heartbeat carries
when the poll loop last went round, so a worker whose heartbeat lives on while
its poll loop is stuck shows as ``stalled`` with no free slots.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import cast

import redis.asyncio as aioredis
from pydantic import BaseModel

from shared import keys

PROTOCOL = 4
"""The contract between the API and workers, through Redis: keys, Lua scripts, job and
event shapes, the heartbeat. An API and workers run together exactly when their numbers
are equal, whatever their versions (``voicepool_*_info`` and the Operators page show
both); it goes up when either side would misread the other. 2: workers count their free
slots, and say which profiles they run, for admission (``keys.pool_slots``); an API of 2
sees a worker of 1 as none. 3: start jobs carry the protocol they were made under, and a
worker hands back (and drains on) a job of another one; a session can move to its pool's
fallback while queued (``pool_fallback``). 4: WebSocket tokens are signed by the API
with the session's key and checked by the worker (``shared.ws_tokens``), where a worker of
3 looked a stored token up in Redis.
"""

PROFILES = ("echo", "assistant")
"""The bot profiles there are; which of them a worker runs, its heartbeat says."""

# arq polls every 10 ms; a loop that has not gone round for this long is stuck
# (a Redis outage stalls it too, for as long as the outage lasts).
POLL_STALL_S = 3.0

WORKER_CLIENT_PREFIX = "vp-worker:"


def worker_client_name(worker_id: str) -> str:
    """The name a worker gives its Redis connections (``CLIENT LIST`` shows it), so the API
    can tell a worker that is gone (no connection left) from one that is only slow."""
    return f"{WORKER_CLIENT_PREFIX}{worker_id}"


class WorkerBeat(BaseModel):
    id: str
    pool: str
    host: str
    pid: int = 0
    version: str = ""
    protocol: int = 0
    """``PROTOCOL`` of the worker's code (0: one from before the number existed)."""
    profiles: list[str] = []
    """The bot profiles this worker can run (``assistant`` only with a model key)."""
    transports: list[str] = []
    """The transports it can serve (``daily`` only with a Daily key)."""
    capacity: int
    active: int
    draining: bool = False
    load: float = 0.0
    tasks: int = 0
    started_at: float = 0.0
    ts: float
    polled_at: float | None = None
    """When the worker's queue poll loop last completed a round (None: an older worker)."""

    @property
    def serves(self) -> list[str]:
        """What admission matches a session's profile and transport against."""
        return [*self.profiles, *self.transports]

    @property
    def poll_age(self) -> float | None:
        """Seconds since the poll loop went round, as of this beat (one host's clock)."""
        return None if self.polled_at is None else round(max(self.ts - self.polled_at, 0.0), 3)

    @property
    def stalled(self) -> bool:
        return self.poll_age is not None and self.poll_age > POLL_STALL_S

    @property
    def serving_capacity(self) -> int:
        """Slots this worker offers the pool: none while draining or stalled."""
        return 0 if self.draining or self.stalled else self.capacity

    @property
    def free_slots(self) -> int:
        """Sessions this worker would take now, as of this beat."""
        return max(self.serving_capacity - self.active, 0)


async def live_beats(redis: aioredis.Redis) -> list[WorkerBeat]:
    """The heartbeats of the workers alive now (a beat's key expires with its worker)."""
    ids = sorted(await cast("Awaitable[set[str]]", redis.smembers(keys.WORKERS)))
    beats = await redis.mget([keys.worker(i) for i in ids]) if ids else []
    return [WorkerBeat.model_validate_json(beat) for beat in beats if beat is not None]
