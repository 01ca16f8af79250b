"""Density over SmallWebRTC: N ``assistant`` sessions on one worker, Opus and SRTP included.

The WebRTC twin of density.py (same fake model process, same system, same caller loop: a
1 s tone then 3 s quiet, the tone at 300 and 700 Hz by turns, staggered across sessions),
with aiortc clients (harness/webrtc_client.py) instead of protobuf WebSockets. Per N, over
the measured window: worker CPU per session, worker RSS (RSS per additional session = slope
vs N), the CPU of everything else on the machine, and how much of the real-time audio each
client got back.

Latency: density.py's per-frame markers cannot survive Opus (a lossy codec rewrites the
samples), so frame-level "added latency" is not measured here. What is measured from the
outside, comparably across N, is the turn latency: the client's last tone frame leaves →
the first loud (RMS > 300) 20 ms frame *of that turn's answer* arrives at the client. The
fake answers each turn with a tone at the pitch it heard, so the answer to a turn is told
by its dominant frequency (an FFT of the frame): the tail of a late answer to the turn
before, which may still be arriving when this turn's tone ends, has the other pitch and is
not taken for this turn's answer (the number would otherwise improve as the worker
saturates). A turn whose answer has not come by the time the next tone of its pitch ends
is unanswered. The latency includes the fake model's VAD hang time (500 ms of quiet,
clocked by the audio) and its answer, both the same at every N, so "added" = p50/p99 at N
minus the same at N=1. Few samples per step (one turn per session per 4 s), so read the p99
as a max-ish value.

Inserted silence: from each answer's first loud frame, for the answer's known length
(2.16 s: the fake says a fixed text, 60 ms per character), the share of the received audio
that is quiet: gaps in the bot's audio that the server's output filled with silence
because the next audio was late. Per session, over its answers in the window; p50 and
max over the sessions.

Baseline: the same N as N plain Pipecat bot processes, one session each: Pipecat's
development runner serving ops/bench/runner_bots/assistant_bot.py with ``-t webrtc``, the
client's SDP offer posted to its ``/api/offer`` (SmallWebRTC), ICE on 127.0.0.1 as the
workers have it.

``--self-check``: no processes; runs the answer matching on a made-up call through aiortc's
Opus encoder and decoder (a late answer whose tail arrives after the next turn's tone, and
an answer with a 200 ms gap) and checks what it finds.

    .venv/bin/python ops/bench/density_webrtc.py [--sessions 1,2,4,8] [--baseline 1,4,8]
                                                 [--duration 12] [--warmup 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import profiling  # ops/bench/profiling.py
from density import (  # ops/bench/density.py
    ANSWER_S,
    BOT_PER_SESSION,
    FRAME_MS,
    ONE_WORKER,
    RATE,
    SESSION_TIMEOUT_S,
    SILENCE_S,
    TONE_S,
    TURN_PITCHES_HZ,
    TURN_S,
    AssistantBot,
    FakeModel,
    assistant_bots,
    bot_processes,
    caller_audio,
    dominant_hz,
    proc_cpu,
    rms,
    rss_mb,
    same_pitch,
    slope,
    start_system,
    start_workers,
    stop_workers,
    supporting_processes,
    tone,
    wait_ended,
)
from measure import machine_facts, percentile, write_results  # ops/bench/measure.py

from harness.webrtc_client import RECEIVED_SAMPLE_RATE  # the rate the client's audio is kept at

if TYPE_CHECKING:
    import psutil

    from harness.system import System

DESCRIPTION = "Density over SmallWebRTC: assistant sessions per worker, Opus included."
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOUD_RMS = 300.0
TURN_SAMPLES = round(RATE * TURN_S)
LOOP_SAMPLES = TURN_SAMPLES * len(TURN_PITCHES_HZ)
TONE_SAMPLES = round(RATE * TONE_S)
# Answers to the turns whose tone ended in the window may come after it: waited for this long
# (the fake's 0.5 s VAD hang, the answer, and a second), outside the CPU window.
ANSWER_GRACE_S = 0.5 + ANSWER_S + 1.0

SendOffer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


# --- which audio answers which turn -------------------------------------------------------


@dataclass
class Turn:
    ended: float  # when the frame carrying the tone's last samples left the client (s)
    pitch_hz: float
    answered: float | None = None  # when the answer's first loud frame arrived
    first_loud_hz: float | None = None  # the pitch of the first loud audio after `ended`
    answer_samples: int = 0  # of the answer's window, received so far
    quiet_samples: int = 0  # of those, quiet

    @property
    def latency_ms(self) -> float | None:
        return None if self.answered is None else (self.answered - self.ended) * 1000

    @property
    def late_tail_first(self) -> bool:
        """The first loud audio after this turn's tone had another pitch: an earlier answer's
        tail, which a pitch-blind count would have taken for this turn's answer."""
        return self.first_loud_hz is not None and not same_pitch(self.first_loud_hz, self.pitch_hz)


