"""The reaper: sessions nobody is looking after end with a reason, promptly.

DESIGN decision 2 — liveness is ours. A session a worker owns has an
``alive`` key its worker refreshes every heartbeat; when the key expires the
worker is gone. Sooner, when Redis shows none of a worker's connections (each
is named after it) and its heartbeat is two beats late: a killed process's
sockets close at once, a stalled one keeps them. A lost worker's session goes
``recovering`` and back to the head of its pool's queue, where another worker
takes it up with the conversation so far (``VOICEPOOL_MAX_RECOVERIES`` times;
then, or with no worker within the queue TTL, it fails with ``worker_lost``).
A queued session that no worker took within the queue TTL expires with
``no_capacity`` and leaves the queue. Transitions are atomic compare-and-set in
Redis, so several API processes may reap side by side.

A missing heartbeat is evidence only if the reaper could have seen it. Redis
being unreachable, Redis restarting (its keys' deadlines passed while it was
down) or this process not running for a while (a paused machine) say nothing
about the workers, so after any of them every worker gets a full heartbeat TTL
to beat again before a session is judged lost or a queued one expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import cast

from arq.connections import ArqRedis

from api import metrics
from shared import keys, queue
from shared.events import EventType
from shared.fleet import PROTOCOL, WORKER_CLIENT_PREFIX, WorkerBeat, worker_client_name
from shared.lifecycle import LIVE_STATES, OWNED_STATES, Reason, SessionState
from shared.live import LiveSessions, PendingEvent
from shared.queue import START_JOB_SLACK_S, start_rate, wait_at
from shared.settings import PoolFallback

log = logging.getLogger(__name__)

# A round of this loop that comes this much later than planned means the process
# (or the whole machine) was not running: what it would have seen is unknown.
LOOP_GAP_S = 2.0
# A worker this many heartbeats late, with no connection to Redis, is gone.
LATE_BEATS = 2.0
_FIELDS = (
    "state",
    "pool",
    "worker_id",
    "reason",
    "created_ts",
    "job_id",
    "queue_position",
    "losses",
    "recovering_ts",
)


class Reaper:
    def __init__(
        self,
        live: LiveSessions,
        *,
        queue_ttl: float,
        interval: float = 0.5,
        pools: list[str] | None = None,
        arq: ArqRedis | None = None,
        max_recoveries: int = 2,
        heartbeat_interval: float = 1.0,
        fast_worker_loss: bool = True,
        fallbacks: dict[str, PoolFallback] | None = None,
    ):
        """Without ``arq`` (to queue a lost worker's sessions again) or with
        ``max_recoveries=0``, a lost worker's sessions fail at once."""
        self.live = live
        self.redis = live.redis
        self.queue_ttl = queue_ttl
        self.interval = interval
        self.pools = pools or []
        self.arq = arq
        self.max_recoveries = max_recoveries
        self.heartbeat_interval = heartbeat_interval
        self.fast_worker_loss = fast_worker_loss
        # Pools whose queued sessions move on after a while: pool → (fallback, seconds).
        self.spill_after = {
            pool: (to.pool, to.after)
            for pool, to in (fallbacks or {}).items()
            if to.after is not None
        }
        self._still_live: Counter[tuple[str, str]] = Counter()  # (pool, state): last sweep's
        self._judge_from = 0.0  # monotonic time before which nobody is judged lost
        self._blind = False  # the last round could not reach Redis
        self._redis_run_id: str | None = None
        self._last_round: float | None = None

    @property
    def judging(self) -> bool:
        """False during the grace that follows Redis being away or restarted."""
        return time.monotonic() >= self._judge_from

    def _grant_grace(self, why: str) -> None:
        self._judge_from = time.monotonic() + self.live.heartbeat_ttl
        log.warning("reaper: %s; judging no session for %.1f s", why, self.live.heartbeat_ttl)

    async def run(self) -> None:
        while True:
            try:
                await self.check_redis()
                await self.sweep()
                await self.observe_fleet()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._blind = True
                log.warning("reaper: %s", exc)
            await asyncio.sleep(self.interval)

    async def check_redis(self) -> None:
        """Grant the grace when this round follows a blind spot: Redis unreachable or
        restarted since the last round, or this loop not running for a while."""
        now = time.monotonic()
        late = self._last_round is not None and now - self._last_round > self.interval + LOOP_GAP_S
        self._last_round = now
        info = await self.redis.info("server")
        run_id, uptime = info.get("run_id"), float(info.get("uptime_in_seconds", 0))
        restarted = self._redis_run_id is not None and run_id != self._redis_run_id
        # First sight of a Redis that has just started: it may have restarted under us.
        young = self._redis_run_id is None and uptime < self.live.heartbeat_ttl
        if run_id != self._redis_run_id:  # a Redis new to this API (restarted empty?)
            await self.redis.set(keys.PROTOCOL, PROTOCOL)  # for workers that join it
        self._redis_run_id = run_id
        if self._blind:
            self._grant_grace("Redis answers again")
        elif restarted:
            self._grant_grace("Redis restarted")
        elif young:
            self._grant_grace(f"Redis started {uptime:.0f} s ago")
        elif late:
            self._grant_grace("the reaper did not run for a while")
        self._blind = False

    async def sweep(self) -> list[tuple[str, str]]:
        """One pass over live sessions; returns (session id, reason) of those it ended, and
        (session id, ``recovering``) of those it moved on from a lost worker. Redis picks
        out the sessions that may need something (``LiveSessions.sweep``) and counts the
        others: a healthy call costs the API nothing here."""
        looked, self._still_live = await self.live.sweep(
            _FIELDS, gone=self.gone_workers, judging=self.judging
        )
        now = time.time()
        done: list[tuple[str, str]] = []
        waiting: list[tuple[str, str, str, str | None]] = []
        for sid, alive, fields in looked:
            state, pool, job_id = fields["state"], fields["pool"] or "", fields["job_id"] or sid
            outcome: str | None = None
            if state is None:  # hash expired or never written: nothing to announce
                await cast("Awaitable[int]", self.redis.srem(keys.LIVE_SESSIONS, sid))
            elif state in OWNED_STATES and self.judging:  # looked into: its worker is lost
                seen = "its heartbeat expired" if not alive else "no connection of it is left"
                outcome = await self._worker_lost(sid, SessionState(state), fields, seen)
            elif (
                state == SessionState.RECOVERING
                and self.judging
                and now - float(fields["recovering_ts"] or now) > self.queue_ttl
            ):  # no worker took it up in time
                why = (
                    Reason.WORKER_DRAINING
                    if fields["reason"] == Reason.WORKER_DRAINING
                    else Reason.WORKER_LOST
                )
                ending = self.live.finish(sid, why, only_from=SessionState.RECOVERING)
                if await self._ended(sid, why, ending):  # its job left the queue with it
                    outcome = why
            elif (
                state == SessionState.QUEUED
                and self.judging
                and now - float(fields["created_ts"] or now) > self.queue_ttl
            ):
                if await self._ended(sid, Reason.NO_CAPACITY, self.live.expire(sid)):
                    outcome = Reason.NO_CAPACITY
            elif state == SessionState.QUEUED and await self._spilled(sid, pool, fields, now):
                # Still queued, in the fallback's queue now: counted there.
                self._still_live[(self.spill_after[pool][0], state)] += 1
                continue
            elif state == SessionState.QUEUED:
                waiting.append((sid, pool, job_id, fields["queue_position"]))
            if outcome is not None:
                done.append((sid, outcome))
            if state is not None and outcome in (None, SessionState.RECOVERING):
                self._still_live[(pool, outcome or state)] += 1  # still live after this sweep
        await self._tell_positions(waiting)
        return done

    async def _spilled(
        self, sid: str, pool: str, fields: dict[str, str | None], now: float
    ) -> bool:
        """Move a session queued long enough to its pool's fallback, if a worker there has
        a free slot (VOICEPOOL_POOL_FALLBACKS=pool=fallback:seconds); wake that worker."""
        if pool not in self.spill_after:
            return False
        to, after = self.spill_after[pool]
        if now - float(fields["created_ts"] or now) < after:  # not yet: no round trip
            return False
        if not await self.live.spill(sid, pool, to, after):
            return False
        await queue.ring(self.redis, to)
        metrics.SESSIONS_SPILLED.labels(pool=pool, to=to, reason="waited").inc()
        log.info("session moved from pool %s to %s (queued %g s)", pool, to, after,
                 extra={"session_id": sid})  # fmt: skip
        return True

    async def _worker_lost(
        self, sid: str, state: SessionState, fields: dict[str, str | None], seen: str
    ) -> str | None:
        """The session's worker is gone: queue the session again for another worker (at the
        head of its pool's queue), or, past ``max_recoveries``, end it. Returns what became
        of it (None: it moved on meanwhile, and nothing was done)."""
        if self.arq is None or int(fields["losses"] or 0) >= self.max_recoveries:
            ending = self.live.finish(sid, Reason.WORKER_LOST, only_from=state)
            return (
                Reason.WORKER_LOST if await self._ended(sid, Reason.WORKER_LOST, ending) else None
            )
        moved, _ = await self.live.move(sid, "recover", Reason.WORKER_LOST, only_from=state)
        if not moved:
            return None
        try:
            await queue.enqueue_recovery(
                self.redis,
                self.arq,
                sid,
                fields["pool"] or "",
                created_ts=float(fields["created_ts"] or 0),
                expires_s=self.queue_ttl + START_JOB_SLACK_S,
                lost=True,
            )
        except Exception:
            log.exception("a recovering session could not be queued", extra={"session_id": sid})
            ending = self.live.finish(sid, Reason.WORKER_LOST, only_from=SessionState.RECOVERING)
            return (
                Reason.WORKER_LOST if await self._ended(sid, Reason.WORKER_LOST, ending) else None
            )
        log.info(
            "session recovering: worker %s is gone (%s)",
            fields["worker_id"],
            seen,
            extra={"session_id": sid},
        )
        return SessionState.RECOVERING

    async def gone_workers(self) -> set[str]:
        """Workers surely gone before their heartbeats expire: a heartbeat two beats late
        and no connection of theirs in ``CLIENT LIST`` (a killed process's sockets close at
        once; a stalled one keeps them, and waits for the expiry). Nothing when no worker's
        connection shows at all (a proxy in front of Redis hides them) or when turned off."""
        if not self.fast_worker_loss:
            return set()
        worker_ids = sorted(await cast("Awaitable[set[str]]", self.redis.smembers(keys.WORKERS)))
        if not worker_ids:
            return set()
        beats = await self.redis.mget([keys.worker(wid) for wid in worker_ids])
        now = time.time()
        late = {
            wid
            for wid, beat in zip(worker_ids, beats, strict=True)
            if beat is not None
            and now - WorkerBeat.model_validate_json(beat).ts > LATE_BEATS * self.heartbeat_interval
        }
        if not late:
            return set()
        clients = await self.redis.client_list(_type="normal")
        names = {str(c.get("name", "")) for c in clients}
        if not any(name.startswith(WORKER_CLIENT_PREFIX) for name in names):
            return set()
        return {wid for wid in late if worker_client_name(wid) not in names}

    async def _tell_positions(self, waiting: list[tuple[str, str, str, str | None]]) -> None:
        """Publish each queued session's place and expected wait when its place changed.

        One pipelined round trip for all the places, one start rate per pool: the
        cost of a sweep must not grow by a round trip per waiting session.
        """
        if not waiting:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for _sid, pool, job_id, _told in waiting:
                pipe.zrank(keys.queue(pool), job_id)
            ranks = await pipe.execute()
        rates: dict[str, float] = {}
        moved: list[PendingEvent] = []
        for (sid, pool, _job_id, told), rank in zip(waiting, ranks, strict=True):
            if rank is None or str(rank + 1) == told:
                continue
            position = rank + 1
            if pool not in rates:
                rates[pool] = await start_rate(self.redis, pool)
            told_now = {"position": position, "estimated_wait_s": wait_at(position, rates[pool])}
            moved.append((sid, EventType.SESSION_QUEUE, told_now, {"queue_position": position}))
        # One round trip for them all: with 100 queued, two each were a fifth of the API.
        await self.live.publish_all(moved)

    async def observe_fleet(self) -> None:
        """Refresh the per-pool gauges: queue depth, live sessions, workers, capacity.

        Live sessions by state come from the sweep just before, which read them already.
        """
        worker_ids = sorted(await cast("Awaitable[set[str]]", self.redis.smembers(keys.WORKERS)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in self.pools:
                pipe.zcard(keys.queue(pool))
            for wid in worker_ids:
                pipe.get(keys.worker(wid))
            replies = await pipe.execute()
        depths = replies[: len(self.pools)]
        beats = replies[len(self.pools) :]
        for pool, depth in zip(self.pools, depths, strict=True):
            metrics.QUEUE_DEPTH.labels(pool=pool).set(depth)
        live: dict[tuple[str, str], int] = {
            (pool, str(state)): 0 for pool in self.pools for state in LIVE_STATES
        }
        for (pool, state), count in self._still_live.items():
            if pool and state in LIVE_STATES:
                live[(pool, state)] = live.get((pool, state), 0) + count
        for (pool, state), count in live.items():
            metrics.LIVE_SESSIONS.labels(pool=pool, state=state).set(count)
        workers = dict.fromkeys(self.pools, 0)
        capacity = dict.fromkeys(self.pools, 0)
        stalled = dict.fromkeys(self.pools, 0)
        for wid, beat in zip(worker_ids, beats, strict=True):
            if beat is None:  # heartbeat expired: the worker is gone
                await cast("Awaitable[int]", self.redis.srem(keys.WORKERS, wid))
                continue
            status = WorkerBeat.model_validate_json(beat)
            pool = status.pool
            workers[pool] = workers.get(pool, 0) + 1
            capacity[pool] = capacity.get(pool, 0) + status.serving_capacity
            stalled[pool] = stalled.get(pool, 0) + int(status.stalled)
        for pool, count in workers.items():
            metrics.POOL_WORKERS.labels(pool=pool).set(count)
            metrics.POOL_CAPACITY.labels(pool=pool).set(capacity[pool])
            metrics.POOL_WORKERS_STALLED.labels(pool=pool).set(stalled[pool])

    async def _ended(self, sid: str, reason: Reason, move: Awaitable[bool]) -> bool:
        changed = await move
        if changed:
            metrics.REAPED_SESSIONS.labels(reason=reason).inc()
            log.info("session ended by the reaper (%s)", reason, extra={"session_id": sid})
        return changed
