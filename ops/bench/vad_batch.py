"""VAD cost per session: windows scored together (``worker.vad.SileroBatch``), quiet
windows not scored, against the same batch scoring every window and against the same
shared Silero model scored one window at a time (what a worker did before either).

Both run in this one process, interleaved, 3 reps: N sessions each fed the spoken
fixture in 20 ms frames, every session one frame per loop turn (as a worker's
sessions' frames arrive under load). What is measured is the process's CPU time per
frame: the VAD alone, not the transport, the pipeline or the loop's other work. Also
the ONNX run's own cost per window at each batch size.

    .venv/bin/python ops/bench/vad_batch.py
"""

from __future__ import annotations

import argparse
import asyncio
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from measure import (  # ops/bench/measure.py
    ROOT,
    bench_process,
    machine_facts,
    percentile,
    run_main,
    write_results,
)

from worker.vad import SharedSileroVADAnalyzer

FIXTURE = ROOT / "tests" / "fixtures" / "hello.wav"
RATE = 16000
SESSIONS = (1, 8, 32, 64)
BATCHES = (1, 4, 16, 64)
REPS = 3


class OneWindowAtATime(SharedSileroVADAnalyzer):
    """The shared model, each window scored alone, inline: worker/vad.py before the batch."""

    async def analyze_audio(self, buffer: bytes) -> Any:
        return self._run_analyzer(buffer)

    def voice_confidence(self, buffer: bytes) -> float:
        return super(SharedSileroVADAnalyzer, self).voice_confidence(buffer)


class EveryWindowBatched(SharedSileroVADAnalyzer):
    """The batch, scoring quiet windows too: worker/vad.py before quiet windows were skipped."""

    async def _score(self, window: bytes, volume: float) -> float:
        return await self.batch().score(self._model, window, self.sample_rate)


def frames() -> list[bytes]:
    with wave.open(str(FIXTURE)) as wav:
        pcm = wav.readframes(wav.getnframes())
    size = RATE // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


async def feed(kind: type[SharedSileroVADAnalyzer], sessions: int, audio: list[bytes]) -> float:
    """CPU µs per frame, for ``sessions`` analyzers fed ``audio`` side by side."""
    analyzers = [kind() for _ in range(sessions)]
    for analyzer in analyzers:
        analyzer.set_sample_rate(RATE)

    async def one(analyzer: SharedSileroVADAnalyzer) -> None:
        for frame in audio:
            await analyzer.analyze_audio(frame)
            await asyncio.sleep(0)  # the next frame comes in another turn

    start = time.process_time()
    await asyncio.gather(*(one(a) for a in analyzers))
    return (time.process_time() - start) / (sessions * len(audio)) * 1e6


def onnx_per_window() -> dict[str, float]:
    session = SharedSileroVADAnalyzer.batch()._session
    rate = np.array(RATE, dtype="int64")
    out: dict[str, float] = {}
    for size in BATCHES:
        x = np.random.default_rng(1).standard_normal((size, 576)).astype("float32") * 0.1
        state = np.zeros((2, size, 128), dtype="float32")
        runs = max(2000 // size, 40)
        for _ in range(10):
            session.run(None, {"input": x, "state": state, "sr": rate})
        start = time.process_time()
        for _ in range(runs):
            session.run(None, {"input": x, "state": state, "sr": rate})
        out[str(size)] = (time.process_time() - start) / (runs * size) * 1e6
    return out


def run(reps: int) -> dict[str, Any]:
    SharedSileroVADAnalyzer.preload()
    audio = frames()
    targets = {
        "batched": SharedSileroVADAnalyzer,
        "batched, every window": EveryWindowBatched,
        "one at a time": OneWindowAtATime,
    }
    samples: dict[str, dict[str, list[float]]] = {
        str(n): {name: [] for name in targets} for n in SESSIONS
    }
    for rep in range(reps):
        order = list(targets.items())
        order = order[rep % len(order) :] + order[: rep % len(order)]  # each goes first in turn
        for n in SESSIONS:
            for name, kind in order:
                samples[str(n)][name].append(asyncio.run(feed(kind, n, audio)))
        print(f"rep {rep + 1}/{reps} done", flush=True)
    return {
        "machine": machine_facts(),
        "reps": reps,
        "frames_per_session": len(audio),
        "cpu_us_per_frame": samples,
        "onnx_us_per_window": onnx_per_window(),
    }


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]

    def span(values: list[float]) -> str:
        return f"{percentile(values, 50):.0f} ({min(values):.0f}-{max(values):.0f})"

    lines = [
        "# VAD: windows scored together, quiet ones skipped, against one at a time",
        "",
        f"{machine['nproc']} CPUs · Python {machine['python']} · pipecat-ai "
        f"{machine['pipecat']} · commit {machine['commit']}",
        "",
        f"`ops/bench/vad_batch.py`: CPU µs per 20 ms frame, the VAD alone, median (min-max) "
        f"of {result['reps']} interleaved reps; each session is fed the spoken fixture "
        f"({result['frames_per_session']} frames), one frame per loop turn.",
        "",
        "| sessions | batched, quiet windows skipped | batched, every window scored | one window "
        "at a time (same shared model) | ratio: skipped / one at a time | ratio: every window "
        "/ one at a time |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, by in result["cpu_us_per_frame"].items():
        base = percentile(by["one at a time"], 50)
        skipped, every = by["batched"], by["batched, every window"]
        lines.append(
            f"| {n} | {span(skipped)} | {span(every)} | {span(by['one at a time'])} | "
            f"{percentile(skipped, 50) / base:.2f} | {percentile(every, 50) / base:.2f} |"
        )
    lines += [
        "",
        "ONNX run alone, CPU µs per window by batch size (one rep): "
        + ", ".join(f"{b}: {us:.0f}" for b, us in result["onnx_us_per_window"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS)
    args = parser.parse_args()
    result = run(args.reps)
    write_results(Path(__file__).parent / "results", "vad_batch", result, markdown)


if __name__ == "__main__":
    run_main(main)
