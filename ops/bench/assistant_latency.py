"""Assistant pipeline latency: what a worker adds between the caller and the Realtime model.

One invocation measures, at each number of concurrent sessions, two pipelines in the same
worker process, one after the other:

* assistant: the ``assistant`` profile exactly as the worker builds it (transport in → user
  aggregator → OpenAIRealtimeLLMService → transport out → assistant aggregator), talking to
  the fake Realtime API (harness/doubles/openai_realtime.py), which runs standalone in its own
  process with real-time audio pacing (``--pace 1``);
* bare (the baseline): transport in → a processor that forwards every frame and echoes the
  caller's audio back in 60 ms frames (the size of the fake model's audio deltas) →
  transport out.

The system runs as processes, as harness/system.py starts it (embedded Redis, the API
under uvicorn), except that the single worker is started through this file: it installs
instrumentation, then runs the ordinary ``voicepool worker`` command. Nothing in worker/ is
changed; the instrumentation wraps methods of each session's objects (transport, Realtime
service) after ``SessionRunner._build_pipeline`` built them, and, for the baseline only,
stands the pass-through profile in for sessions created with profile ``echo``. Every
timestamp is ``time.monotonic_ns()`` taken inline in the worker (not in a Pipecat observer:
observers are called through per-observer queues, later than the frame moved, and each adds
a queue put per push to the CPU being measured). Frames are matched by identity (Pipecat
frame ids) on the way in, and on the way out by their first 10 ms of audio, which is exactly
one sub-chunk of the WebRTC output track.

(a) caller → model: an InputAudioRawFrame enters the transport input (``push_audio_frame``,
right after aiortc decoded and resampled it) → its ``input_audio_buffer.append`` has been
written to the model's socket (``_send_user_audio`` returned). Bare: → the forwarder
receives it.

(b) model → caller: the WebSocket message carrying a ``response.output_audio.delta`` is
read off the socket by the worker's event loop → the first 10 ms of that audio is taken by
aiortc from the output track to be encoded and sent (``RawAudioTrack.recv``). "(b) to
transport out" stops where the output transport starts handling the frame, before the
real-time playout queue. Bare: from the forwarder pushing its 60 ms frame.

CPU: user+system seconds of the worker process over the measured window, per session-minute,
also net of the worker's idle rate (arq polls Redis every 10 ms) measured before the phases.
Alongside: the worker's event-loop lag and GC pauses, and output gaps (10 ms of silence the
WebRTC track sent while a whole chunk of audio waited in the output transport).

Results go to ops/bench/results/assistant_latency.{json,md}; the Markdown is printed too.

    .venv/bin/python ops/bench/assistant_latency.py [--sessions 1,4,8] [--duration 30]
        [--warmup 4] [--idle 3] [--py-spy] [--no-ws-compression] [--out DIR]

``--py-spy`` profiles the worker during the last assistant phase (py-spy on PATH or in the
venv; perturbs that phase). ``--no-ws-compression`` is an experiment, not the production
path: the worker opens the model's WebSocket without permessage-deflate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gc
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import measure  # ops/bench/measure.py
import numpy as np
import profiling  # ops/bench/profiling.py
from measure import machine_facts, percentile, stop_process, write_results

DESCRIPTION = "Latency and CPU the assistant pipeline adds over a bare pass-through pipeline."
ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
WORKER_SHIM = "_instrumented_worker"  # argv[1] that makes this file run the worker
TRACE_DIR_ENV = "VOICEPOOL_BENCH_TRACE_DIR"
NO_WS_COMPRESSION_ENV = "VOICEPOOL_BENCH_NO_WS_COMPRESSION"  # an experiment, off by default
OUT_CHUNKS_ENV = "VOICEPOOL_BENCH_OUT_10MS_CHUNKS"  # an experiment, off by default
BARE_STANDIN = "echo"  # sessions created with this profile run the bare pipeline instead
API_KEY = "sk-bench-not-a-real-key"
PIPELINE_RATE = 24000  # PCM16 24 kHz, the Realtime API's rate, both pipelines both ways
FRAME_MS_OUT = 60  # the fake model's audio delta; the bare forwarder uses the same size
CLIENT_RATE = 48000
# Output audio not sent within this long counts as not sent (below the caller's cycle:
# the fake's replies repeat the same audio every cycle, so later matches could be wrong).
STALE_NS = 5_000_000_000
LAG_PROBE_S = 0.02
SESSION_TIMEOUT_S = 30.0
TRACE_TIMEOUT_S = 30.0
MS_PER_CHAR = 60  # the fake: one 60 ms audio delta per character of its answer
ANSWER_SENTENCE = "Sure, I can help with that, here is what I found for you today. "

if TYPE_CHECKING:
    import psutil

    from harness.system import System
    from harness.webrtc_client import WebRTCTestClient


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process on the host


# --- worker side: runs inside the instrumented worker process ------------------------------

# (time, event-loop lag, CPU the loop's thread used meanwhile) in ns
LAG_SAMPLES: list[tuple[int, int, int]] = []
GC_PAUSES: list[tuple[int, int, int]] = []  # (time, duration ns, generation)
STALL_NS = 20_000_000  # a loop lag above this is a stall


class SessionTrace:
    """Timestamps of one session's audio frames, keyed by Pipecat frame id."""

    def __init__(self, session_id: str, pipeline: str) -> None:
        self.session_id = session_id
        self.pipeline = pipeline
        # [entered transport input, pushed on by it, reached service/forwarder, sent to model]
        self.inputs: dict[int, list[int | None]] = {}
        # [socket read, recv() returned, frame pushed, output transport, first 10 ms sent]
        self.outputs: dict[int, list[int | None]] = {}
        self.pending: dict[bytes, deque[tuple[int, int]]] = {}  # first 10 ms → frames
        self.dropped_outputs = 0
        self.rx: deque[tuple[bytes, int]] = deque()  # (message head, socket read time)
        self.current_rx: int | None = None  # socket read time of the message being handled
        self.current_recv: int | None = None
        self.ws_extensions: list[str] = []  # what the model's WebSocket negotiated
        # The output track: 10 ms of audio taken (times), and 10 ms of silence it made up
        # while a whole chunk of audio waited in the output transport (an underrun).
        self.out_bytes_in = self.out_bytes_sent = 0
        self.audio_pops: list[int] = []
        self.underruns: list[int] = []
        self.pops = 0

    def input_arrived(self, frame_id: int) -> None:
        self.inputs[frame_id] = [now_ns(), None, None, None]

    def input_pushed(self, frame_id: int) -> None:
        record = self.inputs.get(frame_id)
        if record is not None:
            record[1] = now_ns()

    def input_handed(self, frame_id: int, started: int, finished: int) -> None:
        record = self.inputs.get(frame_id)
        if record is not None:
            record[2], record[3] = started, finished

    def output_created(self, frame_id: int, rx: int | None, recv: int | None) -> None:
        self.outputs[frame_id] = [rx, recv, now_ns(), None, None]

    def output_at_transport(self, frame_id: int, audio: bytes, sub_chunk: int) -> None:
        record = self.outputs.get(frame_id)
        if record is None:
            return
        record[3] = t = now_ns()
        self.out_bytes_in += len(audio)
        self.pending.setdefault(bytes(audio[:sub_chunk]), deque()).append((frame_id, t))

    def chunk_sent(self, chunk: bytes) -> None:
        t = now_ns()
        self.pops += 1
        self.audio_pops.append(t)
        self.out_bytes_sent += len(chunk)
        waiting = self.pending.get(chunk)
        if not waiting:
            return
        while waiting and waiting[0][1] < t - STALE_NS:
            waiting.popleft()
            self.dropped_outputs += 1
        if waiting:
            frame_id, _ = waiting.popleft()
            self.outputs[frame_id][4] = t
        if not waiting:
            del self.pending[chunk]

    def track_silence(self, chunk_size: int) -> None:
        if self.out_bytes_in - self.out_bytes_sent >= chunk_size:
            self.underruns.append(now_ns())

    def message_read(self, head: bytes) -> None:
        self.rx.append((head, now_ns()))

    def message_received(self, head: bytes) -> None:
        """recv() returned a message: find when its bytes were read off the socket."""
        self.current_recv, self.current_rx = now_ns(), None
        for i, (seen, t) in enumerate(self.rx):
            if seen == head:
                for _ in range(i + 1):
                    self.rx.popleft()
                self.current_rx = t
                return

    def dump(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "pipeline": self.pipeline,
            "inputs": list(self.inputs.values()),
            "outputs": list(self.outputs.values()),
            "dropped_outputs": self.dropped_outputs,
            "ws_extensions": self.ws_extensions,
            "audio_pops": self.audio_pops,
            "underruns": self.underruns,
            "never_sent_outputs": sum(len(q) for q in self.pending.values()),
        }


