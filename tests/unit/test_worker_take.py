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
from worker.worker import VoicepoolWorker


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
