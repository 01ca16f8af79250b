"""Density: how many ``assistant`` sessions one worker process carries before it adds latency.

One invocation, everything as real processes on this machine:

* the fake Realtime model (harness/doubles/openai_realtime.py, ``pace=1``) in its own process,
  started through this file (``density.py fake``): a thin subclass records, per marked audio
  frame, when its ``input_audio_buffer.append`` arrived and when each of its own
  ``response.output_audio.delta`` events was sent;
* embedded Redis and the API as harness/system.py starts them, and the workers with
  the ordinary ``voicepool worker`` command (nothing in worker/ is changed or wrapped);
* the clients, in this process: one WebSocket per session speaking Pipecat's protobuf frames
  (as tests/integration/test_transports.py does), streaming 24 kHz PCM in 20 ms frames in
  real time, looping a tone burst then silence, so the model hears a turn and answers. The
  tone alternates between 300 and 700 Hz, turn by turn, and the fake answers each turn
  with a tone at the pitch it heard (density_webrtc.py tells answers apart by it; here the
  markers do).

Latency is measured from the outside, on one clock (CLOCK_MONOTONIC is system-wide):

(a) caller → model: the client stamps a marker (8 magic bytes + a 32-bit sequence number)
    into the first samples of each 20 ms frame and notes when it wrote the frame to its
    socket; the fake notes when the ``input_audio_buffer.append`` carrying that marker
    arrived (after its JSON parse).
(b) model → caller: the fake stamps a marker into the first samples of each 60 ms audio
    delta it sends; the client notes when an audio frame containing that marker arrived.
    This includes Pipecat's output transport re-chunking the audio and pacing it in real
    time (the playout a WebSocket transport simulates), so it is compared with N=1.

"Added" = p99 at N minus p99 at N=1 of the same path (raw numbers side by side). N rises
until the added p99 of either direction exceeds the budget (20 ms) or the list ends.
Besides latency: worker CPU (user+system over the measured window) per session, RSS per
additional session (least-squares slope of worker RSS vs N), and a py-spy profile of the
worker at the largest N.

Baseline: the same N as N plain Pipecat bot processes, one session each: Pipecat's
development runner serving ops/bench/runner_bots/assistant_bot.py (the assistant pipeline
from Pipecat's own parts, no voicepool code in the process; its docstring lists what a
voicepool session adds), each asked for its session with ``POST /start`` and connected to by
the same client, same metrics (CPU and RSS summed over the N processes). The API and Redis
stay up, idle, meanwhile (their columns show it).

The clients, the fake model, Redis and the API share the machine's cores with the worker,
so at high N some of what is measured is contention, not the worker's own code: the CPU
of every process is reported to show it.

Results go to ops/bench/results/density.{json,md} (``--out DIR``: DIR/density.*); the
Markdown is printed too.

    .venv/bin/python ops/bench/density.py [--sessions 1,2,4,8,12,16,24] [--baseline 1,4,8]
                                          [--duration 15] [--warmup 5] [--budget-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import select
import shlex
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import profiling  # ops/bench/profiling.py
from anchor import Runner  # ops/bench/anchor.py
from measure import (  # ops/bench/measure.py
    bench_process,
    cpu_seconds,
    machine_facts,
    percentile,
    stop_process,
    write_results,
)

from harness.doubles.openai_realtime import CHUNK_MS, SPEECH_RMS

DESCRIPTION = "Density: assistant sessions per worker process before it adds latency."
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ASSISTANT_BOT = HERE / "runner_bots" / "assistant_bot.py"  # the baseline's bot
API_KEY = "sk-bench-not-a-real-key"
RATE = 24000  # what the assistant profile takes and gives: no resampling anywhere
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
# A marker is 9 quiet int16 samples (18 bytes = 24 base64 characters, so it can replace
# the head of a base64 audio delta in place): 5 magic samples, then one sample per byte of
# a 32-bit sequence number. Quiet so that it does not make silence loud to the fake's VAD.
MAGIC_IN = np.array([-3, 5, -7, 11, -13], "<i2").tobytes()
MAGIC_OUT = np.array([-17, 19, -23, 29, -31], "<i2").tobytes()
MAGIC_LEN = len(MAGIC_IN)
MARK_LEN = 18
B64_MARK = 24


def marker(magic: bytes, seq: int) -> bytes:
    return magic + np.frombuffer(struct.pack("<I", seq), np.uint8).astype("<i2").tobytes()


def marker_seq(mark: bytes) -> int:
    seq: int = struct.unpack(
        "<I", np.frombuffer(mark[MAGIC_LEN:MARK_LEN], "<i2").astype(np.uint8).tobytes()
    )[0]
    return seq


TONE_S, SILENCE_S = 1.0, 3.0  # one turn of the caller: speech, then quiet while the bot answers
TURN_S = TONE_S + SILENCE_S
# The caller's tone alternates between these pitches, turn by turn, and the fake answers each
# turn at the pitch it heard: so a client can tell the answer to its last turn from the late
# tail of an earlier answer. Far apart, so that the FFT of one 20 ms frame separates them
# (bins of 50 Hz), through Opus too.
TURN_PITCHES_HZ = (300.0, 700.0)
GREETING_HZ = 1100.0  # the fake's answer before it has heard anything: nobody's turn
PITCH_TOLERANCE_HZ = 150.0
LOOP_S = TURN_S * len(TURN_PITCHES_HZ)  # the caller's loop: one turn at each pitch
ANSWER = "Sure, here is a short spoken answer."  # 36 chars x 60 ms = 2.2 s of audio
ANSWER_S = len(ANSWER) * CHUNK_MS / 1000
SESSION_TIMEOUT_S = 30.0


def tone(hz: float, seconds: float, amplitude: float, phase: float = 0.0) -> np.ndarray:
    """A sine at ``hz`` (int16 at RATE), starting at ``phase`` radians."""
    t = np.arange(round(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t + phase) * 32767).astype("<i2")


def rms(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    return math.sqrt(float(np.mean(x * x))) if len(x) else 0.0


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The frequency of the strongest bin of the samples' spectrum (Hann window, DC left
    out): a pitch to within rate / len(samples) (50 Hz for 20 ms)."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * rate / len(x)


def same_pitch(hz: float, pitch_hz: float) -> bool:
    return abs(hz - pitch_hz) < PITCH_TOLERANCE_HZ


if TYPE_CHECKING:
    import psutil

    from harness.system import System


def now_ns() -> int:
    return time.monotonic_ns()


# --- the fake model, with markers (runs in its own process: `density.py fake`) ----------


def fake_main(argv: list[str]) -> None:
    from harness.doubles import openai_realtime as fake

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--answer", default=ANSWER)
    args = parser.parse_args(argv)
    arrived: dict[int, int] = {}  # input marker seq → monotonic ns at the fake
    sent: dict[int, int] = {}  # output marker seq → monotonic ns just before the send
    out_seq = [0]

    @dataclass
    class PitchedTurn(fake.Turn):
        pitch_hz: float = GREETING_HZ  # of the caller's speech this turn answers

    class MarkedConnection(fake._Connection):
        """Answers each turn with a tone at the pitch of the speech that made the turn (the
        last loud audio before the commit), and stamps an output marker into each delta."""

        heard_hz = GREETING_HZ  # the pitch of the last loud audio appended
        answer_hz = GREETING_HZ  # the pitch of the answer being sent
        phase = 0.0  # of the answer's tone, carried from delta to delta (no clicks)

        async def _append(self, pcm: bytes) -> None:
            samples = np.frombuffer(pcm, "<i2")
            if rms(samples) > SPEECH_RMS:  # what the fake's VAD takes for speech
                self.heard_hz = dominant_hz(samples, RATE)
            await super()._append(pcm)

        async def _commit(self, item_id: str) -> fake.Turn:
            turn = await super()._commit(item_id)
            return PitchedTurn(**vars(turn), pitch_hz=self.heard_hz)

        def _start_turn(self, turn: fake.Turn, *, text_only: bool) -> None:
            if turn.tool_call is not None:
                super()._start_turn(turn, text_only=text_only)
            else:  # responses run one at a time: the pitch is set as this one starts
                self._start(self._answer_turn(turn, text_only))

        async def _answer_turn(self, turn: fake.Turn, text_only: bool) -> None:
            self.answer_hz = getattr(turn, "pitch_hz", GREETING_HZ)
            await self._answer(turn.answer, text_only=text_only, turn=True)

        def answer_chunk(self) -> bytes:
            chunk = tone(self.answer_hz, CHUNK_MS / 1000, 0.3, self.phase)
            self.phase = (self.phase + 2 * np.pi * self.answer_hz * CHUNK_MS / 1000) % (2 * np.pi)
            return chunk.tobytes()

        async def send(self, type_: str, **fields: Any) -> None:
            if type_ == "response.output_audio.delta" and isinstance(fields.get("delta"), str):
                out_seq[0] += 1
                seq = out_seq[0]
                audio = marker(MAGIC_OUT, seq) + self.answer_chunk()[MARK_LEN:]
                fields["delta"] = base64.b64encode(audio).decode()
                sent[seq] = now_ns()
            await super().send(type_, **fields)

    class MarkedServer(fake.FakeRealtimeServer):
        async def _serve(self, ws: Any) -> None:
            self.connections += 1
            conn = MarkedConnection(self, ws, "bench", self.connections)
            self._live.add(conn)
            try:
                await conn.run()
            finally:
                self._live.discard(conn)

        async def _record(self, event: dict[str, Any]) -> None:
            if event["type"] == "input_audio_buffer.append":
                t = now_ns()
                head = base64.b64decode(event.get("audio", "")[:B64_MARK])
                if head.startswith(MAGIC_IN):
                    arrived[marker_seq(head)] = t
            await super()._record(event)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        turn = fake.Turn(transcript="tell me something", answer=args.answer)
        server = MarkedServer([turn], port=args.port, pace=1.0, record=False)

        def dump(path: str) -> None:  # on the loop thread: no race with the recorders
            data = {"in": dict(arrived), "out": dict(sent)}
            arrived.clear()
            sent.clear()
            Path(path).write_text(json.dumps(data))
            print(f"dumped {path}", flush=True)

        def commands() -> None:  # "dump PATH" lines on stdin
            for line in sys.stdin:
                if line.startswith("dump "):
                    loop.call_soon_threadsafe(dump, line.split(" ", 1)[1].strip())

        async with server:
            print(f"fake OpenAI Realtime listening on {server.base_url}", flush=True)
            threading.Thread(target=commands, daemon=True).start()
            await asyncio.Future()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


class FakeModel:
    def __init__(self, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "fake"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
        )
        self.url = self._line("listening on ws://").split()[-1]

    def _line(self, expect: str) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SESSION_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if expect not in line:
            raise RuntimeError(f"fake model: expected {expect!r}, got {line!r}")
        return line

    def dump(self, path: Path) -> dict[str, dict[int, int]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        self._line("dumped")
        raw = json.loads(path.read_text())
        return {k: {int(s): t for s, t in v.items()} for k, v in raw.items()}

    def stop(self) -> None:
        stop_process(self.proc)


# --- the clients -----------------------------------------------------------------------


def caller_audio() -> np.ndarray:
    """One loop of the caller: per turn a 1 s tone at the turn's pitch (RMS ~4600, speech to
    the fake's VAD), then 3 s quiet."""
    quiet = np.zeros(round(RATE * SILENCE_S), "<i2")
    return np.concatenate(
        [part for hz in TURN_PITCHES_HZ for part in (tone(hz, TONE_S, 0.2), quiet)]
    )


