"""The reaper: sessions nobody is looking after end with a reason, promptly.

DESIGN decision 2 — liveness is ours. A session a worker owns has an
``alive`` key its worker refreshes every heartbeat; when the key expires the
worker is gone, and the session fails with ``worker_lost`` within the
heartbeat TTL. A queued session that no worker took within the queue TTL
expires with ``no_capacity`` and leaves the queue. Transitions are atomic
compare-and-set in Redis, so several API processes may reap side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from api import metrics
from shared import keys
from shared.events import OWNED_STATES, Reason, SessionState
from shared.live import LiveSessions

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, live: LiveSessions, *, queue_ttl: float, interval: float = 0.5):
        self.live = live
        self.redis = live.redis
        self.queue_ttl = queue_ttl
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reaper: %s", exc)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> list[tuple[str, str]]:
        """One pass over live sessions; returns (session id, reason) of those it ended."""
        session_ids = sorted(await self.redis.smembers(keys.LIVE_SESSIONS))
        if not session_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hmget(keys.session(sid), "state", "created_ts", "pool", "job_id")
                pipe.exists(keys.session_alive(sid))
            replies = await pipe.execute()
        now = time.time()
        ended: list[tuple[str, str]] = []
        for i, sid in enumerate(session_ids):
            (state, created_ts, pool, job_id), alive = replies[2 * i], replies[2 * i + 1]
            if state is None:  # hash expired or never written: nothing to announce
                await self.redis.srem(keys.LIVE_SESSIONS, sid)
            elif state in OWNED_STATES and not alive:
                if await self._end(
                    sid, SessionState.FAILED, Reason.WORKER_LOST, {SessionState(state)}
                ):
                    ended.append((sid, Reason.WORKER_LOST))
            elif state == SessionState.QUEUED and now - float(created_ts or now) > self.queue_ttl:
                if await self._end(
                    sid, SessionState.EXPIRED, Reason.NO_CAPACITY, {SessionState.QUEUED}
                ):
                    job = job_id or sid
                    await self.redis.zrem(keys.queue(pool or ""), job)
                    await self.redis.delete(f"arq:job:{job}")
                    ended.append((sid, Reason.NO_CAPACITY))
        return ended

    async def _end(
        self, sid: str, to: SessionState, reason: Reason, allowed: set[SessionState]
    ) -> bool:
        changed, _ = await self.live.transition(sid, to, reason, allowed_from=allowed)
        if changed:
            metrics.REAPED_SESSIONS.labels(reason=reason).inc()
            log.info("session %s %s (%s)", sid, to, reason)
        return changed


async def run_reaper(reaper: Reaper) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await reaper.run()
