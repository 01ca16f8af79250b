"""The start queue: each waiting session is one arq job in its pool's queue.

arq keeps a queue as a sorted set of job ids scored by when they may run, and
each job's arguments under its own key; the API enqueues, a worker of the pool
takes the job, and whoever cancels or expires a waiting session removes both.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from shared import keys

START_JOB = "start_session"
"""The worker function a start job runs (registered under this name by the worker)."""

START_JOB_SLACK_S = 300
"""How long a start job outlives its session's queue TTL inside arq. The reaper expires
the session at the TTL (after any grace for a Redis outage) and removes the job; arq's
own expiry only bounds a leak, and must not drop a job whose session is still waiting."""


async def enqueue_start(
    arq: ArqRedis, session_id: str, pool: str, *, job_id: str, expires_s: float
) -> None:
    """Queue the session's start job at the back of its pool's queue."""
    await arq.enqueue_job(
        START_JOB,
        session_id,
        _job_id=job_id,
        _queue_name=keys.queue(pool),
        _expires=expires_s,
    )


async def remove_start(redis: aioredis.Redis | Any, pool: str, job_id: str) -> None:
    """Take a waiting session's job out of its pool's queue (nothing if it is gone)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.queue(pool), job_id)
        pipe.delete(job_key_prefix + job_id)
        await pipe.execute()