class AnswerMatcher:
    """Finds each turn's answer in the audio one client receives, and the quiet in it.

    The answer to a turn is the first loud chunk after its tone ended whose dominant
    frequency is the turn's pitch; from there, ``ANSWER_S`` of received audio (less one
    frame: the first loud chunk may start before the answer does) is the answer's window,
    whose quiet chunks are inserted silence.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.window = round(rate * ANSWER_S) - rate * FRAME_MS // 1000
        self.turns: list[Turn] = []
        self._waiting: list[Turn] = []  # tone ended, answer not found yet; oldest first
        self._playing: Turn | None = None  # the answer whose window is being read

    def tone_ended(self, at: float, pitch_hz: float) -> None:
        # A turn still waiting when the next tone of its pitch ends can no longer be told
        # from that turn: it stays unanswered.
        self._waiting = [t for t in self._waiting if not same_pitch(t.pitch_hz, pitch_hz)]
        turn = Turn(at, pitch_hz)
        self.turns.append(turn)
        self._waiting.append(turn)

    def audio(self, at: float, samples: np.ndarray) -> None:
        """A chunk of received audio (int16 at ``rate``) that arrived at ``at``."""
        loud = rms(samples) > LOUD_RMS
        if loud and self._waiting:
            hz = dominant_hz(samples, self.rate)
            for turn in self._waiting:
                if turn.first_loud_hz is None:
                    turn.first_loud_hz = hz
            found = next((t for t in self._waiting if same_pitch(hz, t.pitch_hz)), None)
            if found is not None:
                self._waiting.remove(found)
                found.answered = at
                self._playing = found
        playing = self._playing
        if playing is not None:
            counted = min(len(samples), self.window - playing.answer_samples)
            playing.answer_samples += counted
            if not loud:
                playing.quiet_samples += counted
            if playing.answer_samples >= self.window:
                self._playing = None

    def window_done(self, turn: Turn) -> bool:
        return turn.answer_samples >= self.window


# --- the clients ---------------------------------------------------------------------------


def make_client(wav: Path, shift: int) -> Any:
    """A WebRTCTestClient whose caller loop starts ``shift`` samples in, matching answers to
    its turns (AnswerMatcher)."""
    import av
    from aiortc import MediaStreamError

    from harness.webrtc_client import WavAudioTrack, WebRTCTestClient

    matcher = AnswerMatcher(RECEIVED_SAMPLE_RATE)

    class TurnTrack(WavAudioTrack):
        def _next_chunk(self) -> np.ndarray:
            n, pos = self._frame_samples, (self._pts + shift) % LOOP_SAMPLES
            in_turn = pos % TURN_SAMPLES
            if in_turn < TONE_SAMPLES <= in_turn + n:  # this frame carries the tone's end
                pitch = TURN_PITCHES_HZ[pos // TURN_SAMPLES]
                matcher.tone_ended(time.monotonic(), pitch)
            return self._samples[(pos + np.arange(n)) % LOOP_SAMPLES]

    class TurnClient(WebRTCTestClient):
        def __init__(self) -> None:
            super().__init__(None)
            self.track = TurnTrack(str(wav), loop=True)
            self.matcher = matcher

        async def _consume_audio(self, track: Any) -> None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RECEIVED_SAMPLE_RATE)
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                at = time.monotonic()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)
                    self.received_pcm += pcm.tobytes()
                    matcher.audio(at, pcm)

    return TurnClient()


class WebRTCSessions:
    """Where a phase's N sessions come from: an SDP offer sender for each, and their end."""

    async def offer_to(self) -> SendOffer:
        raise NotImplementedError

    async def hang_up(self) -> None:
        """Before the clients close."""

    async def wait_ended(self) -> None:
        """After the clients have closed."""


