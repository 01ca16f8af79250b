"""The start queue's one-trip steps are arq's own: what arq's worker reads and refuses alike."""

from __future__ import annotations

import asyncio
import json
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
from shared.lifecycle import Reason, SessionState
from shared.live import ADMIT_ALL, AdmissionPolicy, AdmissionRefused, LiveSessions, ReadyAtTake
from shared.seats import WorkerSeat


@pytest.fixture
async def arq(redis, redis_server) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(arq_redis_settings(redis_server.url))
    yield pool
    await pool.aclose()


async def _create(
    arq: ArqRedis, redis: Any, session_id: str, admission: AdmissionPolicy = ADMIT_ALL
) -> int:
    """A new session recorded, and its start job queued, as the API's create does."""
    job = queue.new_start_job(arq, session_id, "server", expires_s=60)
    fields = {"conversation_id": "c", "pool": "server"}
    created = await LiveSessions(redis).create(
        session_id, "u1", fields, admission=admission, job=job
    )
    return created.position


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
    await _create(arq, redis, "one-trip")
    await queue.enqueue_start(arq, "arqs-own", "server", job_id="arqs-own", expires_s=60)

    mine = await Job("one-trip", arq, _queue_name=keys.queue("server")).info()
    arqs = await Job("arqs-own", arq, _queue_name=keys.queue("server")).info()
    assert mine is not None and arqs is not None
    assert (mine.function, mine.kwargs, mine.job_try) == (arqs.function, arqs.kwargs, arqs.job_try)
    assert mine.args == ("one-trip", PROTOCOL) and arqs.args == ("arqs-own", PROTOCOL)
    assert mine.score is not None and arqs.score is not None
    assert before <= mine.score <= arqs.score  # queued in order of arrival, by enqueue time
    assert 0 < await redis.pttl(job_key_prefix + "one-trip") <= 60_000
    # Rung (one ring per job), and counted as queued, never as on its way to the queue.
    assert await redis.llen(keys.doorbell("server")) == 2
    assert not await redis.zscore(keys.pool_admitting("server"), "one-trip")
    assert (await LiveSessions(redis).get("one-trip"))["state"] == "queued"

    ran: list[tuple[Any, ...]] = []
    worker = _worker(arq, ran)
    try:
        await worker.main()  # burst: runs what is queued, then returns
    finally:
        await worker.close()
    assert sorted(ran) == [("arqs-own", PROTOCOL), ("one-trip", PROTOCOL)]
    assert await Job("one-trip", arq).status() == JobStatus.complete


async def test_a_poll_takes_due_jobs_oldest_first_once_and_refuses_what_arq_would(
    arq, redis
) -> None:
    ttl_ms = 5000
    claims = queue.JobClaims(arq, keys.queue("server"), ttl_ms)
    for sid in ("first", "second", "third"):
        await _create(arq, redis, sid)
        await asyncio.sleep(0.002)  # arq scores in whole ms: one each
    scores = {
        sid: int(await redis.zscore(keys.queue("server"), sid)) for sid in ("first", "second")
    }

    first, second = (await claims.take_due(2)).claims
    assert (first.job_id, first.score, second.job_id, second.score) == (
        "first", scores["first"], "second", scores["second"]
    )  # fmt: skip
    assert 0 < await redis.pttl(in_progress_key_prefix + "first") <= ttl_ms
    # Taken here: not again, by another poll of ours or by arq's own claim.
    assert [claim.job_id for claim in (await claims.take_due(5)).claims] == ["third"]
    assert (await claims.take_due(5)).claims == []
    ran: list[tuple[Any, ...]] = []
    worker = _worker(arq, ran)
    try:
        await worker.start_jobs([b"first"])
        assert worker.tasks == {} and worker.job_counter == 0
    finally:
        await worker.close()

    # One arq claimed (its in-progress key), one deferred: both left; what is due is taken.
    await _create(arq, redis, "arqs")
    await redis.psetex(in_progress_key_prefix + "arqs", ttl_ms, b"1")
    later = time.time() + 60
    await arq.enqueue_job(
        queue.START_JOB, "later", PROTOCOL, _job_id="later", _queue_name=keys.queue("server"),
        _defer_until=datetime.fromtimestamp(later, UTC),
    )  # fmt: skip
    await _create(arq, redis, "due")
    assert [claim.job_id for claim in (await claims.take_due(5)).claims] == ["due"]
    assert not await redis.exists(in_progress_key_prefix + "later")


async def test_a_claim_tells_a_new_sessions_start_from_any_other_job(arq, redis) -> None:
    """What a worker may take ahead of arq's run (``VoicepoolWorker.take_ahead``): only a
    new session's start job of its own protocol that arq never ran."""
    claims = queue.JobClaims(arq, keys.queue("server"), 60_000)
    await _create(arq, redis, "new")
    (claim,) = (await claims.take_due(1)).claims
    assert (claim.job_id, claim.tries) == ("new", 0) and claim.job is not None
    assert claim.new_start() == "new"
    # As arq's run found it: the same job, one try counted.
    ran: list[tuple[Any, ...]] = []
    worker = _worker(arq, ran)
    try:
        await worker.run_job("new", claim.score)
    finally:
        await worker.close()
    assert ran == [("new", PROTOCOL)]

    await queue.enqueue_start(arq, "s", "server", job_id="s.r1", expires_s=60)
    await queue.enqueue_start(arq, "older", "server", job_id="older", expires_s=60,
                              protocol=PROTOCOL - 1)  # fmt: skip
    await _create(arq, redis, "tried")
    await redis.set("arq:retry:tried", 1)  # a worker ran it and died
    await _create(arq, redis, "gone")
    await redis.delete(job_key_prefix + "gone")
    claimed = {claim.job_id: claim for claim in (await claims.take_due(5)).claims}
    assert claimed["s.r1"].new_start() is None  # a call taken up from another worker
    assert claimed["older"].new_start() is None  # another protocol's: handed back
    assert claimed["tried"].tries == 1 and claimed["tried"].new_start() is None
    assert claimed["gone"].job is None and claimed["gone"].new_start() is None