class Recorder:
    """Client-side timestamps, shared by all clients of a run."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.sent: dict[int, int] = {}  # input marker → written to the socket
        self.received: dict[int, int] = {}  # output marker → frame decoded at the client
        self.frames_out = 0
        self.late_sends = 0  # the client's own loop fell > 5 ms behind its schedule

    def clear(self) -> None:
        self.sent.clear()
        self.received.clear()


class DensityClient:
    def __init__(self, ws: Any, recorder: Recorder, offset_frames: int) -> None:
        from pipecat.serializers.protobuf import ProtobufFrameSerializer

        self.ws, self.rec = ws, recorder
        self.serializer = ProtobufFrameSerializer()
        self.audio = caller_audio()
        self.offset = offset_frames  # staggered so sessions don't all speak at once
        self.tail = b""
        self.tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]

    @classmethod
    async def connect(cls, url: str, recorder: Recorder, offset: int) -> DensityClient:
        import websockets
        from pipecat.frames.frames import OutputTransportMessageFrame

        ws = await websockets.connect(url, max_size=None, open_timeout=10, compression=None)
        client = cls(ws, recorder, offset)
        ready = {"label": "rtvi-ai", "type": "client-ready", "id": "c1",
                 "data": {"version": "1.0.0", "about": {"library": "density"}}}  # fmt: skip
        data = await client.serializer.serialize(OutputTransportMessageFrame(message=ready))
        assert data is not None
        await ws.send(data)
        return client

    async def _send(self) -> None:
        import websockets
        from pipecat.frames.frames import OutputAudioRawFrame

        loop_frames = len(self.audio) // FRAME_SAMPLES
        start, n = time.monotonic(), 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                i = (n + self.offset) % loop_frames
                chunk = bytearray(self.audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].tobytes())
                seq = self.rec.next_seq
                self.rec.next_seq += 1
                chunk[:MARK_LEN] = marker(MAGIC_IN, seq)
                frame = OutputAudioRawFrame(audio=bytes(chunk), sample_rate=RATE, num_channels=1)
                data = await self.serializer.serialize(frame)
                due = start + n * FRAME_MS / 1000
                if time.monotonic() - due > 0.005:
                    self.rec.late_sends += 1
                self.rec.sent[seq] = now_ns()
                await self.ws.send(data)
                n += 1
                await asyncio.sleep(max(start + n * FRAME_MS / 1000 - time.monotonic(), 0))

    async def _receive(self) -> None:
        import websockets
        from pipecat.frames.frames import InputAudioRawFrame

        with contextlib.suppress(websockets.ConnectionClosed):
            async for data in self.ws:
                t = now_ns()
                frame = await self.serializer.deserialize(data)
                if not isinstance(frame, InputAudioRawFrame):
                    continue
                self.rec.frames_out += 1
                audio = self.tail + frame.audio
                at = audio.find(MAGIC_OUT)
                while at >= 0 and at + MARK_LEN <= len(audio):
                    seq = marker_seq(audio[at : at + MARK_LEN])
                    self.rec.received.setdefault(seq, t)
                    at = audio.find(MAGIC_OUT, at + MARK_LEN)
                self.tail = audio[-(MARK_LEN - 1) :]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def open_session(api: httpx.AsyncClient) -> tuple[str, str]:
    created = await api.post(
        "/api/sessions", json={"transport": "websocket", "profile": "assistant"}
    )
    if created.status_code != 202:
        raise RuntimeError(f"POST /api/sessions: {created.status_code} {created.text}")
    sid = created.json()["session_id"]
    deadline = time.monotonic() + SESSION_TIMEOUT_S
    while time.monotonic() < deadline:
        body = (await api.get(f"/api/sessions/{sid}")).json()
        if body["status"] == "ready":
            connect = await api.post(f"/api/sessions/{sid}/connect")
            if connect.status_code != 200:
                raise RuntimeError(f"POST connect: {connect.status_code} {connect.text}")
            return sid, connect.json()["ws_url"]
        if body["status"] in ("ended", "failed", "expired", "cancelled"):
            raise RuntimeError(f"session {sid} became {body['status']}: {body.get('reason')}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"session {sid} not ready in {SESSION_TIMEOUT_S} s")


async def wait_ended(api: httpx.AsyncClient, sids: list[str]) -> None:
    deadline = time.monotonic() + SESSION_TIMEOUT_S
    for sid in sids:
        while time.monotonic() < deadline:
            status = (await api.get(f"/api/sessions/{sid}")).json()["status"]
            if status in ("ended", "failed", "expired", "cancelled"):
                break
            await asyncio.sleep(0.1)


class Sessions:
    """Where a phase's N sessions come from: WebSocket URLs to connect to, and their end."""

    async def open(self, n: int) -> list[str]:
        raise NotImplementedError

    async def wait_ended(self) -> None:
        """After the clients have closed."""


