"""A worker's heartbeat: what it tells the fleet about itself, read the same way everywhere.

The worker writes it (``keys.worker(id)``, short TTL) every heartbeat; the API
lists it to operators and the reaper counts capacity from it. A worker is
counted as capacity only while it is polling its queue: the heartbeat carries
when the poll loop last went round, so a worker whose heartbeat lives on while
its poll loop is stuck shows as ``stalled`` with no free slots.
"""

from __future__ import annotations

from pydantic import BaseModel

PROTOCOL = 2
"""The contract between the API and workers, through Redis: keys, Lua scripts, job and
event shapes, the heartbeat. An API and workers run together exactly when their numbers
are equal, whatever their versions (``voicepool_*_info`` and the Operators page show
both); it goes up when either side would misread the other. 2: workers count their free
slots, and say which profiles they run, for admission (``keys.pool_slots``); an API of 2
sees a worker of 1 as none.
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
