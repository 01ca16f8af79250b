"""The private (or undocumented) upstream code voicepool overrides still has the shape we rely on.

Each test guards one override: the upstream method or attribute is still where
we hook it, with the signature we override, still called from the place our
override relies on, and the installed release is the one pyproject.toml pins
exactly. A failure here means a dependency changed under a hook: read the
override (its comment names the test) before lifting the pin. README.md's
"Upstreamable changes" says what upstream change would let each one go.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import aioice
import aioice.ice
import pytest
import uvicorn
from aiortc.rtcicetransport import RTCIceGatherer
from arq import Worker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime import llm as realtime_llm
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.daily.transport import DailyTransport
from pipecat.utils.base_object import BaseObject

from worker.profiles.assistant import WatchedRealtimeService
from worker.transports.daily import RoomTransport
from worker.transports.websocket import _EmbeddedServer
from worker.vad import SharedSileroVADAnalyzer
from worker.worker import SessionWorker, restrict_ice_host_addresses

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def assert_pinned_exactly(distribution: str) -> None:
    """``distribution`` is pinned with ``==`` in [project] dependencies, and installed at that."""
    requirements = [
        Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    ]
    pins = {canonicalize_name(r.name): r for r in requirements}
    requirement = pins.get(canonicalize_name(distribution))
    assert requirement is not None, f"{distribution} is missing from [project] dependencies"
    specifiers = list(requirement.specifier)
    assert [s.operator for s in specifiers] == ["=="], f"{distribution} must be pinned with =="
    assert metadata.version(distribution) == specifiers[0].version, (
        f"installed {distribution} is not the pinned release: reinstall, or re-check the hook"
    )


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults of ``function``'s parameters (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


def assigned_attributes(function: Callable[..., Any]) -> set[str]:
    """The ``self.<name>`` that ``function`` assigns."""
    return set(re.findall(r"^\s*self\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source(function), re.M))


# --- arq ------------------------------------------------------------------------------


def test_arq_poll() -> None:
    """``SessionWorker._poll_iteration`` caps each poll at the worker's free session slots.

    If this fails, arq no longer runs ``Worker._poll_iteration`` once per poll, or no
    longer reads ``allow_pick_jobs``/``queue_read_limit`` there: a full worker would take
    sessions it cannot run (or stop taking any), and the heartbeat's "last polled" would
    go stale, so the fleet would count the worker as stalled.
    """
    assert_pinned_exactly("arq")
    assert parameters(Worker._poll_iteration) == parameters(SessionWorker._poll_iteration)
    assert "await self._poll_iteration()" in source(Worker.main)
    poll = source(Worker._poll_iteration)
    for read in ("self.queue_read_limit", "self.allow_pick_jobs", "self.job_counter"):
        assert read in poll, f"arq's poll no longer reads {read}"
    assert {"job_counter", "queue_read_limit", "allow_pick_jobs"} <= assigned_attributes(
        Worker.__init__
    )


# --- aioice ---------------------------------------------------------------------------


async def test_aioice_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``restrict_ice_host_addresses`` replaces ``aioice.ice.get_host_addresses``.

    If this fails, aioice gathers host candidates some other way (or calls the function
    with other arguments): ``VOICEPOOL_WEBRTC_HOST_ADDRESSES`` would be ignored, so WebRTC
    peers behind NAT or on one machine (127.0.0.1) would get no usable candidate.
    """
    assert_pinned_exactly("aioice")
    original = aioice.ice.get_host_addresses
    monkeypatch.setattr(aioice.ice, "get_host_addresses", original)  # restored afterwards
    gather = aioice.ice.Connection.gather_candidates
    # Looked up as a module global at each call, with these keywords: patching reaches it.
    assert gather.__globals__ is vars(aioice.ice)
    assert "get_host_addresses" in gather.__code__.co_names
    assert re.search(r"get_host_addresses\(\s*use_ipv4=", source(gather))
    # aiortc (what Pipecat's SmallWebRTC uses) gathers through aioice's Connection.
    assert "self._connection.gather_candidates()" in source(RTCIceGatherer.gather)

    restrict_ice_host_addresses(["127.0.0.1", "::1"])
    assert parameters(aioice.ice.get_host_addresses) == parameters(original)
    connection = aioice.Connection(ice_controlling=True, use_ipv6=False)
    try:
        await connection.gather_candidates()
        assert [c.host for c in connection.local_candidates] == ["127.0.0.1"]
    finally:
        await connection.close()


# --- Pipecat: Silero VAD --------------------------------------------------------------


def test_silero_init() -> None:
    """``SharedSileroVADAnalyzer.__init__`` mirrors ``SileroVADAnalyzer.__init__``.

    If this fails, Pipecat's Silero analyzer sets up other (private) state than the
    ``_model``/``_windows_since_reset``/``_low_confidence_windows`` we set, or its ONNX
    wrapper holds more than ``session``, ``sample_rates`` and what ``reset_states`` sets:
    the echo and assistant profiles' VAD would fail at the first audio, or sessions would
    share one model's recurrent state and misdetect each other's speech.
    """
    assert_pinned_exactly("pipecat-ai")
    assert SileroVADAnalyzer.__bases__ == (VADAnalyzer,)
    assert parameters(SileroVADAnalyzer.__init__) == parameters(SharedSileroVADAnalyzer.__init__)
    assert "super().__init__(sample_rate=sample_rate, params=params)" in source(
        SileroVADAnalyzer.__init__
    )
    assert assigned_attributes(SileroVADAnalyzer.__init__) == assigned_attributes(
        SharedSileroVADAnalyzer.__init__
    )
    assert not hasattr(SileroVADAnalyzer, "_loaded")  # our class-level cache clashes with nothing
    # The ONNX wrapper we build with __new__: what its __init__ sets, we set.
    assert assigned_attributes(SileroOnnxModel.__init__) == {"session", "sample_rates"}
    assert "self.reset_states()" in source(SileroOnnxModel.__init__)
    assert parameters(SileroOnnxModel.reset_states) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("batch_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, 1),
    ]
    # ... and the analyzer still runs its model through that attribute.
    assert "self._model(" in source(SileroVADAnalyzer.voice_confidence)
    assert "self._model.reset_states()" in source(SileroVADAnalyzer._maybe_reset_model)