class TimedDeque(deque[Any]):
    """The output track's queue of 10 ms chunks; tells when aiortc takes each one."""

    on_pop: Callable[[bytes], None]

    def popleft(self) -> Any:
        item = super().popleft()
        self.on_pop(item[0])
        return item


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # the orchestrator never reads half a file


async def _lag_probe() -> None:
    """How late a 20 ms sleep wakes, and whether the loop's thread was busy meanwhile (our
    code blocking it) or not running (the machine's other processes had the CPU)."""
    while True:
        start, cpu = now_ns(), time.thread_time_ns()
        await asyncio.sleep(LAG_PROBE_S)
        late = now_ns() - start - int(LAG_PROBE_S * 1e9)
        LAG_SAMPLES.append((start, late, time.thread_time_ns() - cpu))


def _gc_timer() -> Callable[[str, dict[str, int]], None]:
    started = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = now_ns()
        elif started[0]:
            GC_PAUSES.append((started[0], now_ns() - started[0], info["generation"]))

    return on_gc


def install_instrumentation(trace_dir: Path) -> None:
    """Wrap what each session builds; nothing changes for the code under test."""
    from pipecat.frames.frames import (
        Frame,
        InputAudioRawFrame,
        OutputAudioRawFrame,
        TTSAudioRawFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from websockets.frames import DATA_OPCODES

    from worker import session as session_module

    traces: dict[str, SessionTrace] = {}
    probe: list[asyncio.Task[None]] = []

    class Forwarder(FrameProcessor):
        """The bare pipeline's one processor: forwards every frame, echoes the audio."""

        def __init__(self) -> None:
            super().__init__(name="BenchForwarder")
            self.trace: SessionTrace | None = None
            self._buffer = bytearray()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            is_audio = isinstance(frame, InputAudioRawFrame)
            if is_audio and self.trace is not None:
                t = now_ns()
                self.trace.input_handed(frame.id, t, t)
            await self.push_frame(frame, direction)
            if not is_audio or direction != FrameDirection.DOWNSTREAM:
                return
            assert isinstance(frame, InputAudioRawFrame)
            self._buffer += frame.audio
            size = frame.sample_rate * FRAME_MS_OUT // 1000 * 2 * frame.num_channels
            while len(self._buffer) >= size:
                out = OutputAudioRawFrame(
                    audio=bytes(self._buffer[:size]),
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
                del self._buffer[:size]
                if self.trace is not None:
                    self.trace.output_created(out.id, None, None)
                await self.push_frame(out)

    class BareProfile:
        name = "bare"
        audio_in_sample_rate = PIPELINE_RATE
        audio_out_sample_rate = PIPELINE_RATE

        def __init__(self, context: Any) -> None:
            self.context = context
            self.forwarder = Forwarder()

        @staticmethod
        def preload() -> None:
            pass

        async def prepare(self) -> None:
            pass

        def pipeline(self, input: Any, output: Any) -> list[Any]:
            return [input, self.forwarder, output]

        def observers(self) -> list[Any]:
            return []

        async def on_client_connected(self, queue: Any) -> None:
            pass

        async def on_client_lost(self) -> None:
            pass

        async def on_client_back(self) -> None:
            pass

    def attach(trace: SessionTrace, transport: Any, profile: Any) -> None:
        source, sink, client = transport.input(), transport.output(), transport._client

        push_audio_frame = source.push_audio_frame

        async def timed_push_audio_frame(frame: Any) -> None:
            trace.input_arrived(frame.id)
            await push_audio_frame(frame)

        source.push_audio_frame = timed_push_audio_frame

        source_push = source.push_frame

        async def timed_source_push(frame: Any, direction: Any = FrameDirection.DOWNSTREAM) -> None:
            if isinstance(frame, InputAudioRawFrame):
                trace.input_pushed(frame.id)
            await source_push(frame, direction)

        source.push_frame = timed_source_push

        llm = getattr(profile, "_llm", None)
        if isinstance(profile, BareProfile):
            profile.forwarder.trace = trace
        elif llm is not None:
            send_user_audio = llm._send_user_audio

            async def timed_send_user_audio(frame: Any) -> None:
                started = now_ns()
                await send_user_audio(frame)
                trace.input_handed(frame.id, started, now_ns())

            llm._send_user_audio = timed_send_user_audio

            connect = llm._connect

            async def timed_connect() -> None:
                await connect()
                ws = llm._websocket
                if ws is None:
                    return
                trace.ws_extensions = [e.name for e in ws.protocol.extensions]
                process_event = ws.process_event

                def timed_process_event(event: Any) -> None:
                    if event.opcode in DATA_OPCODES and event.fin:
                        trace.message_read(bytes(event.data[:64]))
                    process_event(event)

                ws.process_event = timed_process_event
                recv = ws.recv

                async def timed_recv(decode: bool | None = None) -> Any:
                    message = await recv(decode)
                    head = message[:64]  # str: the first 64 bytes of its UTF-8 are the same
                    trace.message_received(head.encode()[:64] if isinstance(head, str) else head)
                    return message

                ws.recv = timed_recv

            llm._connect = timed_connect

            llm_push = llm.push_frame

            async def timed_llm_push(
                frame: Any, direction: Any = FrameDirection.DOWNSTREAM
            ) -> None:
                if isinstance(frame, TTSAudioRawFrame):
                    trace.output_created(frame.id, trace.current_rx, trace.current_recv)
                await llm_push(frame, direction)

            llm.push_frame = timed_llm_push

        handle_frame = sink._handle_frame

        async def timed_handle_frame(frame: Any) -> None:
            if isinstance(frame, OutputAudioRawFrame):
                sub_chunk = frame.sample_rate // 100 * 2 * frame.num_channels
                trace.output_at_transport(frame.id, frame.audio, sub_chunk)
            await handle_frame(frame)

        sink._handle_frame = timed_handle_frame

        write_audio_frame = client.write_audio_frame

        async def timed_write_audio_frame(frame: Any) -> bool:
            track = client._audio_output_track
            if track is not None and not isinstance(track._chunk_queue, TimedDeque):
                queue = TimedDeque(track._chunk_queue)
                queue.on_pop = trace.chunk_sent
                track._chunk_queue = queue
                recv = track.recv

                async def counted_recv() -> Any:
                    pops = trace.pops
                    frame = await recv()
                    if trace.pops == pops:  # made-up silence
                        trace.track_silence(sink.audio_chunk_size)
                    return frame

                track.recv = counted_recv
            return bool(await write_audio_frame(frame))

        client.write_audio_frame = timed_write_audio_frame

    build_profile = session_module.build_profile

    def bench_build_profile(context: Any) -> Any:
        if context.meta.get("profile") == BARE_STANDIN:
            return BareProfile(context)
        return build_profile(context)

    session_module.build_profile = bench_build_profile  # type: ignore[assignment]

    runner_cls: Any = session_module.SessionRunner
    build_pipeline = runner_cls._build_pipeline
    run_pipeline = runner_cls._run_pipeline

    def traced_build_pipeline(self: Any) -> Any:
        built: list[Any] = []
        build_transport = self.transport.build

        def capture(params: Any, presence: Any = None) -> Any:
            if os.environ.get(OUT_CHUNKS_ENV):  # experiment: --out-10ms-chunks
                params.audio_out_10ms_chunks = int(os.environ[OUT_CHUNKS_ENV])
            built.append(build_transport(params, presence))
            return built[-1]

        self.transport.build = capture
        try:
            pipeline_worker = build_pipeline(self)
        finally:
            del self.transport.build
        kind = "bare" if isinstance(self.profile, BareProfile) else self.profile.name
        trace = traces[self.id] = SessionTrace(self.id, kind)
        attach(trace, built[0], self.profile)
        if not probe:
            probe.append(asyncio.get_running_loop().create_task(_lag_probe()))
            gc.callbacks.append(_gc_timer())
        return pipeline_worker

    async def traced_run_pipeline(self: Any) -> None:
        try:
            await run_pipeline(self)
        finally:
            trace = traces.pop(self.id, None)
            if trace is not None:
                _write_json(trace_dir / "loop.json", {"lag": LAG_SAMPLES, "gc": GC_PAUSES})
                _write_json(trace_dir / f"{self.id}.json", trace.dump())

    runner_cls._build_pipeline = traced_build_pipeline
    runner_cls._run_pipeline = traced_run_pipeline

    if os.environ.get(NO_WS_COMPRESSION_ENV):
        # Experiment (--no-ws-compression): the Realtime socket without permessage-deflate.
        from pipecat.services.openai.realtime import llm as realtime_llm

        realtime_llm.websocket_connect = functools.partial(  # type: ignore[assignment]
            realtime_llm.websocket_connect, compression=None
        )


def worker_main(argv: list[str]) -> None:
    """``assistant_latency.py _instrumented_worker worker --capacity N``: the real worker."""
    install_instrumentation(Path(os.environ[TRACE_DIR_ENV]))
    from voicepool.cli import main as cli_main

    cli_main(argv)


# --- statistics ----------------------------------------------------------------------------


def summary(values_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds, from nanoseconds."""
    if not values_ns:
        return {"n": 0}
    ms = [v / 1e6 for v in values_ns]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(sum(ms) / len(ms), 3),
    }


# --- orchestration -------------------------------------------------------------------------


def client_audio(path: Path, speech_s: float, gap_s: float) -> None:
    """The caller: a quiet gap (the model answers in it), then a loud tone the model's energy
    VAD hears as an utterance; played in a loop. Never digital silence."""
    rng = np.random.default_rng(7)
    quiet = rng.normal(0, 30, int(gap_s * CLIENT_RATE))
    t = np.arange(int(speech_s * CLIENT_RATE)) / CLIENT_RATE
    tone = 6000 * np.sin(2 * np.pi * 220 * t) + 2000 * np.sin(2 * np.pi * 660 * t)
    tone += rng.normal(0, 300, len(t))
    samples = np.clip(np.concatenate([quiet, tone]), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(CLIENT_RATE)
        wav.writeframes(samples.tobytes())


def answer_text(gap_s: float) -> str:
    """The fake's answer, long enough to fill most of the caller's quiet gap (it starts 0.5 s
    after the tone and must end before the next one, or the tone would barge in)."""
    chars = max(10, int((gap_s - 1.5) * 1000 / MS_PER_CHAR))
    return (ANSWER_SENTENCE * (chars // len(ANSWER_SENTENCE) + 1))[:chars].strip()


def log_summary(path: Path) -> dict[str, Any]:
    """Warnings and errors the worker logged during the run (they would skew it)."""
    counts: dict[str, int] = {}
    messages: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        level = next((x for x in ("CRITICAL", "ERROR", "WARNING") if x in line), None)
        if level is None:
            continue
        counts[level] = counts.get(level, 0) + 1
        text = re.sub(r"\d+", "N", line.split(level, 1)[1])[:160].strip(" |:-")
        messages[text] = messages.get(text, 0) + 1
    top = sorted(messages.items(), key=lambda x: -x[1])[:8]
    return {"counts": counts, "top": [{"n": n, "message": m} for m, n in top]}


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return f"--- {path.name} ---\n" + "\n".join(
        path.read_text(errors="replace").splitlines()[-lines:]
    )


def start_fake(answer: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    """The fake model, standalone in its own process; returns it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.doubles.openai_realtime", "--port", "0", "--pace", "1",
         "--answer", answer],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SESSION_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if "listening on ws://" not in line:
        stop_process(proc)
        raise RuntimeError(f"the fake model did not start: {line!r}\n{tail(log)}")
    return proc, line.split()[-1]


def start_system(
    tmp: Path, settings: dict[str, str], capacity: int, worker_env: dict[str, str]
) -> System:
    """Redis and the API as harness/system.py starts them; the worker through this file."""
    from harness.system import System

    system = System(tmp, settings=settings)
    try:
        system.start(workers=0)  # Redis and the API
        log = tmp / "worker.log"
        system.workers.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), WORKER_SHIM, "worker",
                 "--capacity", str(capacity)],
                env=system.env | worker_env,
                cwd=ROOT,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        system.wait_ready(1)
    except BaseException:
        system.stop()
        raise
    return system


