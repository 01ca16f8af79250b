"""The start queue's one-trip steps are arq's own: what arq's worker reads and refuses alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from arq import Worker
from arq.connections import ArqRedis, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import func

from shared import keys, queue
from shared.connections import arq_redis_settings
from shared.fleet import PROTOCOL


@pytest.fixture
async def arq(redis, redis_server) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(arq_redis_settings(redis_server.url))
    yield pool
    await pool.aclose()


def _worker(arq: ArqRedis, ran: list[tuple[Any, ...]]) -> Worker:
    async def start_session(ctx: dict[str, Any], *args: Any) -> str:
        ran.append(args)
        return "ready"

    return Worker(
        functions=[func(start_session, name=queue.START_JOB)],
        queue_name=keys.queue("server"),
        redis_pool=arq,
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )


async def test_a_start_queued_in_one_trip_is_the_job_arq_queues(arq, redis) -> None:
    before = int(time.time() * 1000)  # arq scores in whole ms
    await redis.zadd(keys.pool_admitting("server"), {"one-trip": time.time()})
    await queue.enqueue_new_start(arq, "one-trip", "server", expires_s=60)
    await queue.enqueue_start(arq, "arqs-own", "server", job_id="arqs-own", expires_s=60)

    mine = await Job("one-trip", arq, _queue_name=keys.queue("server")).info()
    arqs = await Job("arqs-own", arq, _queue_name=keys.queue("server")).info()
    assert mine is not None and arqs is not None
    assert (mine.function, mine.kwargs, mine.job_try) == (arqs.function, arqs.kwargs, arqs.job_try)
    assert mine.args == ("one-trip", PROTOCOL) and arqs.args == ("arqs-own", PROTOCOL)
    assert mine.score is not None and arqs.score is not None
    assert before <= mine.score <= arqs.score  # queued in order of arrival, by enqueue time
    assert 0 < await redis.pttl(job_key_prefix + "one-trip") <= 60_000
    # Rung (one ring per job) and no longer counted as on its way to the queue.
    assert await redis.llen(keys.doorbell("server")) == 2
    assert not await redis.zscore(keys.pool_admitting("server"), "one-trip")

    ran: list[tuple[Any, ...]] = []
    worker = _worker(arq, ran)
    try:
        await worker.main()  # burst: runs what is queued, then returns
    finally:
        await worker.close()
    assert sorted(ran) == [("arqs-own", PROTOCOL), ("one-trip", PROTOCOL)]
    assert await Job("one-trip", arq).status() == JobStatus.complete


async def test_a_claim_takes_a_queued_job_once_and_refuses_what_arq_would(arq, redis) -> None:
    ttl_ms = 5000
    claims = queue.JobClaims(arq, keys.queue("server"), ttl_ms)
    await queue.enqueue_new_start(arq, "queued", "server", expires_s=60)
    score = await redis.zscore(keys.queue("server"), "queued")

    assert await claims.claim("queued") == int(score)
    assert 0 < await redis.pttl(in_progress_key_prefix + "queued") <= ttl_ms
    # Another worker's claim, ours or arq's own, is refused while it runs here.
    assert await claims.claim("queued") is None
    ran: list[tuple[Any, ...]] = []
    worker = _worker(arq, ran)
    try:
        await worker.start_jobs([b"queued"])
        assert worker.tasks == {} and worker.job_counter == 0
    finally:
        await worker.close()

    # One arq claimed (its in-progress key), one no longer queued, one deferred: all refused.
    await queue.enqueue_new_start(arq, "arqs", "server", expires_s=60)
    await redis.psetex(in_progress_key_prefix + "arqs", ttl_ms, b"1")
    assert await claims.claim("arqs") is None
    assert await claims.claim("gone") is None
    later = time.time() + 60
    await arq.enqueue_job(
        queue.START_JOB, "later", PROTOCOL, _job_id="later", _queue_name=keys.queue("server"),
        _defer_until=datetime.fromtimestamp(later, UTC),
    )  # fmt: skip
    assert await claims.claim("later") is None
    assert not await redis.exists(in_progress_key_prefix + "later")