class WorkerWebRTCSessions(WebRTCSessions):
    """voicepool: each session created through the API; its offer relayed by the API."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self.sids: list[str] = []

    async def offer_to(self) -> SendOffer:
        r = await self.api.post(
            "/api/sessions", json={"transport": "webrtc", "profile": "assistant"}
        )
        if r.status_code != 202:
            raise RuntimeError(f"POST /api/sessions: {r.status_code} {r.text}")
        sid = r.json()["session_id"]
        self.sids.append(sid)

        async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
            reply = await self.api.post(f"/api/sessions/{sid}/offer", json=offer)
            if reply.status_code != 200:
                raise RuntimeError(f"offer for {sid}: {reply.status_code} {reply.text}")
            return dict(reply.json())

        return send_offer

    async def hang_up(self) -> None:
        for sid in self.sids:
            with contextlib.suppress(httpx.HTTPError):
                await self.api.delete(f"/api/sessions/{sid}")

    async def wait_ended(self) -> None:
        await wait_ended(self.api, self.sids)


class BotWebRTCSessions(WebRTCSessions):
    """The baseline: one session on each plain bot process, offered to its runner's
    ``POST /api/offer`` (the bot's pipeline ends when its peer leaves)."""

    def __init__(self, bots: list[AssistantBot]) -> None:
        self.free = list(bots)

    async def offer_to(self) -> SendOffer:
        bot = self.free.pop()

        async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
            async with bot.http(1) as http:
                reply = await http.post("/api/offer", json=offer)
            if reply.status_code != 200:
                raise RuntimeError(f"POST /api/offer: {reply.status_code} {reply.text[:200]}")
            return dict(reply.json())

        return send_offer


async def connect_client(sessions: WebRTCSessions, wav: Path, shift: int) -> Any:
    client = make_client(wav, shift)
    try:
        await client.connect(await sessions.offer_to())
        await client.wait_connected(timeout=SESSION_TIMEOUT_S)
    except BaseException:
        await client.close()
        raise
    return client


@dataclass
class Phase:
    mode: str  # ONE_WORKER or BOT_PER_SESSION
    sessions: int
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # "worker": the worker, or the N bots
    worker_rss_mb: float = 0.0  # one worker: its RSS; bots: the sum of the N processes'
    turn_ms: list[float] = field(default_factory=list)
    turns_unanswered: int = 0
    late_tails: int = 0  # turns where an earlier answer's tail came first (not counted)
    received_ratio: list[float] = field(default_factory=list)
    inserted_silence: list[float] = field(default_factory=list)  # per session, share


def collect_turns(phase: Phase, matcher: AnswerMatcher, t0: float, t1: float) -> None:
    """The turns whose tone ended in [t0, t1]: latencies, unanswered, late tails, and the
    session's inserted silence over the answers whose window is complete."""
    turns = [t for t in matcher.turns if t0 <= t.ended <= t1]
    answered = [t for t in turns if t.latency_ms is not None]
    phase.turn_ms += [t.latency_ms for t in answered if t.latency_ms is not None]
    phase.turns_unanswered += len(turns) - len(answered)
    phase.late_tails += sum(t.late_tail_first for t in turns)
    heard = [t for t in answered if matcher.window_done(t)]
    if heard:
        quiet = sum(t.quiet_samples for t in heard)
        phase.inserted_silence.append(quiet / sum(t.answer_samples for t in heard))


async def run_phase(
    mode: str,
    n: int,
    sessions: WebRTCSessions,
    procs: dict[str, list[psutil.Process]],
    args: argparse.Namespace,
    wav: Path,
    spy: Path | None = None,
) -> Phase:
    phase = Phase(mode, n)
    clients: list[Any] = []
    try:

        async def add_client(shift: int) -> None:
            clients.append(await connect_client(sessions, wav, shift))

        async with asyncio.timeout(SESSION_TIMEOUT_S * 2):
            await asyncio.gather(*(add_client(i * LOOP_SAMPLES // n) for i in range(n)))
        await asyncio.sleep(args.warmup)
        before, t0 = proc_cpu(procs), time.monotonic()
        got0 = [c.received_seconds() for c in clients]
        rss: list[float] = []
        for _ in range(int(args.duration)):
            await asyncio.sleep(1.0)
            rss.append(rss_mb(procs["worker"]))
        t1, after = time.monotonic(), proc_cpu(procs)
        got1 = [c.received_seconds() for c in clients]
        phase.wall_s = t1 - t0
        phase.cpu_s = {k: round(after[k] - before[k], 3) for k in after}
        phase.worker_rss_mb = round(max(rss), 1)
        phase.received_ratio = [
            round((b - a) / phase.wall_s, 3) for a, b in zip(got0, got1, strict=True)
        ]
        await asyncio.sleep(ANSWER_GRACE_S)
        for c in clients:
            collect_turns(phase, c.matcher, t0, t1)
        if spy is not None:
            await profiling.record(procs["worker"][0].pid, args.spy_seconds, spy)
    finally:
        await sessions.hang_up()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await sessions.wait_ended()
    return phase


def row(p: Phase, base: Phase | None) -> dict[str, Any]:
    cores = p.cpu_s.get("worker", 0.0) / p.wall_s if p.wall_s else math.nan
    t50, t99 = percentile(p.turn_ms, 50), percentile(p.turn_ms, 99)
    silence = [100 * share for share in p.inserted_silence]
    out: dict[str, Any] = {
        "mode": p.mode,
        "sessions": p.sessions,
        "turns": len(p.turn_ms),
        "turns_unanswered": p.turns_unanswered,
        "late_tails_not_counted": p.late_tails,
        "turn_p50_ms": round(t50, 1),
        "turn_p99_ms": round(t99, 1),
        "turn_max_ms": round(max(p.turn_ms, default=math.nan), 1),
        "inserted_silence_p50_pct": round(percentile(silence, 50), 2),
        "inserted_silence_max_pct": round(max(silence, default=math.nan), 2),
        "worker_cores": round(cores, 3),
        "cpu_per_session_cores": round(cores / p.sessions, 4),
        "sessions_per_core_by_cpu": round(p.sessions / cores, 1) if cores else math.nan,
        "worker_rss_mb": p.worker_rss_mb,
        "audio_received_ratio_min": min(p.received_ratio, default=math.nan),
        "audio_received_ratio_mean": round(float(np.mean(p.received_ratio)), 3)
        if p.received_ratio
        else math.nan,
        "other_cores": {
            k: round(v / p.wall_s, 3) for k, v in p.cpu_s.items() if k != "worker" and p.wall_s
        },
    }
    if base is not None:
        out["turn_added_p50_ms"] = round(t50 - percentile(base.turn_ms, 50), 1)
        out["turn_added_p99_ms"] = round(t99 - percentile(base.turn_ms, 99), 1)
    return out


def slopes(rows: list[dict[str, Any]]) -> dict[str, float]:
    sessions = [r["sessions"] for r in rows]
    return {
        "rss_mb_per_session": round(slope(sessions, [r["worker_rss_mb"] for r in rows]), 2),
        "cores_per_session": round(slope(sessions, [r["worker_cores"] for r in rows]), 4),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Density over SmallWebRTC: assistant sessions per worker process",
        "",
        f"{result['date']} · {m['nproc']} CPUs · Python {m['python']} · pipecat-ai "
        f"{m['pipecat']} · aiortc {m['aiortc']} · commit {m['commit']} · load average at "
        f"start {', '.join(str(x) for x in m['loadavg_at_start'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        "Turn latency (ms): the client's last tone frame leaves → the first loud frame of "
        "that turn's answer (told by its pitch) arrives; includes the fake's 500 ms VAD hang "
        "and Opus both ways, the same at every N, so read the added column. Turns: answered "
        "(unanswered; earlier answers' late tails seen first and not counted). Inserted "
        "silence: share of each answer's 2.16 s that arrived quiet, per session, p50 / max "
        "over sessions. Audio received = seconds of remote audio per wall second (1.0 = "
        "uninterrupted real time).",
        "",
        "| mode | N | turns (unanswered; late tails) | turn p50 / p99 / max | added p50 / p99 "
        "| inserted silence % p50 / max | cores (worker; bots: sum) | CPU per session "
        "| sessions/core (CPU) | RSS MB (worker; bots: sum) | audio received min / mean "
        "| fake, clients, api, redis cores | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        o = r["other_cores"]
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r['turns']} ({r['turns_unanswered']}; "
            f"{r['late_tails_not_counted']}) | {r['turn_p50_ms']:.0f} / "
            f"{r['turn_p99_ms']:.0f} / {r['turn_max_ms']:.0f} | "
            f"{r.get('turn_added_p50_ms', math.nan):+.0f} / "
            f"{r.get('turn_added_p99_ms', math.nan):+.0f} | "
            f"{r['inserted_silence_p50_pct']:.1f} / {r['inserted_silence_max_pct']:.1f} | "
            f"{r['worker_cores']:.2f} | {r['cpu_per_session_cores']:.3f} | "
            f"{r['sessions_per_core_by_cpu']} | {r['worker_rss_mb']:.0f} | "
            f"{r['audio_received_ratio_min']:.2f} / {r['audio_received_ratio_mean']:.2f} | "
            f"{o.get('fake_model', 0):.2f}, {o.get('clients', 0):.2f}, {o.get('api', 0):.2f}, "
            f"{o.get('redis', 0):.2f} | {o.get('machine_busy', 0):.2f} |"
        )
    lines += ["", "| mode | RSS MB per additional session | CPU per session (cores, slope) |"]
    lines += ["|---|---:|---:|"]
    for mode, v in result["slopes"].items():
        lines.append(f"| {mode} | {v['rss_mb_per_session']} | {v['cores_per_session']} |")
    spy = result.get("py_spy")
    if spy:
        lines += [
            "",
            f"py-spy of the one worker at N={spy['sessions']} ({spy['working_samples']} working "
            f"samples, {spy['waiting_samples']} waiting). Self time:",
            "",
            "| function | share of working samples |",
            "|---|---:|",
            *[f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["self_time"][:12]],
            "",
            "Inclusive, all (plumbing left out):",
            "",
            "| function | share |",
            "|---|---:|",
            *[f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["inclusive_all"][:12]],
        ]
    lines += ["", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


async def run_all(
    args: argparse.Namespace, system: System, fake: FakeModel, wav: Path, tmp: Path
) -> tuple[list[Phase], list[Phase], Path | None]:
    import psutil

    from harness.webrtc_client import allow_loopback_ice

    allow_loopback_ice()
    token = system.create_user("bench")
    common = supporting_processes(system, fake)
    single: list[Phase] = []
    multi: list[Phase] = []
    spy: Path | None = None
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=30) as api:
        workers = await asyncio.to_thread(start_workers, system, 1, max(args.sessions))
        try:
            procs = common | {"worker": [psutil.Process(workers[0].pid)]}
            for n in args.sessions:
                print(f"one worker, N={n}", flush=True)
                phase = await run_phase(ONE_WORKER, n, WorkerWebRTCSessions(api), procs, args, wav)
                single.append(phase)
                print(f"  {json.dumps(row(single[-1], single[0]))}", flush=True)
            if args.spy_seconds > 0:
                n = args.sessions[-1]
                spy = tmp / "density_webrtc.py-spy.txt"
                print(f"  py-spy on the worker at N={n} ({args.spy_seconds} s)", flush=True)
                short = argparse.Namespace(**(vars(args) | {"warmup": 2.0, "duration": 1.0}))
                await run_phase("profile", n, WorkerWebRTCSessions(api), procs, short, wav, spy)
        finally:
            await asyncio.to_thread(stop_workers, system, workers)
    for n in args.baseline:
        print(f"{n} plain bots x 1 session (baseline)", flush=True)
        async with assistant_bots(n, "webrtc", fake.url, tmp) as bots:
            procs = common | {"worker": bot_processes(bots)}
            sessions = BotWebRTCSessions(bots)
            multi.append(await run_phase(BOT_PER_SESSION, n, sessions, procs, args, wav))
            print(f"  {json.dumps(row(multi[-1], multi[0]))}", flush=True)
    return single, multi, spy


# --- the self-check ------------------------------------------------------------------------


def through_opus(pcm: np.ndarray) -> list[np.ndarray]:
    """24 kHz PCM through aiortc's Opus encoder and decoder (as a WebRTC call carries it),
    then resampled to the client's 16 kHz: the chunks a client would get, one per 20 ms."""
    import av
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    encoder, decoder = OpusEncoder(), OpusDecoder()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RECEIVED_SAMPLE_RATE)
    step = RATE * FRAME_MS // 1000
    chunks: list[np.ndarray] = []
    for i in range(len(pcm) // step):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * step : (i + 1) * step].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * step, Fraction(1, RATE)
        packets, timestamp = encoder.encode(frame)
        for packet in packets:
            for decoded in decoder.decode(JitterFrame(data=packet, timestamp=timestamp)):
                assert isinstance(decoded, av.AudioFrame)
                for out in resampler.resample(decoded):
                    chunks.append(out.to_ndarray().reshape(-1))
    return chunks


def self_check() -> None:
    """A made-up call through Opus: turn 1 (300 Hz tone ends at 1.0 s) is answered late, its
    answer running from 5.2 s, after turn 2's tone (700 Hz) ended at 5.0 s; turn 2's answer
    comes at 7.6 s with a 200 ms gap in it. A pitch-blind count takes 5.2 s for turn 2's
    answer (200 ms); the matcher must find 4200 ms for turn 1 and 2600 ms for turn 2."""
    low, high = TURN_PITCHES_HZ
    late_at, gap_at, gap_s, answer2_at = 5.2, 8.6, 0.2, 7.6

    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(round(RATE * seconds), "<i2")

    answer2 = np.concatenate(
        [
            tone(high, gap_at - answer2_at, 0.3),
            quiet(gap_s),
            tone(high, ANSWER_S - (gap_at - answer2_at) - gap_s, 0.3),
        ]
    )
    received = np.concatenate(
        [
            quiet(late_at),
            tone(low, ANSWER_S, 0.3),  # turn 1's answer, after turn 2's tone ended
            quiet(answer2_at - late_at - ANSWER_S),
            answer2,
            quiet(1.0),
        ]
    )
    matcher = AnswerMatcher(RECEIVED_SAMPLE_RATE)
    matcher.tone_ended(1.0, low)
    matcher.tone_ended(5.0, high)
    pitch_blind: float | None = None  # what the old count took for turn 2's answer
    for i, chunk in enumerate(through_opus(received)):
        at = (i + 1) * FRAME_MS / 1000  # when the chunk has fully arrived
        if pitch_blind is None and at > 5.0 and rms(chunk) > LOUD_RMS:
            pitch_blind = (at - 5.0) * 1000
        matcher.audio(at, chunk)
    first, second = matcher.turns
    share = [t.quiet_samples / t.answer_samples for t in matcher.turns]
    print(f"pitch-blind count: turn 2 answered after {pitch_blind:.0f} ms (the late tail)")
    print(f"matcher: turn 1 {first.latency_ms:.0f} ms, turn 2 {second.latency_ms:.0f} ms")
    print(f"late tail seen first by turn 2: {second.late_tail_first}")
    print(f"inserted silence: turn 1 {share[0]:.1%}, turn 2 {share[1]:.1%} (gap {gap_s} s)")
    assert pitch_blind is not None and pitch_blind < 300
    assert first.latency_ms is not None and abs(first.latency_ms - 4200) <= 60
    assert second.latency_ms is not None and abs(second.latency_ms - 2600) <= 60
    assert second.late_tail_first and not first.late_tail_first
    assert share[0] < 0.02 and abs(share[1] - gap_s / ANSWER_S) < 0.03
    print("self-check passed")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--sessions", type=ints, default=ints("1,2,4,8"))
    parser.add_argument("--baseline", type=ints, default=ints("1,4,8"), help="plain bots")
    parser.add_argument("--duration", type=float, default=12.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured s per step")
    parser.add_argument("--spy-seconds", type=float, default=6.0, help="0: no py-spy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--self-check", action="store_true", help="check the answer matching through Opus; exit"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    args = parse_args(argv)
    if args.self_check:
        self_check()
        return
    facts = machine_facts()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="vp-bench-density-webrtc-") as tmp_dir:
        tmp = Path(tmp_dir)
        wav = tmp / "caller.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(caller_audio().tobytes())
        fake = FakeModel(tmp / "fake.log")
        system: System | None = None
        try:
            system = start_system(tmp / "system", fake.url)
            single, multi, spy = asyncio.run(run_all(args, system, fake, wav, tmp))
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
    modes = {ONE_WORKER: rows[: len(single)]}
    if multi:
        modes[f"{BOT_PER_SESSION} (baseline)"] = rows[len(single) :]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "slopes": {mode: slopes(mode_rows) for mode, mode_rows in modes.items()},
        "py_spy": profile and {"sessions": args.sessions[-1], **profile},
        "notes": [
            f"Each step: N sessions, aiortc clients connected over loopback ICE, "
            f"{args.warmup} s warm-up (the greeting), {args.duration} s measured. Caller loop "
            f"{TONE_S} s tone, {SILENCE_S} s quiet, the tone at {TURN_PITCHES_HZ[0]:.0f} and "
            f"{TURN_PITCHES_HZ[1]:.0f} Hz by turns, staggered; the fake answers each turn with "
            f"{ANSWER_S:.2f} s of tone at the pitch it heard. One voicepool worker: sessions "
            "created through the API (transport webrtc, profile assistant), offers relayed by "
            "it.",
            f"Baseline ({BOT_PER_SESSION}): N processes of Pipecat's development runner "
            "serving ops/bench/runner_bots/assistant_bot.py (-t webrtc, ICE host candidates "
            "127.0.0.1 as the workers have), each client's offer posted to its /api/offer. The "
            "bot is the assistant pipeline from Pipecat's parts with voicepool's settings and "
            "no voicepool code (see its docstring for what it lacks; its model socket keeps "
            "Pipecat's permessage-deflate, which voicepool turns off). Added latency is against "
            "the baseline's own first row.",
            "Turn latency counts, for each turn whose tone ended in the window, the first loud "
            "(RMS > 300) 20 ms frame after the tone whose dominant frequency (FFT) is the "
            "turn's pitch. An earlier answer's tail arriving after the tone has the other "
            "pitch and is not counted (late tails: turns where such a tail came first, which a "
            "pitch-blind count would have taken for the answer). A turn whose answer had not "
            f"come {ANSWER_GRACE_S:.1f} s after the window, or before the next tone of its "
            "pitch ended, is unanswered. `density_webrtc.py --self-check` runs the matching "
            "on a made-up late answer through Opus.",
            "Inserted silence: from each answer's first loud frame, for the answer's length "
            f"({ANSWER_S:.2f} s less one frame), the share of the received audio whose 20 ms "
            "frames are quiet (RMS <= 300): where the bot's audio was late and the server's "
            "output sent silence instead (the answer goes on after the gap, later). 0 % = "
            "the answer played without gaps. Per session over its answers; p50 and max "
            "over the sessions. An answer the model cut short (barge-in) would count as "
            "silence too; the caller's loop leaves no room for one unless answers are "
            "seconds late.",
            "CPU per session = user+system CPU of the worker (the baseline: of the N bots) / "
            "wall / N. The worker decodes Opus (48 kHz) and resamples to 24 kHz in, resamples "
            "and encodes Opus out, and runs SRTP/DTLS, on top of what the WebSocket transport "
            "does (density.md).",
            "RSS per additional session = least-squares slope of the worker's RSS (max over "
            "the window) vs N; for the baseline, of the N bots' summed RSS (about one bot's "
            "RSS). The worker's RSS includes the arena growth of the first sessions; with few "
            "steps the slope is rough.",
            "No frame-level added latency: Opus rewrites the samples, so density.py's "
            "in-band markers cannot be carried. The turn latency is the comparable outside "
            "measure; about 3 turns per session per step, so p99 at small N rests on few "
            "samples.",
            "The aiortc clients (Opus encode/decode and SRTP for N peers) run in this process "
            "on the same 2 cores as the worker: see the clients column. At N=8 they take "
            "roughly as much CPU as the worker, so the worker's latency there partly "
            "reflects CPU contention.",
            f"Total run time {time.monotonic() - started:.0f} s.",
        ],
    }
    write_results(args.out, "density_webrtc", result, markdown)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
