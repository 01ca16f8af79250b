"""The private (or undocumented) upstream code voicepool overrides still has the shape we rely on.

Each test guards one override: the upstream method or attribute is still where
we hook it, with the signature we override, still called from the place our
override relies on, and the installed release is the one pyproject.toml pins
exactly. A failure here means a dependency changed under a hook: read the
override (its comment names the test) before lifting the pin. README.md's
"Upstreamable changes" says what upstream change would let each one go.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioice
import aioice.ice
import pytest
import uvicorn
from aiortc import RTCIceTransportPolicy, RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer
from arq import Worker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer
from pipecat.audio.vad.vad_controller import VADController
from pipecat.frames.frames import StartFrame
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.processors.frameworks.rtvi import RTVIProcessor
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime import llm as realtime_llm
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.daily.transport import DailyTransport
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.utils.base_object import BaseObject
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import Connection, ConnectionPool
from websockets.asyncio.client import connect as websocket_connect

from shared.connections import HiredisParser, arq_pool, redis_client
from shared.http_server import QuietServer
from worker.model_sockets import auth_headers
from worker.profiles.assistant import HeldRealtimeService, WatchedRealtimeService
from worker.session_events import ACTIVITY_FRAMES
from worker.transports.daily import RoomTransport
from worker.transports.smallwebrtc import SessionConnection
from worker.transports.websocket import _EmbeddedServer
from worker.vad import SharedSileroVADAnalyzer
from worker.worker import SessionWorker, bind_udp_in_range, restrict_ice_host_addresses

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def assert_pinned_exactly(distribution: str) -> None:
    """``distribution`` is pinned with ``==`` in pyproject.toml (the dependencies, or an
    extra's), and installed at that."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = [project["dependencies"], *project["optional-dependencies"].values()]
    requirements = [Requirement(r) for group in listed for r in group]
    pins = {canonicalize_name(r.name): r for r in requirements}
    requirement = pins.get(canonicalize_name(distribution))
    assert requirement is not None, f"{distribution} is missing from pyproject.toml"
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
    """``SessionWorker._poll_iteration`` is arq's poll, with its read and claims in one step,
    capped at the worker's free session slots.

    If this fails, arq no longer runs ``Worker._poll_iteration`` once per poll (so our poll
    would not run, or the heartbeat's "last polled" would go stale and the fleet count the
    worker as stalled), its poll does more than read, start, reap finished tasks and beat
    (something ours would skip), or it no longer keeps the counters ours keeps for it.
    """
    assert_pinned_exactly("arq")
    assert parameters(Worker._poll_iteration) == parameters(SessionWorker._poll_iteration)
    assert "await self._poll_iteration()" in source(Worker.main)
    poll = source(Worker._poll_iteration)
    for step in (
        "job_ids = await self.pool.zrangebyscore(",
        "await self.start_jobs(job_ids)",
        "if self.allow_abort_jobs:",  # off here (arq's default): nothing to abort
        "for job_id, t in list(self.tasks.items()):",
        "t.result()",
        "await self.heart_beat()",
    ):
        assert step in poll, f"arq's poll no longer does: {step}"
    assert poll.count("await ") == 4, "arq's poll does something more"
    assert {"job_counter", "sem", "tasks", "allow_abort_jobs"} <= assigned_attributes(
        Worker.__init__
    )
    assert "self.sem = asyncio.BoundedSemaphore(max_jobs + 1)" in source(Worker.__init__)


def test_arq_pickup_wakes() -> None:
    """``SessionWorker`` waits for a ring between polls instead of arq's ``poll_delay``.

    If this fails, arq no longer sleeps ``poll_delay`` between polls (so 0 would spin), or
    no longer releases a finished job's slot through ``_release_sem_dec_counter_on_complete``
    (so a full worker waits for the safety poll).
    """
    assert_pinned_exactly("arq")
    assert "async for _ in poll(self.poll_delay_s)" in source(Worker.main)
    assert "self._release_sem_dec_counter_on_complete()" in source(Worker.start_jobs)


def test_arq_claim() -> None:
    """``SessionWorker._poll_iteration`` claims each job as arq's ``start_jobs`` does, in one
    step for the poll (``queue.JobClaims.take_due``), and starts it the way arq does.

    If this fails, arq claims a job otherwise (another key, another test of the queue's
    score) or starts it otherwise: a job could run on two workers, or run without arq's
    bookkeeping (its retries, its result, its slot given back).
    """
    assert_pinned_exactly("arq")
    body = source(Worker.start_jobs)
    for step in (
        "await self.sem.acquire()",
        "self.job_counter = self.job_counter + 1",
        "in_progress_key = in_progress_key_prefix + job_id",
        "await pipe.watch(in_progress_key)",
        "ongoing_exists = await pipe.exists(in_progress_key)",
        "score = await pipe.zscore(self.queue_name, job_id)",
        "if ongoing_exists or not score or score > timestamp_ms():",
        "pipe.psetex(in_progress_key, int(self.in_progress_timeout_s * 1000), b'1')",
        "t = self.loop.create_task(self.run_job(job_id, int(score)))",
        "t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())",
        "self.tasks[job_id] = t",
    ):
        assert step in body, f"arq's claim no longer does: {step}"
    assert [p[0] for p in parameters(Worker.run_job)] == ["self", "job_id", "score"]
    # A claim reads the job and its tries as arq's run reads them (``queue.Claim``): a job
    # with no tries counted was never run (its session is taken ahead of the run).
    run = source(Worker.run_job)
    for step in ("pipe.get(job_key_prefix + job_id)", "pipe.incr(retry_key_prefix + job_id)"):
        assert step in run, f"arq's run no longer does: {step}"


# --- pipecat: the idle timeout ------------------------------------------------------


def test_idle_activity() -> None:
    """``SessionEvents`` keeps the idle timeout with Pipecat's own idle frames.

    If this fails, Pipecat counts other frames as activity than ``ACTIVITY_FRAMES``
    (``worker/session_events.py``): a call would idle out (or not) otherwise than upstream's.
    """
    assert_pinned_exactly("pipecat-ai")
    default = inspect.signature(PipelineWorker.__init__).parameters["idle_timeout_frames"].default
    assert (StartFrame, *default) == ACTIVITY_FRAMES
    assert "isinstance(data.frame, StartFrame)" in source(IdleFrameObserver.on_push_frame)


# --- Pipecat and aiortc: the ICE policy of a SmallWebRTC connection --------------------


def test_ice_policy() -> None:
    """``SessionConnection._initialize`` swaps the peer connection's configuration for one
    with ``iceTransportPolicy=RELAY``, which aiortc reads when it makes the ICE gatherer.

    If this fails, ``VOICEPOOL_WEBRTC_ICE_POLICY=relay`` would be ignored: a worker would
    offer its own addresses, which the operator asked to keep hidden.
    """
    assert_pinned_exactly("pipecat-ai")
    assert_pinned_exactly("aiortc")
    assert "self._pc = RTCPeerConnection(rtc_config)" in source(SmallWebRTCConnection._initialize)
    assert "self._initialize()" in source(SmallWebRTCConnection.__init__)
    assert "iceTransportPolicy=self.__configuration.iceTransportPolicy" in source(RTCPeerConnection)
    relay = SessionConnection([], relay_only=True)
    assert relay.pc.__dict__["_RTCPeerConnection__configuration"].iceTransportPolicy == (
        RTCIceTransportPolicy.RELAY
    )
    plain = SessionConnection([])
    assert plain.pc.__dict__["_RTCPeerConnection__configuration"].iceTransportPolicy == (
        RTCIceTransportPolicy.ALL
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


async def test_aioice_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bind_udp_in_range`` replaces the running loop's ``create_datagram_endpoint``.

    If this fails, aioice binds its host candidates some other way: with
    ``VOICEPOOL_WEBRTC_UDP_PORTS`` set, media would use ports outside the range a firewall
    or a container publishes, and calls would not connect.
    """
    assert_pinned_exactly("aioice")
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    candidates = source(aioice.ice.Connection.get_component_candidates)
    assert "loop = asyncio.get_running_loop()" in candidates
    assert re.search(r"loop\.create_datagram_endpoint\(\s*lambda: StunProtocol\(self\), "
                     r"local_addr=\(address, 0\)", candidates)  # fmt: skip

    restrict_ice_host_addresses(["127.0.0.1"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        low = taken.getsockname()[1]  # the range's first port is in use: it is skipped
        bind_udp_in_range(asyncio.get_running_loop(), low, low + 2)
        connections = [aioice.Connection(ice_controlling=True, use_ipv6=False) for _ in range(3)]
        try:
            for connection in connections[:2]:
                await connection.gather_candidates()
            ports = [c.local_candidates[0].port for c in connections[:2]]
            assert sorted(ports) == [low + 1, low + 2]
            with pytest.raises(OSError, match="every UDP port"):  # aioice logs, gathers none
                await asyncio.get_running_loop().create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
                )
        finally:
            for connection in connections:
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
    ours = {"_scored", "_volumes", "_skipped", "_analyzing"}  # handed to _run_analyzer
    assert (
        assigned_attributes(SileroVADAnalyzer.__init__)
        == assigned_attributes(SharedSileroVADAnalyzer.__init__) - ours
    )
    assert not ours & set(vars(SileroVADAnalyzer()))
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


def test_onnxruntime_telemetry() -> None:
    """A worker loads onnxruntime with its telemetry off (``worker/__init__.py``).

    onnxruntime 1.32 (pipecat-ai[silero]'s, locked in requirements/) starts an uploader
    thread as it is imported, which looks up mobile.events.data.microsoft.com every few
    seconds; ``ORT_DISABLE_TELEMETRY=1``, read at that import, keeps it from starting. If
    this fails, the switch or the thread changed: a worker may be reporting to Microsoft
    again.
    """
    count = (
        "import os, time, worker.vad; time.sleep(0.5); print(len(os.listdir('/proc/self/task')))"
    )

    def threads(switch: str | None) -> int:
        # onnxruntime also starts no uploader where the environment says CI (CI, GITHUB_ACTIONS,
        # TF_BUILD and nine more: strings in its binary), as this suite's does in CI; a worker's
        # host doesn't, so the child gets only PATH and HOME.
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        if switch is not None:
            env["ORT_DISABLE_TELEMETRY"] = switch
        run = subprocess.run(
            [sys.executable, "-c", count], env=env, capture_output=True, text=True, check=True
        )
        return int(run.stdout.split()[-1])

    assert threads(None) == threads("0") - 1  # as the worker sets it; as an operator allows it


def test_vad_analyze_audio() -> None:
    """``SharedSileroVADAnalyzer.analyze_audio`` runs what Pipecat's runs, minus the thread.

    If this fails, Pipecat's ``analyze_audio`` does more than hand ``_run_analyzer`` the
    buffer on the analyzer's executor (that extra would be skipped on every frame), or
    the VAD is fed some other way than through ``analyze_audio``.
    """
    assert_pinned_exactly("pipecat-ai")
    body = [
        line.strip()
        for line in source(VADAnalyzer.analyze_audio).split('"""')[2].splitlines()
        if line.strip()
    ]
    assert body == [
        "loop = asyncio.get_running_loop()",
        "state = await loop.run_in_executor(self._executor, self._run_analyzer, buffer)",
        "return state",
    ]
    assert "self._vad_analyzer.analyze_audio(audio)" in source(VADController._handle_vad)


def test_silero_batch() -> None:
    """``SileroBatch`` computes, row by row, what ``SileroOnnxModel.__call__`` computes for
    one window, and ``SharedSileroVADAnalyzer`` hands ``_run_analyzer`` the scores of the
    windows it cuts, in order.

    If this fails, Pipecat's Silero wrapper prepares its input or carries its state
    differently (the batch would score with a wrong context or state), or its analyzer
    scores windows some other way than one ``voice_confidence`` call per window cut from
    ``_vad_buffer`` (scores would go to the wrong windows), or it measures a window's
    volume otherwise, or no longer calls a window too quiet silence whatever its score
    (a quiet window is not scored at all: its score would be missed).
    """
    assert_pinned_exactly("pipecat-ai")
    call = source(SileroOnnxModel.__call__)
    for line in (
        "context_size = 64 if sr == 16000 else 32",
        "x = np.concatenate((self._context, x), axis=1)",
        'ort_inputs = {"input": x, "state": self._state, "sr": np.array(sr, dtype="int64")}',
        "self._state = cast(np.ndarray, ort_outs[1])",
        "self._context = x[..., -context_size:]",
    ):
        assert line in call, line
    confidence = source(SileroVADAnalyzer.voice_confidence)
    assert "audio_int16.astype(np.float32) / 32768.0" in confidence
    assert "self._maybe_reset_model(confidence.item())" in confidence
    run = source(VADAnalyzer._run_analyzer)
    assert run.count("self.voice_confidence(") == 1
    assert "while len(self._vad_buffer) >= num_required_bytes:" in run
    assert "audio_frames = self._vad_buffer[:num_required_bytes]" in run
    assert "self._vad_buffer += buffer" in run
    assert run.count("self._get_smoothed_volume(") == 1
    assert "self._prev_volume = volume" in run
    speaking = (
        "speaking = confidence >= self._params.confidence and volume >= self._params.min_volume"
    )
    assert speaking in run
    smoothed = source(VADAnalyzer._get_smoothed_volume)
    assert "self._volume_tracker.update(audio, self.sample_rate)" in smoothed
    assert (
        "return exp_smoothing(self._volume_tracker.volume, self._prev_volume, "
        "self._smoothing_factor)" in smoothed
    )


# --- Pipecat: OpenAI Realtime ---------------------------------------------------------


def test_rt_connect() -> None:
    """``WatchedRealtimeService._connect`` re-implements Pipecat's, to tell a refused key
    (fails the session) from a model unreachable for now (reconnected).

    If this fails, Pipecat's ``_connect`` is no longer what ``setup`` calls, or connects
    otherwise than our ``_open`` does (the same ``websocket_connect`` with the URL and
    ``_auth_headers()``, then the read task), or no longer leaves ``_websocket`` at None
    when connecting fails, or ``_disconnecting`` means something else: the model would be
    reached another way than upstream's (Azure's headers, say), an unreachable model
    would leave the caller talking to nobody, or a deliberate disconnect would be
    reported as a failure.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._connect
    assert parameters(upstream) == parameters(WatchedRealtimeService._connect)
    assert "await self._connect()" in source(OpenAIRealtimeLLMService.setup)
    connect = source(upstream)
    assert re.search(r"if self\._websocket:\s*(?:#[^\n]*\s*)*return\b", connect)
    assert re.search(
        r"self\._websocket = await websocket_connect\(\s*uri=self\.base_url,\s*"
        r"additional_headers=await self\._auth_headers\(\),\s*\)",
        connect,
    )
    assert "self._receive_task = self.create_task(self._receive_task_handler())" in connect
    assert realtime_llm.websocket_connect is websocket_connect  # type: ignore[attr-defined]  # the name pipecat imports, not one it exports
    assert parameters(OpenAIRealtimeLLMService._auth_headers) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty)
    ]
    # The sockets a worker opens ahead (worker/model_sockets.py) send the same headers.
    keyed = SimpleNamespace(api_key="sk-test-key")
    assert asyncio.run(OpenAIRealtimeLLMService._auth_headers(keyed)) == auth_headers(  # type: ignore[arg-type]  # only api_key is read
        "sk-test-key"
    )
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
    reconnect (or a session failure).

    If this fails, Pipecat no longer reads the model's socket in ``_receive_task_handler``
    (started by ``_connect``), no longer ends it when the socket closes, or no longer sets
    ``_disconnecting`` before cancelling it: a model that hangs up would leave the caller
    in silence, or every normal end would be taken for a drop and reconnected.
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


def test_rt_session_updated() -> None:
    """``WatchedRealtimeService._handle_evt_session_updated`` gives a reconnect's new session
    the conversation so far before it is ready, as ``_create_response`` gives the first one.

    If this fails, Pipecat no longer sends the settings on ``session.created`` and marks the
    session ready (running a response asked for meanwhile) on ``session.updated``, no
    longer sends a context as ``get_llm_invocation_params(...)["messages"]`` items marked
    in ``_messages_added_manually``, or keeps the state of a connection elsewhere than the
    attributes ``_disconnect`` resets and the reconnect clears: a new session would miss
    the conversation, get it twice, or be sent a truncate for an item of the lost one (a
    fatal ``error``), and sends to the dead socket would push an ErrorFrame each.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._handle_evt_session_updated
    assert parameters(upstream) == parameters(WatchedRealtimeService._handle_evt_session_updated)
    receive = source(OpenAIRealtimeLLMService._receive_task_handler)
    assert re.search(
        r'"session\.updated":\s*await self\._handle_evt_session_updated\(evt\)', receive
    )
    assert "await self._send_session_update()" in source(
        OpenAIRealtimeLLMService._handle_evt_session_created
    )
    updated = source(upstream)
    assert "self._api_session_ready = True" in updated
    assert (
        "self._run_llm_when_api_session_ready" in updated and "self._create_response()" in updated
    )
    create = source(OpenAIRealtimeLLMService._create_response)
    assert re.search(
        r"if not self\._api_session_ready:\s*self\._run_llm_when_api_session_ready", create
    )
    for step in (
        "if self._llm_needs_conversation_setup:",
        "await adapter.get_llm_invocation_params(self._context)\n",
        'llm_invocation_params["messages"]',
        "events.ConversationItemCreateEvent(item=item)",
        "self._messages_added_manually[evt.item.id] = True",
        "self._llm_needs_conversation_setup = False",
        "self._response_active = True",
    ):
        assert step in create, step
    disconnect = source(OpenAIRealtimeLLMService._disconnect)
    for reset in (
        "self._api_session_ready = False",
        "self._response_active = False",
        "self._response_create_owed = False",
        "self._open_function_calls = set()",
        "self._completed_tool_calls = set()",
        "self._disconnecting = False",
    ):
        assert reset in disconnect, reset
    # After a disconnect the context's tool results are marked sent again, as
    # reset_conversation does, or the next context would send them to the new session.
    reconnect = source(OpenAIRealtimeLLMService.reset_conversation)
    assert reconnect.index("await self._disconnect()") < reconnect.index(
        "await self._process_completed_function_calls(send_new_results=False)"
    )
    assert {
        "_current_audio_response",
        "_current_assistant_response",
        "_pending_function_calls",
        "_messages_added_manually",
        "_retrieve_conversation_item_futures",
        "_llm_needs_conversation_setup",
        "_response_active",
        "_api_session_ready",
        "_context",
    } <= assigned_attributes(OpenAIRealtimeLLMService.__init__)
    assert "self._current_audio_response" in source(
        OpenAIRealtimeLLMService._truncate_current_audio_response
    )
    # Every client event goes out through send_client_event, where it is held back
    # between a drop and the new session.
    assert "await self._ws_send(event.model_dump(exclude_none=True))" in source(
        OpenAIRealtimeLLMService.send_client_event
    )


def test_rt_speech_stopped() -> None:
    """``WatchedRealtimeService._handle_evt_speech_stopped`` marks where the server committed
    a user turn, in the user audio kept for a new session.

    If this fails, Pipecat no longer handles ``input_audio_buffer.speech_stopped`` there, or
    the user's audio, commits and clears no longer all go through ``send_client_event``,
    or transcripts no longer arrive in ``handle_evt_input_audio_transcription_completed``:
    after a drop a new session would hear an answered turn again (and answer it twice),
    or not hear what the caller said while reconnecting.
    """
    assert_pinned_exactly("pipecat-ai")
    upstream = OpenAIRealtimeLLMService._handle_evt_speech_stopped
    assert parameters(upstream) == parameters(WatchedRealtimeService._handle_evt_speech_stopped)
    receive = source(OpenAIRealtimeLLMService._receive_task_handler)
    for event, handler in (
        ("input_audio_buffer.speech_stopped", "self._handle_evt_speech_stopped(evt)"),
        (
            "conversation.item.input_audio_transcription.completed",
            "self.handle_evt_input_audio_transcription_completed(evt)",
        ),
    ):
        assert re.search(rf'"{re.escape(event)}":\s*await {re.escape(handler)}', receive), event
    service = OpenAIRealtimeLLMService
    for method, event in (
        (service._send_user_audio, "InputAudioBufferAppendEvent"),
        (service._replay_user_audio_preroll, "InputAudioBufferAppendEvent"),
        (service._handle_user_stopped_speaking, "InputAudioBufferCommitEvent"),
        (service._handle_interruption, "InputAudioBufferClearEvent"),
    ):
        assert f"await self.send_client_event(events.{event}(" in source(method), method
    assert inspect.getsource(service).count("self._ws_send(") == 1  # in send_client_event


def test_rt_response_hold() -> None:
    """``HeldRealtimeService`` keeps the model from answering while the caller is away.

    If this fails, Pipecat no longer starts every response it asks for in
    ``_create_response()``, no longer hands ``response.created``, ``speech_started`` and
    the three output deltas to the ``_handle_evt_*`` methods ours wrap, no longer cancels
    the response itself on an interruption with local turns only, or no longer lets a
    ``response.cancel`` that finds no response pass (``response_cancel_not_active``): the
    model would talk to an empty line during ``reconnecting``, words of a cancelled answer
    would be played and recorded, a tool's result left unanswered would stay so, or a late
    cancel would fail the call.
    """
    assert_pinned_exactly("pipecat-ai")
    handlers = {
        "response.created": "_handle_evt_response_created",
        "input_audio_buffer.speech_started": "_handle_evt_speech_started",
        "response.output_audio.delta": "_handle_evt_audio_delta",
        "response.output_audio_transcript.delta": "_handle_evt_audio_transcript_delta",
        "response.output_text.delta": "_handle_evt_text_delta",
    }
    hooks = ("_create_response", "_handle_interruption", "_handle_function_call_result")
    for name in (*hooks, "_handle_evt_speech_stopped", *handlers.values()):
        upstream, ours = getattr(OpenAIRealtimeLLMService, name), getattr(HeldRealtimeService, name)
        assert parameters(upstream) == parameters(ours), name
    receive = source(OpenAIRealtimeLLMService._receive_task_handler)
    for kind, name in handlers.items():
        assert f'evt.type == "{kind}":\n                await self.{name}(evt)' in receive, kind
    result = source(OpenAIRealtimeLLMService._handle_function_call_result)
    assert "self._results_awaiting_response = True" in result  # what the backstop reads
    interruption = source(OpenAIRealtimeLLMService._handle_interruption)
    assert "if self._is_turn_detection_disabled():" in interruption
    assert "events.ResponseCancelEvent()" in interruption
    assert '"response_cancel_not_active"' in receive
    assert "self._response_active = True" in source(OpenAIRealtimeLLMService._create_response)
    for caller in (
        OpenAIRealtimeLLMService._handle_context,
        OpenAIRealtimeLLMService._handle_evt_session_updated,
    ):
        assert "await self._create_response()" in source(caller)


def test_rt_typed_text() -> None:
    """``HeldRealtimeService.typed`` puts the caller's typed words in as a user message.

    If this fails, Pipecat's RTVI ``send-text`` no longer arrives as an
    ``RTVISendTextFrame`` after the ``LLMMessagesAppendFrame`` it makes, or its realtime
    service no longer has ``_send_message_item(text, role)`` or the readiness flags the
    upstream append path checks: typed text would reach the model as a system message,
    or not at all.
    """
    assert_pinned_exactly("pipecat-ai")
    send_item = parameters(OpenAIRealtimeLLMService._send_message_item)
    assert [name for name, _kind, _default in send_item] == ["self", "text", "role"]
    append = source(OpenAIRealtimeLLMService._handle_messages_append)
    assert "self._api_session_ready or self._llm_needs_conversation_setup" in append
    assert 'role="assistant" if role == "assistant" else "system"' in append  # why ours exists
    handler = source(RTVIProcessor._handle_send_text)
    assert handler.index("LLMMessagesAppendFrame(") < handler.index("RTVISendTextFrame(")


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


def test_uvicorn_tick() -> None:
    """``shared.http_server.QuietServer.main_loop`` calls uvicorn's ``on_tick`` once a second
    with the counter a second on, instead of every 0.1 s.

    If this fails, ``on_tick`` no longer refreshes the Date header at multiples of 10 or no
    longer answers whether to exit, or ``serve`` no longer runs ``main_loop``: the API and
    the workers' listeners would send a stale Date or not stop.
    """
    assert_pinned_exactly("uvicorn")
    assert parameters(uvicorn.Server.main_loop) == parameters(QuietServer.main_loop)
    assert [name for name, _kind, _default in parameters(uvicorn.Server.on_tick)] == [
        "self",
        "counter",
    ]
    tick = source(uvicorn.Server.on_tick)
    assert "if counter % 10 == 0:" in tick and "if self.should_exit:" in tick
    assert "await self.main_loop()" in source(uvicorn.Server._serve)
    # sse-starlette wraps uvicorn's handle_exit (to end event streams at shutdown), which
    # QuietServer's calls on to: uvicorn's own still asks the loop to stop.
    from sse_starlette.sse import AppStatus

    uvicorns = AppStatus.original_handler or uvicorn.Server.handle_exit
    assert parameters(uvicorns) == parameters(QuietServer.handle_exit)
    assert "self.should_exit = True" in source(uvicorns)


# --- Pipecat: SmallWebRTC and the FastAPI WebSocket transport ----------------------------


def test_smallwebrtc_restart() -> None:
    """A session keeps one ``SmallWebRTCConnection`` and puts each new peer in it with
    ``renegotiate(restart_pc=True)`` (worker/transports/smallwebrtc.py).

    If this fails, a restart no longer announces the old peer connection's end with
    ``disconnected`` before making a new one under the same object, a new peer's
    ``connected`` no longer reaches Pipecat's transport (which attaches its tracks and
    gives it a new audio track through ``replace_audio_track``), or that track no longer
    holds each write until its sender takes it: a client that comes back would get a
    silent call, or the call would end when it went.
    """
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
    from pipecat.transports.smallwebrtc.transport import RawAudioTrack, SmallWebRTCClient

    from worker.transports.smallwebrtc import SessionConnection

    assert_pinned_exactly("pipecat-ai")
    assert parameters(SmallWebRTCConnection.renegotiate)[3] == (
        "restart_pc", inspect.Parameter.POSITIONAL_OR_KEYWORD, False
    )  # fmt: skip
    renegotiate = source(SmallWebRTCConnection.renegotiate)
    assert renegotiate.index('self._call_event_handler("disconnected")') < renegotiate.index(
        "self._initialize()"
    )
    assert "self._pc.remove_all_listeners()" in renegotiate  # no "closed" from the old one
    state = source(SmallWebRTCConnection._handle_new_connection_state)
    assert "await self._call_event_handler(state)" in state
    connected = source(SmallWebRTCClient._handle_client_connected)
    assert "self._webrtc_connection.audio_input_track()" in connected
    assert "self._webrtc_connection.replace_audio_track(self._audio_output_track)" in connected
    assert parameters(SmallWebRTCConnection.replace_audio_track) == parameters(
        SessionConnection.replace_audio_track
    )
    assert "future.set_result(True)" in source(RawAudioTrack.recv)
    assert "return future" in source(RawAudioTrack.add_audio_bytes)


def test_fastapi_socket_surface() -> None:
    """``SessionSocket`` has all of a Starlette ``WebSocket`` that Pipecat's FastAPI
    transport uses (worker/transports/websocket.py).

    If this fails, Pipecat's ``FastAPIWebsocketClient`` uses more of the socket than
    ``receive``, ``send_bytes``, ``send_text``, ``close``, ``client_state`` and
    ``application_state``: a WebSocket session would fail on what ``SessionSocket`` lacks.
    """
    from pipecat.transports.websocket import fastapi

    from worker.transports.websocket import SessionSocket

    assert_pinned_exactly("pipecat-ai")
    code = inspect.getsource(fastapi.FastAPIWebsocketClient) + inspect.getsource(
        fastapi._WebSocketMessageIterator
    )
    used = set(re.findall(r"self\._websocket\.(\w+)", code))
    assert used == {
        "receive", "send_bytes", "send_text", "close", "client_state", "application_state"
    }  # fmt: skip
    assert all(hasattr(SessionSocket, name) for name in used)
    # The transport reads the socket's headers only to check an Origin allow-list.
    init = source(fastapi.FastAPIWebsocketTransport.__init__)
    assert re.search(r"if params\.allowed_origins:\s*origin = websocket\.headers", init)


# --- redis-py -----------------------------------------------------------------------


async def test_hiredis_readiness_check(redis_server: Any) -> None:
    """``shared.connections.HiredisParser`` checks a pooled connection for unread data or a
    closed stream without waiting, as redis-py does since 8.0, on every client here.

    If this fails, redis-py 5.3 no longer checks a pooled connection through the parser's
    ``can_read_destructive`` before each command (the override does nothing), its own
    check no longer waits a turn of the loop (the override may go), or its parser keeps
    its reader, stream or state elsewhere.
    """
    assert_pinned_exactly("redis")
    assert_pinned_exactly("hiredis")
    assert "await connection.can_read_destructive()" in source(ConnectionPool.ensure_connection)
    assert "return await self._parser.can_read_destructive()" in source(
        Connection.can_read_destructive
    )
    assert "async with async_timeout(0):" in source(_AsyncHiredisParser.can_read_destructive)
    assert {"_stream", "_reader", "_connected"} <= assigned_attributes(
        _AsyncHiredisParser.on_connect
    )

    client = redis_client(redis_server.url)
    arq = await arq_pool(redis_server.url)
    try:
        for pool in (client.connection_pool, arq.connection_pool):
            connection = await pool.get_connection("PING")
            assert isinstance(connection._parser, HiredisParser)
            check = connection.can_read_destructive()
            with pytest.raises(StopIteration) as answered:  # at once: no wait on the loop
                check.send(None)
            assert answered.value.value is False  # clean
            await connection.send_command("PING")  # a reply left unread
            await asyncio.sleep(0.05)
            assert await connection.can_read_destructive()
            await pool.release(connection)
        assert await client.ping()  # the dirty connection is made again, not used as it is
        assert await arq.ping()
    finally:
        await client.aclose()
        await arq.aclose()
