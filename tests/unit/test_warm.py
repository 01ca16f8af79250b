"""Pipelines built ahead of their sessions (worker/warm.py): kept, taken, bound, replaced,
closed, with the real echo pipeline behind an unbound WebSocket transport."""

from __future__ import annotations

import asyncio
from typing import cast

from harness.waiting import eventually
from shared import ws_tokens
from worker.options import WorkerOptions
from worker.profiles import SessionContext
from worker.profiles.echo import EchoProfile
from worker.vad import SharedSileroVADAnalyzer
from worker.warm import WarmPipeline, WarmPipelines

LISTENER = "listener-1"
ECHO_WS = {"transport": "websocket", "profile": "echo"}


class Presence:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def client_back(self) -> None:
        self.seen.append("back")

    def client_lost(self) -> None:
        self.seen.append("lost")


def _options() -> WorkerOptions:
    return WorkerOptions(
        redis_url="redis://unused",
        ws_advertised_url="ws://127.0.0.1:1/ws",
        ws_listener=LISTENER,
    )


async def _kept(warm: WarmPipelines, count: int = 1) -> None:
    await eventually(lambda: warm.count() == count, what=f"{count} pipeline(s) built ahead")


async def test_a_pipeline_is_kept_running_taken_once_bound_and_replaced() -> None:
    SharedSileroVADAnalyzer.preload()
    pipelines = WarmPipelines(_options())
    assert pipelines.profiles == ["echo"] and pipelines.per_profile == 1
    pipelines.refill()
    await _kept(pipelines)
    try:
        # Held out while a session is taken; kept when the session took none.
        held = pipelines.hold()
        assert list(held) == ["echo"] and pipelines.count() == 0
        assert pipelines.settle(held, None) is None and pipelines.count() == 1
        assert pipelines.settle(pipelines.hold(), "assistant") is None  # none of its profile
        assert pipelines.count() == 1

        held = pipelines.hold()
        taken = pipelines.settle(held, "echo")
        assert isinstance(taken, WarmPipeline) and taken.usable and held == {}
        assert taken.gate.local_vad  # the echo profile's VAD comes after it: hold sees turns
        assert pipelines.count() == 0 and pipelines.hold() == {}
        # Unbound, no token opens it; bound, the session's own do (and only once).
        key = ws_tokens.new_key()
        token = ws_tokens.mint(key, "s-1", LISTENER, 60)
        assert not taken.transport.tokens.admit(token)
        presence = Presence()
        context = SessionContext("s-1", {}, _options(), emit=print, end=print)
        taken.bind("s-1", {**ECHO_WS, ws_tokens.KEY_FIELD: key}, context, presence)
        assert taken.session_id.value == "s-1"
        assert cast(EchoProfile, taken.profile).context is context
        assert taken.transport.session_id == "s-1" and taken.transport.socket.presence is presence
        assert taken.transport.tokens.admit(token) and not taken.transport.tokens.admit(token)

        # Replaced once starts pause, by another one.
        await _kept(pipelines)
        replacement = pipelines.settle(pipelines.hold(), "echo")
        assert replacement is not None and replacement is not taken and replacement.usable
        await taken.aclose()
        assert taken.task.done()
        await _kept(pipelines)
        await replacement.aclose()
    finally:
        await pipelines.aclose()


async def test_one_held_when_the_worker_closes_is_stopped_and_not_kept() -> None:
    SharedSileroVADAnalyzer.preload()
    pipelines = WarmPipelines(_options())
    pipelines.refill()
    await _kept(pipelines)
    held = pipelines.hold()
    await pipelines.aclose()  # a drain, while a session is being taken
    unused = held["echo"]
    assert pipelines.settle(held, None) is None and pipelines.count() == 0
    await asyncio.wait_for(unused.task, 10)  # stopped, as those not held were


async def test_one_that_stops_unused_is_dropped_and_replaced_and_closing_stops_all() -> None:
    SharedSileroVADAnalyzer.preload()
    pipelines = WarmPipelines(_options())
    pipelines.refill()
    await _kept(pipelines)
    first = pipelines._ready["echo"][0]
    await first.pipeline.cancel(reason="a processor failed")  # as a pipeline that stops
    await asyncio.wait_for(first.task, 10)
    await eventually(
        lambda: pipelines.count() == 1 and pipelines._ready["echo"][0] is not first,
        what="a replacement",
    )
    second = pipelines._ready["echo"][0]
    await pipelines.aclose()
    assert pipelines.count() == 0 and second.task.done()
    pipelines.refill()  # closed: builds nothing more
    await asyncio.sleep(0.2)
    assert pipelines.count() == 0 and pipelines.hold() == {}


async def test_no_pipeline_is_built_ahead_when_turned_off() -> None:
    options = _options()
    options.warm_pipelines = 0
    pipelines = WarmPipelines(options)
    pipelines.refill()
    await asyncio.sleep(0.2)
    assert pipelines.count() == 0 and pipelines.hold() == {}
    await pipelines.aclose()