class WorkerSessions(Sessions):
    """voicepool: created through the API, run by whichever worker takes them."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self.sids: list[str] = []

    async def open(self, n: int) -> list[str]:
        opened = await asyncio.gather(*(open_session(self.api) for _ in range(n)))
        self.sids = [sid for sid, _ in opened]
        return [url for _, url in opened]

    async def wait_ended(self) -> None:
        await wait_ended(self.api, self.sids)


class BotSessions(Sessions):
    """The baseline: one session on each plain bot process, from its runner's ``POST /start``
    (the bot's pipeline ends when its client leaves)."""

    def __init__(self, bots: list[AssistantBot]) -> None:
        self.bots = bots

    async def open(self, n: int) -> list[str]:
        assert n == len(self.bots), "one session per bot"
        urls = []
        for bot in self.bots:
            async with bot.http(1) as http:
                urls.append((await bot.request(http))[0])
        return urls


# --- the baseline: plain Pipecat bots, one process per session -------------------------


class AssistantBot(Runner):
    """runner_bots/assistant_bot.py under Pipecat's development runner (anchor.py's Runner:
    ``POST /start`` for a WebSocket URL with a token, or SmallWebRTC's ``POST /api/offer``),
    talking to the fake model; logs at WARNING, as the benchmark's workers do."""

    def __init__(self, transport: str, model_url: str) -> None:
        super().__init__("assistant-bot", vad="")  # (anchor's target key and echo VAD: unused)
        self.transport, self.model_url = transport, model_url

    def command(self) -> list[str]:
        return [sys.executable, str(ASSISTANT_BOT), "-t", self.transport,
                "--host", "127.0.0.1", "--port", str(self.port), "--ws-auth", "token",
                "--openai-base-url", self.model_url, "--openai-api-key", API_KEY,
                "--ice-host", "127.0.0.1", "--log-level", "WARNING"]  # fmt: skip


@contextlib.asynccontextmanager
async def assistant_bots(
    n: int, transport: str, model_url: str, tmp: Path
) -> AsyncIterator[list[AssistantBot]]:
    """N bot processes, started together, ready and settled; stopped on the way out."""
    bots = [AssistantBot(transport, model_url) for _ in range(n)]
    try:
        for i, bot in enumerate(bots):
            bot.launch(tmp / f"bots{n}-{i}")
        await asyncio.gather(*(asyncio.to_thread(bot.wait_ready) for bot in bots))
        await asyncio.sleep(2)  # let their start-up CPU settle
        yield bots
    finally:
        await asyncio.gather(*(asyncio.to_thread(bot.stop) for bot in bots))


def bot_processes(bots: list[AssistantBot]) -> list[psutil.Process]:
    import psutil

    return [psutil.Process(bot.proc.pid) for bot in bots if bot.proc is not None]


# --- one phase: N sessions, warm up, measure ------------------------------------------


ONE_WORKER = "one voicepool worker"
BOT_PER_SESSION = "plain bot per session"  # the baseline


@dataclass
class Phase:
    mode: str  # ONE_WORKER or BOT_PER_SESSION
    sessions: int
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # "worker": the worker, or the N bots
    worker_rss_mb: float = 0.0  # one worker: its RSS; bots: the sum of the N processes'
    a_ms: list[float] = field(default_factory=list)
    b_ms: list[float] = field(default_factory=list)
    a_lost: int = 0
    b_lost: int = 0
    late_sends: int = 0
    frames_out: int = 0
    deltas_sent: int = 0


def proc_cpu(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for name, group in procs.items():
        total = 0.0
        for p in group:
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(p)
        out[name] = total
    m = psutil.cpu_times()
    out["machine_busy"] = sum(m) - m.idle - getattr(m, "iowait", 0.0)
    return out


def rss_mb(group: list[psutil.Process]) -> float:
    import psutil

    total = 0
    for p in group:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


async def run_phase(
    mode: str,
    n: int,
    sessions: Sessions,
    fake: FakeModel,
    procs: dict[str, list[psutil.Process]],
    args: argparse.Namespace,
    tmp: Path,
    spy: Path | None = None,
) -> Phase:
    rec = Recorder()
    phase = Phase(mode, n)
    urls = await sessions.open(n)
    loop_frames = round(LOOP_S * 1000 / FRAME_MS)
    clients: list[DensityClient] = []
    try:
        for i, url in enumerate(urls):
            clients.append(await DensityClient.connect(url, rec, i * loop_frames // n))
        await asyncio.sleep(args.warmup)
        fake.dump(tmp / "fake-warmup.json")
        rec.clear()
        rec.late_sends = rec.frames_out = 0
        before, t0 = proc_cpu(procs), time.monotonic()
        rss_samples: list[float] = []
        for _ in range(int(args.duration)):
            await asyncio.sleep(1.0)
            rss_samples.append(rss_mb(procs["worker"]))
        await asyncio.sleep(args.duration - int(args.duration))
        t1, after = time.monotonic(), proc_cpu(procs)
        cutoff = now_ns() - 500_000_000  # in flight at the end: not counted as lost
        fake_rec = fake.dump(tmp / "fake.json")
        await asyncio.sleep(0.5)  # let the last marked output frames reach the clients
        sent, received = dict(rec.sent), dict(rec.received)
        phase.late_sends, phase.frames_out = rec.late_sends, rec.frames_out
        phase.deltas_sent = len(fake_rec["out"])
        phase.wall_s = t1 - t0
        phase.cpu_s = {k: round(after[k] - before[k], 3) for k in after}
        phase.worker_rss_mb = round(max(rss_samples), 1)
        for seq, t in sent.items():
            if seq in fake_rec["in"]:
                phase.a_ms.append((fake_rec["in"][seq] - t) / 1e6)
            elif t < cutoff:
                phase.a_lost += 1
        for seq, t in fake_rec["out"].items():
            if seq in received:
                phase.b_ms.append((received[seq] - t) / 1e6)
            elif t < cutoff:
                phase.b_lost += 1
        if spy is not None:
            await profiling.record(procs["worker"][0].pid, args.spy_seconds, spy)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await sessions.wait_ended()
    return phase


# --- statistics and report -------------------------------------------------------------


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


def row(p: Phase, base: Phase | None) -> dict[str, Any]:
    a50, a99 = percentile(p.a_ms, 50), percentile(p.a_ms, 99)
    b50, b99 = percentile(p.b_ms, 50), percentile(p.b_ms, 99)
    cores = p.cpu_s.get("worker", 0.0) / p.wall_s if p.wall_s else math.nan
    out: dict[str, Any] = {
        "mode": p.mode,
        "sessions": p.sessions,
        "frames_a": len(p.a_ms),
        "frames_b": len(p.b_ms),
        "lost_a": p.a_lost,
        "lost_b": p.b_lost,
        "a_p50_ms": round(a50, 2),
        "a_p99_ms": round(a99, 2),
        "a_max_ms": round(max(p.a_ms, default=math.nan), 2),
        "b_p50_ms": round(b50, 2),
        "b_p99_ms": round(b99, 2),
        "b_max_ms": round(max(p.b_ms, default=math.nan), 2),
        "worker_cores": round(cores, 3),
        "cpu_per_session_cores": round(cores / p.sessions, 4),
        "sessions_per_core_by_cpu": round(p.sessions / cores, 1) if cores else math.nan,
        "worker_rss_mb": p.worker_rss_mb,
        "other_cores": {
            k: round(v / p.wall_s, 3) for k, v in p.cpu_s.items() if k != "worker" and p.wall_s
        },
        "client_late_sends": p.late_sends,
        "model_deltas_sent": p.deltas_sent,
        "client_audio_frames": p.frames_out,
    }
    if base is not None:
        out["a_added_p99_ms"] = round(a99 - percentile(base.a_ms, 99), 2)
        out["b_added_p99_ms"] = round(b99 - percentile(base.b_ms, 99), 2)
    return out


def verdict(rows: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    ok = [r for r in rows if max(r["a_added_p99_ms"], r["b_added_p99_ms"]) <= budget]
    over = [r for r in rows if r not in ok]
    best = max(ok, key=lambda r: r["sessions"]) if ok else None
    return {
        "max_sessions_within_budget": best["sessions"] if best else 0,
        "first_over_budget": over[0]["sessions"] if over else None,
        "rss_mb_per_additional_session": round(
            slope([r["sessions"] for r in rows], [r["worker_rss_mb"] for r in rows]), 2
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Density: assistant sessions per worker process (WebSocket transport)",
        "",
        f"{result['date']} · {m['nproc']} CPUs · Python {m['python']} · pipecat-ai "
        f"{m['pipecat']} · commit {m['commit']} · load average at start "
        f"{', '.join(str(x) for x in m['loadavg_at_start'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        "Latency in ms, measured outside the worker on one clock: (a) client writes a 20 ms "
        "frame → the fake model has parsed its `input_audio_buffer.append`; (b) the fake "
        "sends a 60 ms audio delta → the client decoded the frame carrying its first samples "
        "(includes Pipecat's output re-chunking and real-time playout pacing). "
        "Added = p99 minus p99 at N=1 of the same mode; budget "
        f"{result['config']['budget_ms']} ms.",
        "",
        "| mode | N | (a) p50 / p99 / max | (b) p50 / p99 / max | added p99 a / b "
        "| lost a / b | cores (worker; bots: sum) | CPU per session | sessions/core (CPU) "
        "| RSS MB (worker; bots: sum) | fake, clients, api, redis cores | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        o = r["other_cores"]
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r['a_p50_ms']:.1f} / {r['a_p99_ms']:.1f} / "
            f"{r['a_max_ms']:.1f} | {r['b_p50_ms']:.1f} / {r['b_p99_ms']:.1f} / "
            f"{r['b_max_ms']:.1f} | {r.get('a_added_p99_ms', math.nan):+.1f} / "
            f"{r.get('b_added_p99_ms', math.nan):+.1f} | {r['lost_a']} / {r['lost_b']} | "
            f"{r['worker_cores']:.2f} | {r['cpu_per_session_cores']:.3f} | "
            f"{r['sessions_per_core_by_cpu']} | {r['worker_rss_mb']:.0f} | "
            f"{o.get('fake_model', 0):.2f}, {o.get('clients', 0):.2f}, {o.get('api', 0):.2f}, "
            f"{o.get('redis', 0):.2f} | {o.get('machine_busy', 0):.2f} |"
        )
    lines += ["", "| mode | max N within budget | first N over | RSS MB per additional session |"]
    lines += ["|---|---:|---:|---:|"]
    for mode, v in result["verdicts"].items():
        lines.append(
            f"| {mode} | {v['max_sessions_within_budget']} | {v['first_over_budget'] or '—'} | "
            f"{v['rss_mb_per_additional_session']} |"
        )
    spy = result.get("py_spy")
    if spy:
        lines += [
            "",
            f"py-spy of the one worker at N={spy['sessions']} ({spy['working_samples']} working "
            f"samples, {spy['waiting_samples']} waiting). Self time:",
            "",
            "| function | share of working samples |",
            "|---|---:|",
        ]
        lines += [f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["self_time"][:12]]
        lines += ["", "Inclusive, ours:", "", "| function | share |", "|---|---:|"]
        lines += [f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["inclusive_ours"][:8]]
        lines += ["", "Inclusive, all (plumbing left out):", "", "| function | share |"]
        lines += ["|---|---:|"]
        lines += [f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["inclusive_all"][:12]]
    lines += ["", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def start_system(tmp: Path, fake_url: str) -> System:
    from harness.system import System

    settings = {
        "OPENAI_API_KEY": API_KEY,
        "VOICEPOOL_OPENAI_BASE_URL": fake_url,
        "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
        "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
        "VOICEPOOL_LOG_LEVEL": "WARNING",
    }
    system = System(tmp, settings=settings)
    try:
        system.start(workers=0)
    except BaseException:
        system.stop()
        raise
    return system


def start_workers(system: System, count: int, capacity: int) -> list[subprocess.Popen[bytes]]:
    procs = [system.start_worker(capacity=capacity) for _ in range(count)]
    system.wait_ready(len(system.workers))
    return procs


def stop_workers(system: System, procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        stop_process(p)
        system.workers.remove(p)
    deadline = time.monotonic() + 10  # their heartbeats go away
    while system.live_workers() and time.monotonic() < deadline:
        time.sleep(0.2)


def supporting_processes(system: System, fake: FakeModel) -> dict[str, list[psutil.Process]]:
    """Everything but the workers whose CPU a phase reports: the fake model, this
    process (the clients), the API and Redis."""
    import psutil

    procs: dict[str, list[psutil.Process]] = {
        "fake_model": [psutil.Process(fake.proc.pid)],
        "clients": [psutil.Process()],
    }
    if system.api is not None:
        procs["api"] = [psutil.Process(system.api.pid)]
    if system.redis_server is not None and system.redis_server.process is not None:
        procs["redis"] = [psutil.Process(system.redis_server.process.pid)]
    return procs


async def run_all(
    args: argparse.Namespace, system: System, fake: FakeModel, tmp: Path
) -> tuple[list[Phase], list[Phase], Path | None]:
    import psutil

    token = system.create_user("bench")
    headers = {"Authorization": f"Bearer {token}"}
    common = supporting_processes(system, fake)
    single: list[Phase] = []
    multi: list[Phase] = []
    spy: Path | None = None
    deadline = time.monotonic() + args.time_limit
    async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=30) as api:
        # One worker, N sessions.
        workers = await asyncio.to_thread(start_workers, system, 1, max(args.sessions))
        try:
            procs = common | {"worker": [psutil.Process(workers[0].pid)]}
            base: Phase | None = None
            for n in args.sessions:
                if time.monotonic() > deadline:
                    print(f"  time limit: stopping before N={n}", flush=True)
                    break
                last = n == args.sessions[-1]
                print(f"one worker, N={n}", flush=True)
                sessions = WorkerSessions(api)
                phase = await run_phase(ONE_WORKER, n, sessions, fake, procs, args, tmp)
                single.append(phase)
                base = base or phase
                r = row(phase, base)
                print(f"  {json.dumps({k: r[k] for k in list(r)[:18]})}", flush=True)
                over = max(r["a_added_p99_ms"], r["b_added_p99_ms"]) > args.budget_ms
                if (over or last or time.monotonic() > deadline) and args.spy_seconds > 0:
                    spy = tmp / "density.py-spy.txt"
                    print(f"  py-spy on the worker at N={n} ({args.spy_seconds} s)", flush=True)
                    sessions = WorkerSessions(api)
                    await run_phase("profile", n, sessions, fake, procs, _short(args), tmp, spy)
                if over:
                    print(f"  over budget at N={n}", flush=True)
                    break
        finally:
            await asyncio.to_thread(stop_workers, system, workers)
    # Baseline: N plain bot processes, one session each.
    for n in args.baseline:
        print(f"{n} plain bots x 1 session (baseline)", flush=True)
        async with assistant_bots(n, "websocket", fake.url, tmp) as bots:
            procs = common | {"worker": bot_processes(bots)}
            phase = await run_phase(BOT_PER_SESSION, n, BotSessions(bots), fake, procs, args, tmp)
            multi.append(phase)
            r = row(multi[-1], multi[0])
            print(f"  {json.dumps({k: r[k] for k in list(r)[:18]})}", flush=True)
    return single, multi, spy


def _short(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | {"warmup": 1.0, "duration": 1.0}))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--sessions", type=ints, default=ints("1,2,4,8,12,16,24,32"))
    parser.add_argument("--baseline", type=ints, default=ints("1,4,8"))
    parser.add_argument("--duration", type=float, default=12.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=4.0, help="unmeasured s per step")
    parser.add_argument("--budget-ms", type=float, default=20.0)
    parser.add_argument("--spy-seconds", type=float, default=8.0, help="0: no py-spy")
    parser.add_argument(
        "--time-limit", type=float, default=140.0, help="s; no new one-worker step after"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    args = parse_args(argv)
    facts = machine_facts()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vp-bench-density-") as tmp_dir:
        tmp = Path(tmp_dir)
        fake = FakeModel(tmp / "fake.log")
        system: System | None = None
        try:
            system = start_system(tmp / "system", fake.url)
            single, multi, spy = asyncio.run(run_all(args, system, fake, tmp))
            profile = profiling.summarize(spy) if spy is not None and spy.exists() else None
        except Exception:
            if system is not None:
                print(system.log_tail(), file=sys.stderr)
            raise
        finally:
            if system is not None:
                system.stop()
            fake.stop()

    rows = [row(p, single[0]) for p in single] + [row(p, multi[0]) for p in multi]
    verdicts = {ONE_WORKER: verdict(rows[: len(single)], args.budget_ms)}
    if multi:
        verdicts[f"{BOT_PER_SESSION} (baseline)"] = verdict(rows[len(single) :], args.budget_ms)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "verdicts": verdicts,
        "py_spy": profile and {"sessions": single[-1].sessions, **profile},
        "notes": [
            f"Each step: N sessions created through the API (transport websocket, profile "
            f"assistant), clients connected, {args.warmup} s warm-up (the greeting), then "
            f"{args.duration} s measured. Caller loop: {TONE_S} s tone, {SILENCE_S} s quiet, "
            f"the tone at {TURN_PITCHES_HZ[0]:.0f} and {TURN_PITCHES_HZ[1]:.0f} Hz by turns, "
            f"staggered across sessions; the fake answers each turn with {ANSWER_S:.2f} s of "
            "tone at the pitch it heard.",
            f"Baseline ({BOT_PER_SESSION}): N processes of Pipecat's development runner "
            "serving ops/bench/runner_bots/assistant_bot.py (-t websocket), one session each "
            "from its POST /start, the same clients. The bot is the assistant pipeline from "
            "Pipecat's parts with voicepool's settings and no voicepool code: no reconnects "
            "or hold of the model socket, no event publishing, observers or heartbeats. Its "
            "model socket keeps Pipecat's permessage-deflate (voicepool turns it off), so each "
            "bot compresses the audio it sends the model and inflates what it gets.",
            "CPU per session = user+system CPU s of the worker (the baseline: of the N bots) / "
            "wall s / N (cores). Sessions/core (CPU) = N / those cores: an extrapolation; one "
            "worker process is one event loop, so the latency budget, not this number, bounds "
            "one process.",
            "RSS per additional session = least-squares slope of worker RSS (max over the "
            "window) vs N; for the baseline, of the summed RSS of the N bot processes (about "
            "one bot's RSS).",
            "Everything shares the machine: the clients, fake model, API and Redis columns "
            "show how much of the 2 cores they took; at high N the worker waits for a CPU "
            "as well as for its own work.",
            f"Total run time {time.monotonic() - started:.0f} s.",
        ],
    }
    write_results(args.out, "density", result, markdown)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fake":
        fake_main(sys.argv[2:])
    else:
        try:
            main()
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