@dataclass
class Phase:
    pipeline: str  # "assistant" or "bare"
    sessions: int
    window: tuple[int, int] = (0, 0)  # monotonic ns
    cpu: dict[str, float] = field(default_factory=dict)  # seconds over the window
    session_ids: list[str] = field(default_factory=list)
    client_received_s: list[float] = field(default_factory=list)
    worker_rss_mb: float = 0.0


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for name, proc in procs.items():
        with contextlib.suppress(psutil.Error):
            out[name] = measure.cpu_seconds(proc)
    machine = psutil.cpu_times()
    out["machine_total"] = sum(machine)
    out["machine_idle"] = machine.idle + getattr(machine, "iowait", 0.0)
    out["machine_steal"] = getattr(machine, "steal", 0.0)
    return out


async def open_session(
    api: httpx.AsyncClient, profile: str, wav: Path, opened: list[tuple[str, WebRTCTestClient]]
) -> None:
    from harness.webrtc_client import WebRTCTestClient

    response = await api.post("/api/sessions", json={"transport": "webrtc", "profile": profile})
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/sessions: {response.status_code} {response.text}")
    session_id = response.json()["session_id"]
    client = WebRTCTestClient(str(wav), loop_audio=True)
    opened.append((session_id, client))

    async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
        reply = await api.post(f"/api/sessions/{session_id}/offer", json=offer)
        if reply.status_code != 200:
            raise RuntimeError(f"offer for {session_id}: {reply.status_code} {reply.text}")
        return dict(reply.json())

    await client.connect(send_offer)
    await client.wait_connected(timeout=SESSION_TIMEOUT_S)


