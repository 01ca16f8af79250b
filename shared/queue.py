"""The start queue: each waiting session is one arq job in its pool's queue.

arq keeps a queue as a sorted set of job ids scored by when they may run, and
each job's arguments under its own key; the API enqueues, a worker of the pool
takes the job, and whoever cancels or expires a waiting session removes both.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Collection
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job_raw, serialize_job
from arq.utils import timestamp_ms

from shared import keys
from shared.fleet import PROTOCOL
from shared.lifecycle import Reason, SessionState
from shared.live import START_RATE_WINDOW_S, TAKE_FN, LiveSessions, StartJob, Taken, TakeStep

START_JOB = "start_session"
"""The worker function a start job runs (registered under this name by the worker)."""

RING = "1"
"""A ring that names no session (``ring``'s). A new session's own ring, pushed as it is
created (``LiveSessions.create``), is its id: the worker that pops it takes the session
in the step that claims its job (``JobClaims.take_due``)."""

DOORBELL_MAX = 1024
"""Rings kept unanswered at most: enough for every job of a burst to wake a worker, while a
pool with no worker listening cannot grow the list without bound."""

START_JOB_SLACK_S = 300
"""How long a start job outlives its session's queue TTL inside arq. The reaper expires
the session at the TTL (after any grace for a Redis outage) and removes the job; arq's
own expiry only bounds a leak, and must not drop a job whose session is still waiting."""


async def enqueue_start(
    arq: ArqRedis,
    session_id: str,
    pool: str,
    *,
    job_id: str,
    expires_s: float,
    place: float | None = None,
    protocol: int = PROTOCOL,
) -> None:
    """Queue the session's start job: at the back of its pool's queue, or, with ``place``
    (a Unix time, e.g. when the session was created), before everything queued after it.
    The job carries the fleet ``protocol`` it was made under: a worker of another one
    puts it back rather than run it (a job handed back keeps the one it came with).

    arq orders a queue by the time a job may run; a time in the past runs at once, in
    that order (arq skips a score of 0, hence the floor)."""
    at = datetime.fromtimestamp(max(place, 1.0), UTC) if place is not None else None
    await arq.enqueue_job(
        START_JOB,
        session_id,
        protocol,
        _job_id=job_id,
        _queue_name=keys.queue(pool),
        _expires=expires_s,
        _defer_until=at,
    )
    await ring(arq, pool, queued=session_id)


def new_start_job(
    arq: ArqRedis, session_id: str, pool: str, *, expires_s: float, protocol: int = PROTOCOL
) -> StartJob:
    """A new session's start job, as ``enqueue_start`` queues it, for ``LiveSessions.create``
    to queue in the step that records the session: no round trip of its own.

    arq's ``enqueue_job`` WATCHes the job's key and checks that neither it nor a result
    exists first: four round trips, then the ring, a fifth of a session's create (1.0-1.6
    ms of ``POST /api/start``'s ~9 ms in the API, one at a time). A new session's id is
    new (``create`` refuses one it has seen), so is its job's: nothing to guard. The job
    is arq's own (``serialize_job``, scored by its enqueue time), read by arq's worker
    like any other (tests/unit/test_start_queue.py runs one with arq's)."""
    now_ms = timestamp_ms()
    payload = serialize_job(
        START_JOB, (session_id, protocol), {}, None, now_ms, serializer=arq.job_serializer
    )
    return StartJob(
        key=job_key_prefix + session_id,
        payload=payload,
        ttl_ms=max(int(expires_s * 1000), 1),
        score_ms=now_ms,
        doorbell=keys.doorbell(pool),
        rings_kept=DOORBELL_MAX,
    )


# Each due job of ``queue``, oldest first, is taken as arq's claim takes one (its
# in-progress key set, unless another worker's is). ARGV from ``a``: now (ms), most jobs to
# take, the in-progress key's TTL (ms), arq's in-progress, job and retry key prefixes (the
# keys are named from the ids: single-instance Redis, as arq itself). Returns {id, score,
# job, tries, ...}: with each its job as arq stored it (false: gone) and the tries arq
# counted before (false: none). Jobs another worker is starting stay queued until done:
# the read looks past that many.
_TAKE_DUE_FN = """
local function take_due(queue, a)
  local most = tonumber(ARGV[a + 1])
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', ARGV[a], 'WITHSCORES',
    'LIMIT', 0, most * 2 + 32)
  local taken = {}
  for i = 1, #due, 2 do
    if #taken >= 4 * most then break end
    local key = ARGV[a + 3] .. due[i]
    if redis.call('EXISTS', key) == 0 then
      redis.call('PSETEX', key, ARGV[a + 2], '1')
      taken[#taken + 1] = due[i]
      taken[#taken + 1] = due[i + 1]
      taken[#taken + 1] = redis.call('GET', ARGV[a + 4] .. due[i])
      taken[#taken + 1] = redis.call('GET', ARGV[a + 5] .. due[i])
    end
  end
  return taken
end
"""

# KEYS: 1 the queue. ARGV: 1-6 ``take_due``'s.
_TAKE_DUE = _TAKE_DUE_FN + "return take_due(KEYS[1], 1)"

# The claim, and the take of the session whose ring woke the worker if its job is among
# those claimed and is a new start of this protocol (its job there, never run, the
# session made by an API of ``ARGV[45]``): what ``Claim.new_start`` would take ahead, in
# the claim's own step, where it took a round trip of its own after it (a new session is
# ready 1.2 ms sooner, p50 4.0 against 5.2 ms: ops/bench/take_at_claim.py). KEYS: 1-5 the
# take's, 6 the queue. ARGV: 1-38 the take's (``LiveSessions.take_step``), 39-44
# ``take_due``'s, 45 the protocol.
# Returns {claims} or {claims, the take's reply}.
_TAKE_DUE_AND_RUNG = (
    TAKE_FN
    + _TAKE_DUE_FN
    + """
local claimed = take_due(KEYS[6], 39)
for i = 1, #claimed, 4 do
  if claimed[i] == ARGV[1] then
    if claimed[i + 2] and not claimed[i + 3]
        and redis.call('HGET', KEYS[1], 'protocol') == ARGV[45] then
      return {claimed, take(ARGV)}
    end
    break
  end
end
return {claimed}
"""
)


class Claim(NamedTuple):
    """A job a worker claimed (``JobClaims.take_due``), as arq stored it then."""

    job_id: str
    score: int
    job: bytes | None
    """Its serialized job (None: gone since, as arq's own read will find)."""
    tries: int
    """How often arq had run it before (0: never)."""

    def new_start(self, deserializer: Any = None) -> str | None:
        """The session a new session's start job of this fleet protocol starts, run by
        nobody before (a job that is not: None)."""
        if self.job is None or self.tries:
            return None
        try:
            function, args, *_ = deserialize_job_raw(self.job, deserializer=deserializer)
        except Exception:  # not arq's, or not ours to read: arq's run says why
            return None
        if function != START_JOB or tuple(args) != (self.job_id, PROTOCOL):
            return None
        return self.job_id


class Claimed(NamedTuple):
    """What one poll claimed (``JobClaims.take_due``)."""

    claims: list[Claim]
    rung: Taken | None = None
    """The session whose ring woke the worker, taken in the claim's step (None: it was
    not: its job was not claimed here, is no new start, or it could not be taken)."""


class JobClaims:
    """One worker's claims on its queue's jobs: each poll reads the due jobs and claims as
    many as it may run in one step, where arq reads them in one round trip and claims each
    in a WATCH transaction of four (1.4 ms of the 3.5 from a ring to ``starting``, one at
    a time; on a worker busy with calls, each round trip waits behind their audio). Each
    claim is arq's own (guarded by tests/unit/test_upstream_hooks.py::test_arq_claim)."""

    def __init__(self, arq: ArqRedis, queue_name: str, in_progress_ms: int):
        self._take_due = arq.register_script(_TAKE_DUE)
        self._take_due_and_rung = arq.register_script(_TAKE_DUE_AND_RUNG)
        self.queue_name = queue_name
        self.in_progress_ms = in_progress_ms

    async def take_due(self, most: int, rung: TakeStep | None = None) -> Claimed:
        """Up to ``most`` due jobs, oldest first, now this worker's to run; with ``rung``,
        the take of the session a ring named (``LiveSessions.take_step``), made in the same
        step if its job is among them and a new start of this protocol."""
        claim_args: list[str | int] = [
            timestamp_ms(), most, self.in_progress_ms,
            in_progress_key_prefix, job_key_prefix, retry_key_prefix,
        ]  # fmt: skip
        if rung is None:
            return Claimed(_claims(await self._take_due(keys=[self.queue_name], args=claim_args)))
        reply = await self._take_due_and_rung(
            keys=[*rung.keys, self.queue_name], args=[*rung.args, *claim_args, PROTOCOL]
        )
        return Claimed(_claims(reply[0]), Taken.from_reply(reply[1]) if len(reply) > 1 else None)


def _claims(flat: list[Any]) -> list[Claim]:
    return [
        Claim(_text(flat[i]), int(float(flat[i + 1])), flat[i + 2] or None, int(flat[i + 3] or 0))
        for i in range(0, len(flat), 4)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def ring(redis: aioredis.Redis, pool: str, *, queued: str = "") -> None:
    """Wake one idle worker of ``pool``: a job is queued (that of session ``queued``,
    which admission then counts in the queue, no longer as admitted on its way there).
    A ring nobody hears is harmless (workers also poll, slowly) and a stale one costs one
    empty poll."""
    async with redis.pipeline(transaction=False) as pipe:
        _ring(pipe, pool, queued=queued)
        await pipe.execute()


def _ring(pipe: Any, pool: str, *, queued: str) -> None:
    if queued:
        pipe.zrem(keys.pool_admitting(pool), queued)
    pipe.lpush(keys.doorbell(pool), RING)
    pipe.ltrim(keys.doorbell(pool), 0, DOORBELL_MAX - 1)


async def enqueue_recovery(
    redis: aioredis.Redis,
    arq: ArqRedis,
    session_id: str,
    pool: str,
    *,
    created_ts: float,
    expires_s: float,
    lost: bool,
) -> str:
    """Queue the start job of a session that has just gone ``recovering``, in the place it
    had when it was created (ahead of everything that came later), and note the job and
    the count in its hash (``lost``: its worker was lost, not draining). Returns the job id."""
    key = keys.session(session_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "recoveries", 1)
        if lost:
            pipe.hincrby(key, "losses", 1)
        count = (await pipe.execute())[0]
    job_id = f"{session_id}.r{count}"  # arq refuses a job id it still holds
    await cast("Awaitable[int]", redis.hset(key, "job_id", job_id))
    await enqueue_start(
        arq, session_id, pool, job_id=job_id, expires_s=expires_s, place=created_ts or None
    )
    return job_id


async def end_waiting(
    live: LiveSessions, session_id: str, reason: Reason, state: str | None = None
) -> bool | None:
    """End a session no worker runs (queued: ``cancelled``; recovering: ``ended``); its
    job leaves the queue in the same step. None if it is not waiting (a worker runs it, or
    it is final), False if it moved on meanwhile. ``state``: the session's state as the
    caller read it just now (each end step checks it again); without it, read here."""
    if state is None:
        state = (await live.get(session_id)).get("state")
    if state == SessionState.QUEUED:
        return await live.cancel(session_id, reason)
    if state == SessionState.RECOVERING:
        return await live.finish(session_id, reason, only_from=SessionState.RECOVERING)
    return None


async def record_starts(redis: aioredis.Redis, pool: str, session_ids: Collection[str]) -> None:
    """Sessions started in the pool just now: counted in its recent start rate."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.pool_starts(pool), dict.fromkeys(session_ids, now))
        pipe.zremrangebyscore(keys.pool_starts(pool), 0, now - START_RATE_WINDOW_S)
        pipe.expire(keys.pool_starts(pool), int(START_RATE_WINDOW_S) * 2)
        await pipe.execute()


async def start_rate(redis: aioredis.Redis, pool: str) -> float:
    """Sessions started per second in the pool, over the recent window."""
    now = time.time()
    starts: int = await redis.zcount(keys.pool_starts(pool), now - START_RATE_WINDOW_S, now)
    return starts / START_RATE_WINDOW_S


def wait_at(position: int, rate: float) -> float | None:
    """Seconds until a session at ``position`` starts, at ``rate`` starts per second."""
    return round(position / rate, 1) if rate > 0 else None


async def estimate_wait(redis: aioredis.Redis, pool: str, position: int) -> float | None:
    """Seconds until a session at ``position`` starts, from the pool's recent start rate."""
    return wait_at(position, await start_rate(redis, pool))


async def position(redis: aioredis.Redis, pool: str, job_id: str) -> int | None:
    """1-based place in the pool's queue, or None once a worker took the job."""
    rank = await redis.zrank(keys.queue(pool), job_id)
    return None if rank is None else rank + 1