async def test_a_new_sessions_ring_names_it_and_its_claim_takes_it_in_the_same_step(
    arq, redis
) -> None:
    """The worker a new session's ring wakes takes it with its job's claim (one step,
    ``VoicepoolWorker.claim``), moved on to ``ready`` too when it has a pipeline for it.
    Only a new start of this protocol is: a job another worker claimed, a job tried
    before, or a session an API of another protocol made is left for the job's run."""
    live = LiveSessions(redis)
    claims = queue.JobClaims(arq, keys.queue("server"), 60_000)
    fields = {"conversation_id": "c", "pool": "server", "transport": "websocket",
              "profile": "echo", "protocol": str(PROTOCOL)}  # fmt: skip

    async def create(sid: str, **changes: str) -> None:
        job = queue.new_start_job(arq, sid, "server", expires_s=60)
        await live.create(sid, "u1", {**fields, **changes}, job=job)

    await create("rung")
    await queue.ring(redis, "server")
    waits = WorkerSeat(redis, "server", "w1")  # a worker's wait, with no seat offered
    assert (await waits.wait(1)).ring == ""  # a ring that names none
    assert (await waits.wait(1)).ring == "rung"
    assert (await waits.wait(0.01)).ring is None
    await create("other")
    ready_if = ReadyAtTake(["echo"], {"transport": "websocket", "ws_url": "ws://w1"})
    step = live.take_step("rung", "w1", data={"pool": "server"}, ready_if=ready_if)
    claimed = await claims.take_due(5, step)
    assert [claim.job_id for claim in claimed.claims] == ["rung", "other"]
    assert claimed.rung is not None and claimed.rung.ready
    assert (claimed.rung.meta["state"], claimed.rung.meta["worker_id"]) == ("ready", "w1")
    assert claimed.claims[0].new_start() == "rung"  # its run carries on from the take
    assert (await live.get("other"))["state"] == "queued"  # claimed, not taken
    events = await redis.xrange(keys.session_events("rung"))
    assert [json.loads(e["data"])["state"] for _, e in events] == ["queued", "starting", "ready"]

    await create("elsewhere")
    await redis.psetex(in_progress_key_prefix + "elsewhere", 60_000, b"1")
    claimed = await claims.take_due(5, live.take_step("elsewhere", "w1"))
    assert claimed == ([], None) and (await live.get("elsewhere"))["state"] == "queued"
    for sid, protocol in [("tried", str(PROTOCOL)), ("newer", str(PROTOCOL + 1)),
                          ("unsaid", "")]:  # fmt: skip  # (unsaid: made before sessions said)
        await create(sid, protocol=protocol)
        if sid == "tried":
            await redis.set("arq:retry:tried", 1)  # a worker ran it and died
        claimed = await claims.take_due(1, live.take_step(sid, "w1"))
        assert [claim.job_id for claim in claimed.claims] == [sid]
        assert claimed.rung is None and (await live.get(sid))["state"] == "queued", sid


async def test_a_refused_session_queues_no_job_and_rings_no_worker(arq, redis) -> None:
    one_waiting = AdmissionPolicy(max_waiting=1, queue_ttl=60, workers_required=False)
    await _create(arq, redis, "first", one_waiting)
    with pytest.raises(AdmissionRefused) as refused:
        await _create(arq, redis, "second", one_waiting)
    assert refused.value.code == "queue_full"  # the first one's job counts as waiting
    assert await redis.zrange(keys.queue("server"), 0, -1) == ["first"]
    assert not await redis.exists(job_key_prefix + "second")
    assert await redis.llen(keys.doorbell("server")) == 1
    with pytest.raises(ValueError, match="already exists"):  # its job is not queued twice
        await _create(arq, redis, "first")
    assert await redis.llen(keys.doorbell("server")) == 1


async def test_a_waiting_session_that_ends_takes_its_job_out_of_the_queue_in_the_same_step(
    arq, redis
) -> None:
    """Whoever reads the final event finds the queue without it: the move and the job's
    removal are one step (an expiry once left the job behind for a moment after it)."""
    live = LiveSessions(redis)
    for sid in ("cancelled", "expired", "recovering", "running"):
        await _create(arq, redis, sid)
    await live.pick_up("recovering", "w1")
    assert (await live.move("recovering", "recover", Reason.WORKER_LOST, worker_id="w1"))[0]
    await redis.hset(keys.session("recovering"), "job_id", "recovering.r1")
    await queue.enqueue_start(arq, "recovering", "server", job_id="recovering.r1", expires_s=60)
    await live.pick_up("running", "w1")  # its job is the worker's now, not the queue's

    assert await live.cancel("cancelled", Reason.CLIENT_ENDED)
    assert await live.expire("expired")
    assert await live.finish("recovering", Reason.WORKER_LOST, only_from=SessionState.RECOVERING)
    for job in ("cancelled", "expired", "recovering.r1"):
        assert await redis.zscore(keys.queue("server"), job) is None
        assert not await redis.exists(job_key_prefix + job)
    # A session a worker took is ended with its job left alone: arq's, to finish.
    assert await live.finish("running", Reason.WORKER_LOST)
    assert await redis.exists(job_key_prefix + "running")