async def close_session(api: httpx.AsyncClient, session_id: str, client: WebRTCTestClient) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await api.delete(f"/api/sessions/{session_id}")
    await client.close()


async def run_phase(
    api: httpx.AsyncClient,
    phase: Phase,
    args: argparse.Namespace,
    wav: Path,
    procs: dict[str, psutil.Process],
    on_window: Callable[[], None] | None = None,
) -> None:
    """N sessions streaming real-time audio; measure over a window once all of them flow."""
    profile = "assistant" if phase.pipeline == "assistant" else BARE_STANDIN
    opened: list[tuple[str, WebRTCTestClient]] = []
    try:
        async with asyncio.timeout(SESSION_TIMEOUT_S * 2):
            async with asyncio.TaskGroup() as group:
                for _ in range(phase.sessions):
                    group.create_task(open_session(api, profile, wav, opened))
        await asyncio.sleep(args.warmup)
        before, start = cpu_seconds(procs), now_ns()
        if on_window is not None:
            on_window()
        await asyncio.sleep(args.duration)
        after, end = cpu_seconds(procs), now_ns()
        phase.window = (start, end)
        phase.cpu = {k: round(after[k] - before[k], 3) for k in after if k in before}
        phase.client_received_s = [round(c.received_seconds(), 2) for _, c in opened]
        with contextlib.suppress(Exception):
            phase.worker_rss_mb = round(procs["worker"].memory_info().rss / 2**20, 1)
        await asyncio.sleep(args.drain)  # audio from the window still on its way out
    finally:
        phase.session_ids = [sid for sid, _ in opened]
        await asyncio.gather(*(close_session(api, sid, c) for sid, c in opened))