# --- Pipecat: OpenAI Realtime ---------------------------------------------------------


def test_rt_connect() -> None:
    """``WatchedRealtimeService._connect`` reports a connection that could not be made.

    If this fails, Pipecat's ``_connect`` is no longer what ``setup`` calls, or no longer
    leaves ``_websocket`` at None when connecting fails, or ``_disconnecting`` means
    something else: an unreachable model would leave the caller talking to nobody until
    the idle timeout (or a deliberate disconnect would be reported as a failure).
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._connect
    assert parameters(upstream) == parameters(WatchedRealtimeService._connect)
    assert "await self._connect()" in source(OpenAIRealtimeLLMService.setup)
    connect = source(upstream)
    assert re.search(r"except Exception as \w+:.*?self\._websocket = None", connect, re.S)
    assert {"_websocket", "_disconnecting"} <= assigned_attributes(
        OpenAIRealtimeLLMService.__init__
    )
    assert "self._disconnecting = True" in source(OpenAIRealtimeLLMService._disconnect)


def test_rt_error() -> None:
    """``WatchedRealtimeService._handle_evt_error`` keeps the model's error message.

    If this fails, Pipecat no longer hands the model's ``error`` events to
    ``_handle_evt_error(evt)`` and then stops reading, or the event no longer carries
    ``error.message``: sessions would end as ``model_disconnected`` (or not at all)
    instead of ``model_error`` with what the model said.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._handle_evt_error
    assert parameters(upstream) == parameters(WatchedRealtimeService._handle_evt_error)
    receive = source(OpenAIRealtimeLLMService._receive_task_handler)
    assert re.search(r"await self\._handle_evt_error\(evt\)\s*(?:#[^\n]*\s*)*return\b", receive)
    assert rt.ErrorEvent.model_fields["error"].annotation is rt.RealtimeError
    assert "message" in rt.RealtimeError.model_fields


def test_rt_receive() -> None:
    """``WatchedRealtimeService._receive_task_handler`` turns the end of the read loop into a
    session failure.

    If this fails, Pipecat no longer reads the model's socket in ``_receive_task_handler``
    (started by ``_connect``), no longer ends it when the socket closes, or no longer sets
    ``_disconnecting`` before cancelling it: a model that hangs up would leave the caller
    in silence, or every normal end would be reported as ``model_disconnected``.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._receive_task_handler
    assert parameters(upstream) == parameters(WatchedRealtimeService._receive_task_handler)
    assert "self.create_task(self._receive_task_handler())" in source(
        OpenAIRealtimeLLMService._connect
    )
    assert "async for message in self._websocket" in source(upstream)
    # The socket is a websockets client: what it raises is the ConnectionClosed we catch.
    assert realtime_llm.websocket_connect.__module__.startswith("websockets.")  # type: ignore[attr-defined]  # the name pipecat imports, not one it exports
    disconnect = source(OpenAIRealtimeLLMService._disconnect)
    assert disconnect.index("self._disconnecting = True") < disconnect.index(
        "self.cancel_task(self._receive_task"
    )


# --- Pipecat: Daily -------------------------------------------------------------------


def test_daily_events() -> None:
    """``RoomTransport._call_event_handler`` makes client events mean the whole room.

    If this fails, ``DailyTransport`` no longer dispatches ``on_client_connected``,
    ``on_client_disconnected``, ``on_active_speaker_changed`` and ``on_joined`` through
    ``_call_event_handler(name, *args)``: a Daily session would end when the first person
    leaves (or never connect), and user events would lose who was speaking.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = DailyTransport._call_event_handler
    assert upstream is BaseObject._call_event_handler
    assert parameters(upstream) == parameters(RoomTransport._call_event_handler)
    daily = inspect.getsource(DailyTransport)
    for event in (
        "on_client_connected",
        "on_client_disconnected",
        "on_active_speaker_changed",
        "on_joined",
    ):
        assert f'self._call_event_handler("{event}", ' in daily, f"{event} is dispatched elsewhere"


# --- uvicorn --------------------------------------------------------------------------


def test_uvicorn_signals() -> None:
    """``_EmbeddedServer.capture_signals`` keeps uvicorn off the worker's SIGTERM and SIGINT.

    If this fails, uvicorn installs its signal handlers somewhere other than
    ``Server.capture_signals`` (it did in ``install_signal_handlers`` before 0.29): the
    worker's WebSocket listener would take SIGTERM and close under live sessions instead
    of the worker draining them.
    """
    assert_pinned_exactly("uvicorn")
    upstream = uvicorn.Server.capture_signals
    assert parameters(upstream) == parameters(_EmbeddedServer.capture_signals)
    assert "with self.capture_signals():" in source(uvicorn.Server.serve)
