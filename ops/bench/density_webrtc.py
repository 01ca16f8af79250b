"""Density over SmallWebRTC: N ``assistant`` sessions on one worker, Opus and SRTP included.

The WebRTC twin of density.py (same fake model process, same system, same caller loop:
a 1 s tone then 3 s quiet, staggered across sessions), with aiortc clients
(harness/webrtc_client.py) instead of protobuf WebSockets. Per N, over the measured
window: worker CPU per session, worker RSS (RSS per additional session = slope vs N), the
CPU of everything else on the machine, and how much of the real-time audio each client got
back.

Latency: density.py's per-frame markers cannot survive Opus (a lossy codec rewrites the
samples), so frame-level "added latency" is not measured here. What is measured from the
outside, comparably across N, is the turn latency: the client's last tone frame leaves →
the first loud (RMS > 300) 20 ms frame of the answer arrives at the client. It includes the
fake model's VAD hang time (500 ms of quiet, clocked by the audio) and its answer, both the
same at every N, so "added" = p50/p99 at N minus the same at N=1. Few samples per step (one
turn per session per 4 s), so read the p99 as a max-ish value.

Baseline: the same N as N worker processes with one session each (capacity 1).

    .venv/bin/python ops/bench/density_webrtc.py [--sessions 1,2,4,8] [--baseline 4]
                                                 [--duration 12] [--warmup 5]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import profiling  # ops/bench/profiling.py
from density import (  # ops/bench/density.py
    RATE,
    SESSION_TIMEOUT_S,
    SILENCE_S,
    TONE_S,
    FakeModel,
    caller_audio,
    proc_cpu,
    rss_mb,
    slope,
    start_system,
    start_workers,
    stop_workers,
    supporting_processes,
    wait_ended,
)
from measure import machine_facts, percentile, write_results  # ops/bench/measure.py

if TYPE_CHECKING:
    import psutil

    from harness.system import System

DESCRIPTION = "Density over SmallWebRTC: assistant sessions per worker, Opus included."
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOUD_RMS = 300.0
LOOP_SAMPLES = int(RATE * (TONE_S + SILENCE_S))
TONE_SAMPLES = int(RATE * TONE_S)


def make_client(wav: Path, shift: int) -> Any:
    """A WebRTCTestClient whose caller loop starts ``shift`` samples in, noting turn times."""
    import av

    from harness.webrtc_client import (
        MediaStreamError,
        WavAudioTrack,
        WebRTCTestClient,
    )

    class TurnTrack(WavAudioTrack):
        def __init__(self) -> None:
            super().__init__(str(wav), loop=True)
            self.tone_ends: list[float] = []

        def _next_chunk(self) -> np.ndarray:
            n, pos = self._frame_samples, (self._pts + shift) % LOOP_SAMPLES
            if pos < TONE_SAMPLES <= pos + n:  # this frame carries the tone's last samples
                self.tone_ends.append(time.monotonic())
            return self._samples[(pos + np.arange(n)) % LOOP_SAMPLES]

    class TurnClient(WebRTCTestClient):
        def __init__(self) -> None:
            super().__init__(None)
            self.track = TurnTrack()
            self.turns_ms: list[tuple[float, float]] = []  # (tone end, answer latency ms)
            self.frames = 0

        async def _consume_audio(self, track: Any) -> None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            answered_upto = 0  # tone_ends before this index have their answer
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                t = time.monotonic()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.frames += 1
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray()
                    self.received_pcm += pcm.tobytes()
                    ends = self.track.tone_ends
                    if answered_upto < len(ends) and ends[-1] < t:
                        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
                        if rms > LOUD_RMS:
                            self.turns_ms.append((ends[-1], (t - ends[-1]) * 1000))
                            answered_upto = len(ends)

    return TurnClient()


async def open_session(api: httpx.AsyncClient, wav: Path, shift: int, opened: list[Any]) -> None:
    r = await api.post("/api/sessions", json={"transport": "webrtc", "profile": "assistant"})
    if r.status_code != 202:
        raise RuntimeError(f"POST /api/sessions: {r.status_code} {r.text}")
    sid = r.json()["session_id"]
    client = make_client(wav, shift)
    opened.append((sid, client))

    async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
        reply = await api.post(f"/api/sessions/{sid}/offer", json=offer)
        if reply.status_code != 200:
            raise RuntimeError(f"offer for {sid}: {reply.status_code} {reply.text}")
        return dict(reply.json())

    await client.connect(send_offer)
    await client.wait_connected(timeout=SESSION_TIMEOUT_S)


@dataclass
class Phase:
    mode: str
    sessions: int
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    worker_rss_mb: float = 0.0
    turn_ms: list[float] = field(default_factory=list)
    received_ratio: list[float] = field(default_factory=list)


async def run_phase(
    mode: str,
    n: int,
    api: httpx.AsyncClient,
    procs: dict[str, list[psutil.Process]],
    args: argparse.Namespace,
    wav: Path,
    spy: Path | None = None,
) -> Phase:
    phase = Phase(mode, n)
    opened: list[Any] = []
    try:
        async with asyncio.timeout(SESSION_TIMEOUT_S * 2):
            await asyncio.gather(
                *(open_session(api, wav, i * LOOP_SAMPLES // n, opened) for i in range(n))
            )
        await asyncio.sleep(args.warmup)
        before, t0 = proc_cpu(procs), time.monotonic()
        got0 = [c.received_seconds() for _, c in opened]
        rss: list[float] = []
        for _ in range(int(args.duration)):
            await asyncio.sleep(1.0)
            rss.append(rss_mb(procs["worker"]))
        t1, after = time.monotonic(), proc_cpu(procs)
        got1 = [c.received_seconds() for _, c in opened]
        phase.wall_s = t1 - t0
        phase.cpu_s = {k: round(after[k] - before[k], 3) for k in after}
        phase.worker_rss_mb = round(max(rss), 1)
        phase.received_ratio = [
            round((b - a) / phase.wall_s, 3) for a, b in zip(got0, got1, strict=True)
        ]
        for _, c in opened:
            phase.turn_ms += [ms for end, ms in c.turns_ms if t0 <= end <= t1]
        if spy is not None:
            await profiling.record(procs["worker"][0].pid, args.spy_seconds, spy)
    finally:
        for sid, _ in opened:
            with contextlib.suppress(httpx.HTTPError):
                await api.delete(f"/api/sessions/{sid}")
        await asyncio.gather(*(c.close() for _, c in opened), return_exceptions=True)
        await wait_ended(api, [sid for sid, _ in opened])
    return phase


def row(p: Phase, base: Phase | None) -> dict[str, Any]:
    cores = p.cpu_s.get("worker", 0.0) / p.wall_s if p.wall_s else math.nan
    t50, t99 = percentile(p.turn_ms, 50), percentile(p.turn_ms, 99)
    out: dict[str, Any] = {
        "mode": p.mode,
        "sessions": p.sessions,
        "turns": len(p.turn_ms),
        "turn_p50_ms": round(t50, 1),
        "turn_p99_ms": round(t99, 1),
        "turn_max_ms": round(max(p.turn_ms, default=math.nan), 1),
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
        "the answer arrives (includes the fake's 500 ms VAD hang and Opus both ways; the "
        "same at every N, so read the added column). Audio received = seconds of remote "
        "audio per wall second (1.0 = uninterrupted real time).",
        "",
        "| mode | N | turns | turn p50 / p99 / max | added p50 / p99 | worker cores "
        "| CPU per session | sessions/core (CPU) | worker RSS MB | audio received min / mean "
        "| fake, clients, api, redis cores | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        o = r["other_cores"]
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r['turns']} | {r['turn_p50_ms']:.0f} / "
            f"{r['turn_p99_ms']:.0f} / {r['turn_max_ms']:.0f} | "
            f"{r.get('turn_added_p50_ms', math.nan):+.0f} / "
            f"{r.get('turn_added_p99_ms', math.nan):+.0f} | {r['worker_cores']:.2f} | "
            f"{r['cpu_per_session_cores']:.3f} | {r['sessions_per_core_by_cpu']} | "
            f"{r['worker_rss_mb']:.0f} | {r['audio_received_ratio_min']:.2f} / "
            f"{r['audio_received_ratio_mean']:.2f} | {o.get('fake_model', 0):.2f}, "
            f"{o.get('clients', 0):.2f}, {o.get('api', 0):.2f}, {o.get('redis', 0):.2f} | "
            f"{o.get('machine_busy', 0):.2f} |"
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
                single.append(await run_phase("one worker", n, api, procs, args, wav))
                print(f"  {json.dumps(row(single[-1], single[0]))}", flush=True)
            if args.spy_seconds > 0:
                n = args.sessions[-1]
                spy = tmp / "density_webrtc.py-spy.txt"
                print(f"  py-spy on the worker at N={n} ({args.spy_seconds} s)", flush=True)
                short = argparse.Namespace(**(vars(args) | {"warmup": 2.0, "duration": 1.0}))
                await run_phase("profile", n, api, procs, short, wav, spy)
        finally:
            await asyncio.to_thread(stop_workers, system, workers)
        for n in args.baseline:
            print(f"{n} workers x 1 session (baseline)", flush=True)
            workers = await asyncio.to_thread(start_workers, system, n, 1)
            try:
                procs = common | {"worker": [psutil.Process(w.pid) for w in workers]}
                await asyncio.sleep(2)
                multi.append(await run_phase("N workers", n, api, procs, args, wav))
                print(f"  {json.dumps(row(multi[-1], single[0]))}", flush=True)
            finally:
                await asyncio.to_thread(stop_workers, system, workers)
    return single, multi, spy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--sessions", type=ints, default=ints("1,2,4,8"))
    parser.add_argument("--baseline", type=ints, default=ints("4"))
    parser.add_argument("--duration", type=float, default=12.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured s per step")
    parser.add_argument("--spy-seconds", type=float, default=6.0, help="0: no py-spy")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    args = parse_args(argv)
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

    rows = [row(p, single[0]) for p in single] + [row(p, single[0]) for p in multi]
    one = rows[: len(single)]
    slopes = {
        "one worker": {
            "rss_mb_per_session": round(
                slope([r["sessions"] for r in one], [r["worker_rss_mb"] for r in one]), 2
            ),
            "cores_per_session": round(
                slope([r["sessions"] for r in one], [r["worker_cores"] for r in one]), 4
            ),
        }
    }
    base = [single[0], *multi] if multi else []
    if base:
        rb = [row(p, None) for p in base]
        slopes["N workers (baseline, with N=1 of one worker)"] = {
            "rss_mb_per_session": round(
                slope([r["sessions"] for r in rb], [r["worker_rss_mb"] for r in rb]), 2
            ),
            "cores_per_session": round(
                slope([r["sessions"] for r in rb], [r["worker_cores"] for r in rb]), 4
            ),
        }
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "slopes": slopes,
        "py_spy": profile and {"sessions": args.sessions[-1], **profile},
        "notes": [
            f"Each step: N sessions created through the API (transport webrtc, profile "
            f"assistant), aiortc clients connected over loopback ICE, {args.warmup} s warm-up "
            f"(the greeting), {args.duration} s measured. Caller loop {TONE_S} s tone, "
            f"{SILENCE_S} s quiet, staggered; the fake answers each turn with 2.2 s of audio.",
            "CPU per session = worker user+system CPU / wall / N. The worker decodes Opus "
            "(48 kHz) and resamples to 24 kHz in, resamples and encodes Opus out, and runs "
            "SRTP/DTLS, on top of what the WebSocket transport does (density.md).",
            "RSS per additional session = least-squares slope of the worker's RSS (max over "
            "the window) vs N. The worker's RSS includes the arena growth of the first "
            "sessions; with few steps the slope is rough.",
            "No frame-level added latency: Opus rewrites the samples, so density.py's "
            "in-band markers cannot be carried. The turn latency (tone end → first loud "
            "answer frame at the client) is the comparable outside measure; about 3 turns "
            "per session per step, so p99 at small N rests on few samples.",
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