async def wait_for_traces(trace_dir: Path, session_ids: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TRACE_TIMEOUT_S
    paths = [trace_dir / f"{sid}.json" for sid in session_ids]
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [p.stem for p in paths if not p.exists()]
            raise RuntimeError(f"the worker wrote no trace for sessions {missing}")
        await asyncio.sleep(0.1)
    return [json.loads(p.read_text()) for p in paths]


def _start_spy(pid: int, seconds: float, out: Path, into: list[subprocess.Popen[bytes]]) -> None:
    if (spy := profiling.start(pid, seconds, out)) is not None:
        into.append(spy)


async def run_all(
    args: argparse.Namespace,
    api_url: str,
    token: str,
    wav: Path,
    trace_dir: Path,
    procs: dict[str, psutil.Process],
    tmp: Path,
) -> tuple[list[Phase], list[list[dict[str, Any]]], dict[str, float], Path | None]:
    from harness.webrtc_client import allow_loopback_ice

    allow_loopback_ice()
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=max(args.sessions) * 2 + 4)
    phases: list[Phase] = []
    traces: list[list[dict[str, Any]]] = []
    profile_out: Path | None = None
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, limits=limits, timeout=SESSION_TIMEOUT_S
    ) as api:
        # Warm-up, unmeasured: first imports, first peer, first model connection.
        for pipeline in ("bare", "assistant"):
            warm = Phase(pipeline, 1)
            warm_args = argparse.Namespace(warmup=1.0, duration=args.warmup, drain=0.0)
            await run_phase(api, warm, warm_args, wav, procs)
            await wait_for_traces(trace_dir, warm.session_ids)
        await asyncio.sleep(1.0)
        print(f"idle worker: {args.idle:.0f} s", flush=True)
        before, start = cpu_seconds(procs), time.monotonic()
        await asyncio.sleep(args.idle)
        after, elapsed = cpu_seconds(procs), time.monotonic() - start
        idle = {
            "worker_cpu_s_per_s": round((after["worker"] - before["worker"]) / elapsed, 4),
            "seconds": round(elapsed, 2),
        }

        last = len(args.sessions) - 1
        for index, n in enumerate(args.sessions):
            for pipeline in ("bare", "assistant"):
                phase = Phase(pipeline, n)
                spy: list[subprocess.Popen[bytes]] = []
                on_window = None
                if args.py_spy and index == last and pipeline == "assistant":
                    profile_out = tmp / "py-spy.txt"
                    pid = procs["worker"].pid
                    on_window = functools.partial(_start_spy, pid, args.duration, profile_out, spy)
                print(f"{pipeline}: {n} session(s), {args.duration:.0f} s", flush=True)
                try:
                    await run_phase(api, phase, args, wav, procs, on_window)
                finally:
                    for proc in spy:
                        try:
                            await asyncio.to_thread(proc.wait, 30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
                phases.append(phase)
                traces.append(await wait_for_traces(trace_dir, phase.session_ids))
                await asyncio.sleep(1.0)  # let the sessions' ends settle before the next
    return phases, traces, idle, profile_out


# --- analysis ------------------------------------------------------------------------------


def _span(a: int | None, b: int | None) -> int | None:
    return b - a if a is not None and b is not None else None


def analyse(
    phase: Phase, traces: list[dict[str, Any]], loop: dict[str, Any], idle_rate: float
) -> dict[str, Any]:
    start, end = phase.window
    window_s = (end - start) / 1e9
    assistant = phase.pipeline == "assistant"

    a_total: list[int] = []
    a_parts: dict[str, list[int]] = {
        "transport input: its audio queue and task": [],
        "pipeline hops to the service" if assistant else "pipeline hop to the forwarder": [],
    }
    if assistant:
        a_parts["service: base64 + JSON + WebSocket send"] = []
    a_lost = 0
    b_total: list[int] = []
    b_proc: list[int] = []
    b_parts: dict[str, list[int]] = {}
    if assistant:
        b_parts["socket read → recv() returns (WebSocket queue)"] = []
        b_parts["recv() → audio frame pushed (parse, base64, frame)"] = []
    b_parts["pushed → output transport handles it (pipeline hop)"] = []
    b_parts["output transport → first 10 ms to aiortc (chunking, real-time playout)"] = []
    b_lost = b_no_rx = 0
    b_first: list[int] = []  # first delta of each response: nothing queued ahead of it
    for trace in traces:
        previous = None
        for b0, _b1, b2, _b3, b4 in sorted(
            (o for o in trace["outputs"] if o[0] is not None), key=lambda o: o[0]
        ):
            first = previous is None or b0 - previous > 10 * FRAME_MS_OUT * 1_000_000
            previous = b0
            if assistant and first and b4 is not None and start <= b2 < end:
                b_first.append(b4 - b0)
        for a0, a1, a2s, a2e in trace["inputs"]:
            if not start <= a0 < end:
                continue
            if a2e is None:
                a_lost += 1
                continue
            a_total.append(a2e - a0)
            values = [_span(a0, a1), _span(a1, a2s), _span(a2s, a2e)]
            for key, value in zip(a_parts, values, strict=False):
                if value is not None:
                    a_parts[key].append(value)
        for b0, b1, b2, b3, b4 in trace["outputs"]:
            if b2 is None or not start <= b2 < end:
                continue
            origin = b0 if assistant else b2
            if origin is None:
                b_no_rx += 1
                continue
            if b3 is not None:
                b_proc.append(b3 - origin)
            if b4 is None:
                b_lost += 1
                continue
            b_total.append(b4 - origin)
            values = ([_span(b0, b1), _span(b1, b2)] if assistant else []) + [
                _span(b2, b3),
                _span(b3, b4),
            ]
            for key, value in zip(b_parts, values, strict=False):
                if value is not None:
                    b_parts[key].append(value)

    cpu = phase.cpu
    session_minutes = phase.sessions * window_s / 60
    worker_cpu = cpu.get("worker", math.nan)
    machine_busy = 1 - cpu["machine_idle"] / cpu["machine_total"] if cpu["machine_total"] else 0
    return {
        "pipeline": phase.pipeline,
        "sessions": phase.sessions,
        "window_s": round(window_s, 2),
        "a_in_to_model": summary(a_total),
        "a_parts": {k: summary(v) for k, v in a_parts.items()},
        "b_model_to_client": summary(b_total),
        "b_to_output_transport": summary(b_proc),
        "b_parts": {k: summary(v) for k, v in b_parts.items()},
        "b_first_delta_of_response_to_client": summary(b_first),
        "frames": {
            "in_measured": len(a_total),
            "in_per_session_s": round(len(a_total) / max(phase.sessions * window_s, 1e-9), 1),
            "in_not_sent": a_lost,
            "out_measured": len(b_total),
            "out_per_session_s": round(len(b_total) / max(phase.sessions * window_s, 1e-9), 1),
            "out_not_sent": b_lost,
            "out_without_socket_time": b_no_rx,
            "out_dropped_total": sum(t["dropped_outputs"] for t in traces),
        },
        "cpu": {
            "worker_s": worker_cpu,
            "worker_s_per_session_min": round(worker_cpu / session_minutes, 3),
            "worker_s_per_session_min_net_of_idle": round(
                (worker_cpu - idle_rate * window_s) / session_minutes, 3
            ),
            "worker_cores": round(worker_cpu / window_s, 3),
            "fake_model_cores": round(cpu.get("fake_model", math.nan) / window_s, 3),
            "clients_cores": round(cpu.get("clients", math.nan) / window_s, 3),
            "api_cores": round(cpu.get("api", math.nan) / window_s, 3),
            "redis_cores": round(cpu.get("redis", math.nan) / window_s, 3),
            "machine_busy": round(machine_busy, 3),
            "machine_steal_cores": round(cpu.get("machine_steal", 0.0) / window_s, 3),
        },
        "worker_rss_mb": phase.worker_rss_mb,
        "event_loop_lag": summary([late for t, late, _ in loop["lag"] if start <= t < end]),
        "event_loop_stalls": _stalls(loop["lag"], start, end),
        "gc_pauses": _gc(loop["gc"], start, end),
        "output_underruns": _underruns(traces, start, end),
        "client_received_audio_s": phase.client_received_s,
    }


def _stalls(lag: list[list[int]], start: int, end: int) -> dict[str, Any]:
    """Loop wake-ups later than STALL_NS; 'busy' when the loop's thread ran most of the time
    (our code held it), else it waited for a CPU."""
    stalls = [(late, cpu) for t, late, cpu in lag if start <= t < end and late > STALL_NS]
    interval = int(LAG_PROBE_S * 1e9)
    busy = [late for late, cpu in stalls if cpu >= 0.8 * (interval + late)]
    return {
        "over_ms": STALL_NS / 1e6,
        "count": len(stalls),
        "busy": len(busy),
        "max_ms": round(max((late for late, _ in stalls), default=0) / 1e6, 1),
        "max_busy_ms": round(max(busy, default=0) / 1e6, 1),
    }


def _underruns(traces: list[dict[str, Any]], start: int, end: int) -> dict[str, Any]:
    """10 ms of silence the output track sent while a whole chunk of audio was waiting in
    the output transport: a gap in the bot's speech, and that much more latency after it."""
    audio = sum(1 for t in traces for x in t["audio_pops"] if start <= x < end)
    gaps = sum(1 for t in traces for x in t["underruns"] if start <= x < end)
    return {
        "audio_10ms": audio,
        "silence_10ms": gaps,
        "silence_ms_per_s_of_audio": round(1000 * gaps / audio, 1) if audio else 0.0,
    }


def _gc(pauses: list[list[int]], start: int, end: int) -> dict[str, Any]:
    seen = [(d, g) for t, d, g in pauses if start <= t < end]
    return {
        "count": len(seen),
        "total_ms": round(sum(d for d, _ in seen) / 1e6, 1),
        "max_ms": round(max((d for d, _ in seen), default=0) / 1e6, 2),
        "gen2": sum(1 for _, g in seen if g == 2),
    }


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session count: what the assistant adds over the bare pipeline."""
    out = []
    by_key = {(r["pipeline"], r["sessions"]): r for r in rows}
    for n in sorted({r["sessions"] for r in rows}):
        bare, asst = by_key.get(("bare", n)), by_key.get(("assistant", n))
        if bare is None or asst is None:
            continue
        row: dict[str, Any] = {"sessions": n}
        for key in ("a_in_to_model", "b_model_to_client", "b_to_output_transport"):
            for q in ("p50", "p99"):
                added = asst[key].get(q, math.nan) - bare[key].get(q, math.nan)
                row[f"{key}_{q}_added_ms"] = round(added, 2)
                row[f"{key}_{q}_ratio"] = _ratio(asst[key].get(q), bare[key].get(q))
        net = "worker_s_per_session_min_net_of_idle"
        row["cpu_ratio"] = _ratio(asst["cpu"][net], bare["cpu"][net])
        row["cpu_added_s_per_session_min"] = round(asst["cpu"][net] - bare["cpu"][net], 3)
        out.append(row)
    return out


def _ratio(a: float | None, b: float | None) -> float:
    return round(a / b, 1) if a is not None and b else math.nan


# --- report --------------------------------------------------------------------------------


def _pq(s: dict[str, float]) -> str:
    return f"{s['p50']:.2f} / {s['p99']:.2f}" if s.get("n") else "n/a"


def markdown(result: dict[str, Any]) -> str:
    m, rows = result["machine"], result["phases"]
    lines = [
        "# Assistant pipeline: added latency and CPU vs. a bare pass-through pipeline",
        "",
        f"{result['date']} · {m['nproc']} CPUs ({m['cpu_model']}) · Python {m['python']} · "
        f"pipecat-ai {m['pipecat']} · aiortc {m['aiortc']} · commit {m['commit']} · "
        f"load average at start {', '.join(str(x) for x in m['loadavg_at_start'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        "Latency, ms, p50 / p99 over every audio frame of every session in the measured "
        "window (timestamps inside the worker process; the fake model runs in its own "
        "process, real-time paced).",
        "",
        "| sessions | pipeline | frames a / b (b not sent) | (a) caller → model | (b) model "
        "→ output transport | (b) model → aiortc, incl. playout queue | (b) first delta of a "
        "reply → aiortc |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = r["frames"]
        lines.append(
            f"| {r['sessions']} | {r['pipeline']} | {f['in_measured']} / {f['out_measured']} "
            f"({f['out_not_sent']}) | "
            f"{_pq(r['a_in_to_model'])} | {_pq(r['b_to_output_transport'])} | "
            f"{_pq(r['b_model_to_client'])} | "
            f"{_pq(r['b_first_delta_of_response_to_client'])} |"
        )
    lines += [
        "",
        "**What the assistant pipeline adds over the bare pipeline** (same run, same worker):",
        "",
        "| sessions | (a) p50 ms | (a) p99 ms | (b) p50 ms | (b) p99 ms | worker CPU per "
        "session-min |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["comparison"]:
        lines.append(
            f"| {row['sessions']} | {row['a_in_to_model_p50_added_ms']:+.2f} | "
            f"{row['a_in_to_model_p99_added_ms']:+.2f} | "
            f"{row['b_to_output_transport_p50_added_ms']:+.2f} | "
            f"{row['b_to_output_transport_p99_added_ms']:+.2f} | "
            f"{row['cpu_added_s_per_session_min']:+.2f} s ({row['cpu_ratio']}x bare) |"
        )
    lines += [
        "",
        "(b) here is model → output transport. The totals to aiortc are not compared: past the "
        "output transport both pipelines run the same code, and the depth of the real-time "
        "playout queue is set by how audio arrives (the bare echo streams without pause and "
        "keeps whatever backlog it started with; the model's replies start on an empty queue).",
        "",
        f"Worker CPU (user+system, all threads), per session-minute gross / net of the "
        f"worker's idle rate ({result['idle']['worker_cpu_s_per_s']:.3f} CPU-s/s), and its "
        "event loop:",
        "",
        "| sessions | pipeline | CPU s per session-min | worker cores | RSS MB | machine busy "
        "| loop lag p50 / p99 ms | stalls > 20 ms: own code / waiting for a CPU (max ms) "
        "| GC pauses: n, total ms (max) | output gaps, ms per s of audio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c, st, g = r["cpu"], r["event_loop_stalls"], r["gc_pauses"]
        lines.append(
            f"| {r['sessions']} | {r['pipeline']} | {c['worker_s_per_session_min']:.2f} / "
            f"{c['worker_s_per_session_min_net_of_idle']:.2f} | {c['worker_cores']:.2f} | "
            f"{r['worker_rss_mb']:.0f} | {c['machine_busy']:.0%} | "
            f"{_pq(r['event_loop_lag'])} | {st['busy']} / {st['count'] - st['busy']} "
            f"({st['max_ms']:.0f}) | {g['count']}, {g['total_ms']:.0f} ({g['max_ms']:.1f}) | "
            f"{r['output_underruns']['silence_ms_per_s_of_audio']:.0f} |"
        )
    lines += ["", "Where the time goes (ms, p50 / p99):", ""]
    lines += ["| sessions | pipeline | dir | span | p50 / p99 |", "|---:|---|---|---|---:|"]
    for r in rows:
        for direction, parts in (("a", r["a_parts"]), ("b", r["b_parts"])):
            for name, s in parts.items():
                lines.append(
                    f"| {r['sessions']} | {r['pipeline']} | {direction} | {name} | {_pq(s)} |"
                )
    lines += [
        "",
        "Other processes on the machine, cores used over the window:",
        "",
        "| sessions | pipeline | fake model | clients (aiortc) | API | Redis | steal |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["cpu"]
        lines.append(
            f"| {r['sessions']} | {r['pipeline']} | {c['fake_model_cores']:.2f} | "
            f"{c['clients_cores']:.2f} | {c['api_cores']:.2f} | {c['redis_cores']:.2f} | "
            f"{c['machine_steal_cores']:.2f} |"
        )
    spy = result.get("py_spy")
    if spy:
        lines += [
            "",
            f"py-spy, worker process, last assistant phase: shares of the "
            f"{spy['working_samples']} samples (100 Hz, all threads) where a thread was working "
            f"({spy['waiting_samples']} waiting samples left out); that phase's numbers are "
            "perturbed by the sampling:",
            "",
            "| self time | function |",
            "|---:|---|",
        ]
        lines += [f"| {x['share']:.1%} | `{x['function']}` |" for x in spy["self_time"]]
        lines += ["", "| inclusive | function |", "|---:|---|"]
        lines += [f"| {x['share']:.1%} | `{x['function']}` |" for x in spy["inclusive_all"]]
        lines += ["", "| inclusive | function (our code) |", "|---:|---|"]
        lines += [f"| {x['share']:.1%} | `{x['function']}` |" for x in spy["inclusive_ours"]]
    log = result["worker_log"]
    extensions = ", ".join(result["model_ws_extensions"]) or "no extensions"
    logged = ", ".join(f"{n} {level}" for level, n in log["counts"].items()) or "no warnings"
    lines += [
        "",
        f"The model's WebSocket negotiated: {extensions}. Worker log during the run: {logged}.",
    ]
    lines += [f"  - {x['n']}x: {x['message']}" for x in log["top"]]
    lines += ["", *[f"- {note}" for note in result["notes"]], ""]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 8],
        help="concurrent session counts, comma-separated (default 1,4,8)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured s per phase")
    parser.add_argument("--warmup", type=float, default=4.0, help="s after connecting, unmeasured")
    parser.add_argument("--idle", type=float, default=3.0, help="s of idle worker CPU to subtract")
    parser.add_argument("--speech", type=float, default=0.8, help="s of the caller's utterance")
    parser.add_argument("--gap", type=float, default=6.0, help="s of quiet between utterances")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile the worker with py-spy during the last assistant phase (perturbs it)",
    )
    parser.add_argument(
        "--no-ws-compression",
        action="store_true",
        help="experiment: open the model's WebSocket without permessage-deflate",
    )
    parser.add_argument(
        "--out-10ms-chunks",
        type=int,
        default=0,
        help="experiment: the output transport's chunk size in 10 ms units (Pipecat: 4)",
    )
    parser.add_argument(
        "--drain", type=float, default=2.0, help="s the sessions run on after the window"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import psutil

    args = parse_args(argv)
    facts = machine_facts()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind like Ctrl-C

    with tempfile.TemporaryDirectory(prefix="vp-bench-rt-") as tmp_dir:
        tmp = Path(tmp_dir)
        trace_dir = tmp / "traces"
        trace_dir.mkdir()
        wav = tmp / "caller.wav"
        client_audio(wav, args.speech, args.gap)
        answer = answer_text(args.gap)
        fake, fake_url = start_fake(answer, tmp / "fake.log")
        system: System | None = None
        try:
            settings = {
                "OPENAI_API_KEY": API_KEY,
                "VOICEPOOL_OPENAI_BASE_URL": fake_url,
                "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
                "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
            }
            print(f"fake model at {fake_url}; starting Redis, the API and a worker", flush=True)
            worker_env = {TRACE_DIR_ENV: str(trace_dir)}
            if args.no_ws_compression:
                worker_env[NO_WS_COMPRESSION_ENV] = "1"
            if args.out_10ms_chunks:
                worker_env[OUT_CHUNKS_ENV] = str(args.out_10ms_chunks)
            system = start_system(tmp / "system", settings, max(args.sessions), worker_env)
            token = system.create_user("bench")
            procs = {
                "worker": psutil.Process(system.workers[0].pid),
                "fake_model": psutil.Process(fake.pid),
                "clients": psutil.Process(),
            }
            if system.api is not None:
                procs["api"] = psutil.Process(system.api.pid)
            if system.redis_server is not None and system.redis_server.process is not None:
                procs["redis"] = psutil.Process(system.redis_server.process.pid)
            phases, traces, idle, spy_out = asyncio.run(
                run_all(args, system.api_url, token, wav, trace_dir, procs, tmp)
            )
            loop = json.loads((trace_dir / "loop.json").read_text())
            worker_log = log_summary(tmp / "system" / "worker.log")
            extensions = sorted(
                {e for ts in traces for t in ts if t["pipeline"] == "assistant" for e in
                 t["ws_extensions"]}
            )  # fmt: skip
            spy = None
            if spy_out is not None and spy_out.exists():
                spy = profiling.summarize(spy_out)
                args.out.mkdir(parents=True, exist_ok=True)
                shutil.copy(spy_out, args.out / "assistant_latency.py-spy.txt")
        except Exception:
            logs = [tail(tmp / "fake.log"), tail(tmp / "system" / "worker.log", 60)]
            if system is not None:
                logs.append(system.log_tail())
            print("the benchmark failed; logs:\n" + "\n".join(logs), file=sys.stderr)
            raise
        finally:
            if system is not None:
                system.stop()
            stop_process(fake)

    rows = [
        analyse(p, t, loop, idle["worker_cpu_s_per_s"]) for p, t in zip(phases, traces, strict=True)
    ]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "fake_model": {"url": "ws://127.0.0.1:<port>/v1/realtime", "pace": 1, "answer": answer},
        "idle": idle,
        "model_ws_extensions": extensions,
        "worker_log": worker_log,
        "phases": rows,
        "comparison": compare(rows),
        "notes": [
            "(a): InputAudioRawFrame enters the worker's transport input (after aiortc's "
            "jitter buffer, Opus decode and the 48→24 kHz resample, the same for both "
            "pipelines) → its input_audio_buffer.append written to the model's socket; "
            "bare: → the forwarder receives it.",
            "(b): the model's audio delta read off the socket by the worker's event loop → "
            "the first 10 ms of that audio taken by aiortc from the output track to be "
            "encoded and sent; bare: from the forwarder pushing its 60 ms frame. Both "
            "include the output's real-time playout queue (audio ahead of the frame), which "
            "is pacing, not processing; '(b) model → transport out' stops before it. Output "
            "audio not taken by aiortc within 5 s, or by the end of the session (which runs "
            f"{args.drain:.0f} s past the window), is counted as not sent and left out of the "
            "percentiles: where that count is high, the real tail is longer.",
            "Time a message waits in the kernel before the event loop reads it is not in (b); "
            "the loop lag (how late a 20 ms sleep in the worker wakes) shows how large it can "
            "be. A stall counts as 'own code' when the loop's thread used >= 80% of a CPU "
            "meanwhile (something in the worker held the loop), else as 'waiting for a CPU'. "
            "GC pauses are timed with gc.callbacks in the worker. Output gaps: 10 ms frames of "
            "silence the WebRTC output track sent while at least one whole output chunk "
            "(40 ms) was waiting in the output transport, per second of audio it sent.",
            f"Caller: {args.speech} s tone every {args.speech + args.gap:.1f} s, low noise "
            f"between; the fake answers each utterance with {len(answer)} characters "
            f"({len(answer) * MS_PER_CHAR / 1000:.1f} s of audio, 60 ms deltas, real time), "
            "and greets at the start.",
            f"Phases ran bare then assistant at each session count, {args.duration:.0f} s "
            f"measured after {args.warmup:.0f} s of warm-up each, after one unmeasured "
            "session of each kind; one worker process served all of them.",
            "The bare pipeline is a benchmark-only profile the instrumented worker uses for "
            f"sessions created with profile {BARE_STANDIN!r}; it has no observers of its own "
            "(the assistant has ServiceMetricsObserver and UserBotLatencyObserver); both have "
            "the session's SessionEvents tap.",
            f"Total run time {time.monotonic() - started:.0f} s.",
        ],
    }
    if args.out_10ms_chunks:
        result["notes"].insert(
            0,
            f"EXPERIMENT (--out-10ms-chunks {args.out_10ms_chunks}): the worker's output "
            "transport used that chunk size instead of Pipecat's default 4; production "
            "code does not.",
        )
    if args.no_ws_compression:
        result["notes"].insert(
            0,
            "EXPERIMENT (--no-ws-compression): the worker opened the model's WebSocket without "
            "permessage-deflate; production code does not.",
        )
    if spy is not None:
        result["py_spy"] = spy
    write_results(args.out, "assistant_latency", result, markdown)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_SHIM:
        worker_main(sys.argv[2:])
    else:
        try:
            main()
        except KeyboardInterrupt:  # every process was stopped on the way out
            print("interrupted", file=sys.stderr)
            sys.exit(130)
