"""A worker takes its job's session in one step (picked up and read): an end request that
reaches it before the session's runner is registered is held, not refused, and ends the
call once it is (real Redis, the worker in this process, no arq)."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.waiting import eventually
from shared import control
from shared.lifecycle import Reason
from shared.live import LiveSessions
from worker.options import WorkerOptions
from worker.worker import SessionWorker, VoicepoolWorker, start_session


def _polls(worker: VoicepoolWorker, arq: Any) -> SessionWorker:
    """arq's worker for ``worker``'s pool, with its polls ours (``SessionWorker``)."""
    from shared import keys

    return SessionWorker(
        worker,
        functions=[start_session],
        queue_name=keys.queue("server"),
        redis_pool=arq,
        ctx={"voicepool": worker, "redis": arq},
        handle_signals=False,
    )


def _websocket_worker(redis_url: str) -> VoicepoolWorker:
    """A worker whose WebSocket listener is said to be there (nothing listens)."""
    options = WorkerOptions(
        redis_url=redis_url,
        worker_id="w1",
        ws_advertised_url="ws://127.0.0.1:1/ws",
        ws_listener="listener-1",
    )
    return VoicepoolWorker(options)


async def _close(worker: VoicepoolWorker, polls: SessionWorker, arq: Any) -> None:
    await worker.end_all(Reason.WORKER_SHUTDOWN)
    await asyncio.sleep(0)
    await polls.close()
    await worker.redis.aclose()
    await arq.aclose()


async def test_an_end_request_during_the_take_ends_the_call(redis, redis_server) -> None:
    worker = VoicepoolWorker(WorkerOptions(redis_url=redis_server.url, worker_id="w1"))
    fields = {"conversation_id": "c1", "pool": "server", "transport": "webrtc", "profile": "echo"}
    await worker.live.create("s1", "alice", fields)
    answers: list[Any] = []
    take = worker.live.take

    async def take_then_hear_the_end(session_id: str, worker_id: str, **kw: Any):
        meta = await take(session_id, worker_id, **kw)
        # The API sees the session starting on this worker and asks it to end the call:
        # here, before the worker has registered the session's runner.
        end = control.End(session_id=session_id, payload=control.EndBody())
        answers.append(await worker._handle(end))
        return meta

    worker.live.take = take_then_hear_the_end  # type: ignore[method-assign]  # the window, made to happen
    try:
        assert await worker.start_session("s1", None) == "ready"
        assert answers == [{}]  # accepted, not "unknown_session"
        assert worker.sessions["s1"].end_reason == Reason.CLIENT_ENDED

        async def ended() -> str | None:
            state = (await LiveSessions(redis).get("s1")).get("state")
            return state if state == "ended" else None

        assert await eventually(ended, timeout=10, what="the call ended") == "ended"
        assert (await LiveSessions(redis).get("s1"))["reason"] == "client_ended"
        assert worker._starting == {}
    finally:
        await worker.end_all(Reason.WORKER_SHUTDOWN)
        await asyncio.sleep(0)
        await worker.redis.aclose()


async def test_a_session_taken_but_not_set_up_ends_saying_why(
    redis, redis_server, monkeypatch
) -> None:
    """Taken (``starting``, this worker's) and then its runner cannot be made: the session
    ends with its reason at once, not left ``starting`` for the reaper."""
    import worker.worker as worker_module

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise KeyError("profile")

    monkeypatch.setattr(worker_module, "SessionRunner", broken)
    worker = VoicepoolWorker(WorkerOptions(redis_url=redis_server.url, worker_id="w1"))
    fields = {"conversation_id": "c1", "pool": "server", "transport": "webrtc", "profile": "echo"}
    await worker.live.create("s1", "alice", fields)
    try:
        assert await worker.start_session("s1", None) == "not started"
        meta = await LiveSessions(redis).get("s1")
        assert (meta["state"], meta["reason"]) == ("failed", "pipeline_error")
        assert worker.sessions == {} and worker._starting == {}
    finally:
        await worker.redis.aclose()


async def test_a_new_sessions_job_is_taken_as_it_is_claimed_and_run_from_there(
    redis, redis_server
) -> None:
    """The take starts with the claim, before arq reads the job again to run it; the job's
    run carries on from it. A session whose job was gone by arq's read (its TTL ran out
    in between) is started all the same: it was taken already."""
    from arq.connections import create_pool
    from arq.constants import job_key_prefix

    from shared import queue
    from shared.connections import arq_redis_settings

    arq = await create_pool(arq_redis_settings(redis_server.url))
    worker = VoicepoolWorker(WorkerOptions(redis_url=redis_server.url, worker_id="w1"))
    fields = {"conversation_id": "c1", "pool": "server", "transport": "webrtc", "profile": "echo"}
    for sid in ("s1", "s2"):
        job = queue.new_start_job(arq, sid, "server", expires_s=60)
        await worker.live.create(sid, "alice", fields, job=job)
    polls = _polls(worker, arq)
    try:
        taken: list[str] = []
        take = worker._take

        async def seen(session_id: str) -> Any:
            taken.append(session_id)
            return await take(session_id)

        worker._take = seen  # type: ignore[method-assign]  # to see when it is taken
        run_job = polls.run_job

        async def gone_before_read(job_id: str, score: int) -> None:
            if job_id == "s2":  # its TTL ran out between the claim and arq's read
                await arq.delete(job_key_prefix + job_id)
            await run_job(job_id, score)

        polls.run_job = gone_before_read  # type: ignore[method-assign]
        worker.free_slots = lambda in_flight=0: 2  # type: ignore[method-assign]  # no beat here
        polls.voicepool.options.safety_poll = 0.05
        poll = asyncio.create_task(polls._poll_iteration())
        # s2 can only be taken ahead: arq's run of its job never calls start_session.
        await eventually(lambda: taken == ["s1", "s2"] or None, what="both taken as claimed")

        async def ready(sid: str) -> bool | None:
            return (await LiveSessions(redis).get(sid)).get("state") == "ready" or None

        await eventually(lambda: ready("s1"), timeout=10, what="s1 ready")
        await eventually(lambda: ready("s2"), timeout=10, what="s2 ready, its job gone")
        assert taken == ["s1", "s2"]  # not taken again by the job's run
        assert worker._taken_ahead == {} and set(worker.sessions) == {"s1", "s2"}
        await poll
    finally:
        await _close(worker, polls, arq)


async def test_the_session_a_ring_names_is_taken_with_its_claim(redis, redis_server) -> None:
    """The ring that woke the worker names the new session: the poll's claim takes it in
    the same step (``VoicepoolWorker.claim``), and the job's run carries on from there,
    with no take of its own. A named session whose job another worker claimed is left to
    it, and nothing of the try stays behind (its end requests held, pipelines held out)."""
    from arq.connections import create_pool
    from arq.constants import in_progress_key_prefix

    from shared import queue
    from shared.connections import arq_redis_settings
    from shared.fleet import PROTOCOL

    arq = await create_pool(arq_redis_settings(redis_server.url))
    worker = VoicepoolWorker(WorkerOptions(redis_url=redis_server.url, worker_id="w1"))
    fields = {"conversation_id": "c1", "pool": "server", "transport": "webrtc",
              "profile": "echo", "protocol": str(PROTOCOL)}  # fmt: skip

    async def create(sid: str) -> None:
        job = queue.new_start_job(arq, sid, "server", expires_s=60)
        await worker.live.create(sid, "alice", fields, job=job)

    polls = _polls(worker, arq)
    takes: list[str] = []
    take = worker.live.take

    async def seen(session_id: str, *args: Any, **kwargs: Any) -> Any:
        takes.append(session_id)
        return await take(session_id, *args, **kwargs)

    worker.live.take = seen  # type: ignore[method-assign]  # a take of its own would show
    worker.free_slots = lambda in_flight=0: 2  # type: ignore[method-assign]  # no beat here
    polls.voicepool.options.safety_poll = 0.05
    try:
        await create("s1")
        polls.rung = (await worker.seat.wait(1)).ring or ""
        assert polls.rung == "s1"
        await polls._poll_iteration()

        async def ready() -> bool | None:
            return (await LiveSessions(redis).get("s1")).get("state") == "ready" or None

        await eventually(ready, timeout=10, what="s1 ready")
        await eventually(lambda: not worker._taken_ahead or None, what="its run carried on")
        assert takes == [] and set(worker.sessions) == {"s1"} and worker._starting == {}

        await create("s2")
        await redis.psetex(in_progress_key_prefix + "s2", 60_000, b"1")  # another worker's
        polls.rung = "s2"
        await polls._poll_iteration()
        assert (await LiveSessions(redis).get("s2"))["state"] == "queued"
        assert takes == [] and worker._starting == {} and worker._taken_ahead == {}
    finally:
        await _close(worker, polls, arq)


async def test_a_ring_heard_after_its_session_was_claimed_leaves_the_take_alone(
    redis, redis_server
) -> None:
    """Rings come last first: in a burst a poll claims, and takes ahead, a session whose
    own ring comes later. The poll that ring wakes does not take it again, nor touch the
    take under way (two at once lost the worker its poll loop, in a burst of 100)."""
    from arq.connections import create_pool

    from shared import queue
    from shared.connections import arq_redis_settings
    from shared.fleet import PROTOCOL

    arq = await create_pool(arq_redis_settings(redis_server.url))
    worker = VoicepoolWorker(WorkerOptions(redis_url=redis_server.url, worker_id="w1"))
    fields = {"conversation_id": "c1", "pool": "server", "transport": "webrtc",
              "profile": "echo", "protocol": str(PROTOCOL)}  # fmt: skip
    job = queue.new_start_job(arq, "s1", "server", expires_s=60)
    await worker.live.create("s1", "alice", fields, job=job)
    polls = _polls(worker, arq)
    worker.free_slots = lambda in_flight=0: 2  # type: ignore[method-assign]  # no beat here
    polls.voicepool.options.safety_poll = 0.05
    try:
        # Claimed without its ring (a safety poll), and taken ahead; the ring is heard next.
        claims = await worker.claim(polls.claims, 2, "")
        assert [claim.job_id for claim in claims] == ["s1"]
        worker.take_ahead("s1")
        assert await worker.claim(polls.claims, 2, "s1") == []  # while the take is under way
        taken = await worker._taken_ahead.pop("s1")
        assert taken is not None and set(worker.sessions) == {"s1"} and worker._starting == {}
        assert await worker.claim(polls.claims, 2, "s1") == []  # and once it runs here
        assert worker._starting == {}
    finally:
        await _close(worker, polls, arq)


async def test_a_session_its_take_made_ready_runs_before_arq_runs_its_job(
    redis, redis_server
) -> None:
    """A WebSocket session taken with its claim onto a pipeline built ahead is ``ready`` at
    the take, and its client may connect at once: its runner runs from the take, not once
    arq has read the job again and called ``start_session``, which then finds it running
    and starts nothing more."""
    from arq.connections import create_pool

    from shared import queue
    from shared.connections import arq_redis_settings
    from shared.fleet import PROTOCOL
    from worker.vad import SharedSileroVADAnalyzer

    SharedSileroVADAnalyzer.preload()
    arq = await create_pool(arq_redis_settings(redis_server.url))
    worker = _websocket_worker(redis_server.url)
    fields = {"conversation_id": "c1", "pool": "server", "transport": "websocket",
              "profile": "echo", "protocol": str(PROTOCOL)}  # fmt: skip
    job = queue.new_start_job(arq, "s1", "server", expires_s=60)
    polls = _polls(worker, arq)
    arq_ran = asyncio.Event()
    run_job = polls.run_job

    async def held_back(job_id: str, score: int) -> None:
        await arq_ran.wait()  # arq's read of the job and its call, as late as they come
        await run_job(job_id, score)

    polls.run_job = held_back  # type: ignore[method-assign]
    worker.free_slots = lambda in_flight=0: 2  # type: ignore[method-assign]  # no beat here
    polls.voicepool.options.safety_poll = 0.05
    worker.warm.refill()
    await eventually(lambda: worker.warm.count() == 1 or None, what="a pipeline built ahead")
    try:
        await worker.live.create("s1", "alice", fields, job=job)
        polls.rung = (await worker.seat.wait(1)).ring or ""
        await polls._poll_iteration()
        await eventually(lambda: "s1" in worker.sessions or None, what="s1 taken")
        runner = worker.sessions["s1"]
        assert (await LiveSessions(redis).get("s1"))["state"] == "ready"
        await eventually(lambda: runner._task is not None or None, what="s1 running")
        running = runner._task
        assert not arq_ran.is_set()

        arq_ran.set()
        await eventually(lambda: not worker._taken_ahead or None, what="arq's run carried on")
        assert running is not None and runner._task is running and not running.done()  # once
    finally:
        await _close(worker, polls, arq)
        await worker.warm.aclose()


async def test_a_client_that_comes_as_its_session_is_taken_waits_for_it(
    redis, redis_server
) -> None:
    """A session is ``ready`` in Redis (its client may have its answer) a moment before its
    runner is in: the listener holds a client that comes meanwhile instead of refusing it,
    and refuses at once one whose session is on its way nowhere here."""
    from worker.worker import TAKEN_ARRIVAL_S

    worker = _websocket_worker(redis_server.url)
    fields = {"conversation_id": "c1", "pool": "server", "transport": "websocket",
              "profile": "echo"}  # fmt: skip
    await worker.live.create("s1", "alice", fields)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await worker._websocket_session_soon("nobody") is None
        assert loop.time() - began < TAKEN_ARRIVAL_S / 2  # refused at once, as before

        worker._starting["s1"] = []  # its take under way, as a claim begins it
        waiting = asyncio.create_task(worker._websocket_session_soon("s1"))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # held, not refused
        del worker._starting["s1"]
        assert await worker._take("s1") is not None
        found = await asyncio.wait_for(waiting, TAKEN_ARRIVAL_S)
        assert found is not None and found is worker.sessions["s1"].transport
    finally:
        await worker.end_all(Reason.WORKER_SHUTDOWN)
        await asyncio.sleep(0)
        await worker.redis.aclose()
