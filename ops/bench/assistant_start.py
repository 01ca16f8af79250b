"""What an ``assistant`` session costs a worker before its pipeline starts: CPU and memory.

In one process, interleaved (ABAB…), ``AssistantProfile.prepare()`` for sessions with the
model's own turn detection (the default):

* ``voicepool``: as the worker does it: the user aggregator is given the turn strategies
  the Realtime service recommends (its turn events start and stop the user's turn);
* ``Pipecat's defaults`` (the baseline): the aggregator built with Pipecat's default turn
  strategies, which the service's recommendation replaces once the pipeline starts, as a
  Pipecat user who doesn't set them has it; building them loads Pipecat's Smart Turn
  model (an ONNX session) per session.

Measured: process CPU per ``prepare()`` (min / median / max), and RSS growth per session
with ``--keep`` sessions prepared at once (for the baseline, held until each pipeline
starts and the service's recommendation replaces the defaults: a burst of starts holds
them all).
Not included: the pipeline's start, the model's socket (opened when the pipeline starts),
anything after; the model's settings are the defaults, with a dummy key (no traffic).

    .venv/bin/python ops/bench/assistant_start.py [--rounds 40] [--keep 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from pathlib import Path
from typing import Any

from measure import bench_process, run_facts, run_main, write_results

from worker.options import AssistantConfig, WorkerOptions
from worker.profiles import SessionContext
from worker.profiles.assistant import AssistantProfile

HERE = Path(__file__).resolve().parent
TARGETS = {"voicepool": "voicepool", "defaults": "Pipecat's defaults (baseline)"}


class DefaultsProfile(AssistantProfile):
    """The same profile, leaving the user aggregator's turn strategies to Pipecat."""

    def _user_params(self) -> None:
        return None


def _profile(target: str, number: int) -> AssistantProfile:
    options = WorkerOptions(redis_url="redis://-")
    options.assistant = AssistantConfig(api_key="sk-bench")
    context = SessionContext(
        session_id=f"s{number}", meta={}, options=options, emit=lambda *_: None, end=lambda *_: None
    )
    return (AssistantProfile if target == "voicepool" else DefaultsProfile)(context)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


async def _prepare_cpu_ms(target: str, number: int) -> float:
    profile = _profile(target, number)
    started = time.process_time()
    await profile.prepare()
    return (time.process_time() - started) * 1000


async def _held_mb(target: str, keep: int) -> float:
    gc.collect()
    before = _rss_mb()
    held = [_profile(target, n) for n in range(keep)]
    for profile in held:
        await profile.prepare()
    gc.collect()
    return (_rss_mb() - before) / keep


async def measure(rounds: int, keep: int) -> dict[str, Any]:
    for target in TARGETS:  # imports and first-use caches, not measured
        await _prepare_cpu_ms(target, 0)
    cpu: dict[str, list[float]] = {target: [] for target in TARGETS}
    for n in range(rounds):
        for target in TARGETS if n % 2 == 0 else reversed(list(TARGETS)):
            cpu[target].append(await _prepare_cpu_ms(target, n))
    held = {target: await _held_mb(target, keep) for target in TARGETS}
    rows = {}
    for target in TARGETS:
        values = sorted(cpu[target])
        rows[target] = {
            "cpu_ms_min": round(values[0], 2),
            "cpu_ms_median": round(statistics.median(values), 2),
            "cpu_ms_max": round(values[-1], 2),
            "rss_mb_per_held_session": round(held[target], 2),
        }
    return {"rounds": rounds, "keep": keep, "targets": rows}


def markdown(result: dict[str, Any]) -> str:
    facts = result["machine"]
    rows = result["targets"]
    base = rows["defaults"]
    lines = [
        "# An assistant session's preparation on a worker: CPU and memory",
        "",
        f"{result['date']} · {facts['nproc']} CPUs · Python {facts['python']} · "
        f"pipecat-ai {facts['pipecat']} · commit {facts['commit']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['rounds']} prepare() calls per target, interleaved; RSS with "
        f"{result['keep']} sessions prepared and held.",
        "",
        "| target | CPU per prepare(), ms: min / median / max | RSS per held session, MB |",
        "|---|---:|---:|",
    ]
    for key, label in TARGETS.items():
        r = rows[key]
        lines.append(
            f"| {label} | {r['cpu_ms_min']:.1f} / {r['cpu_ms_median']:.1f} / "
            f"{r['cpu_ms_max']:.1f} | {r['rss_mb_per_held_session']:.1f} |"
        )
    ours = rows["voicepool"]
    ratio = ours["cpu_ms_median"] / base["cpu_ms_median"] if base["cpu_ms_median"] else 0.0
    lines += [
        "",
        f"voicepool / baseline, median CPU: {ratio:.3f}x.",
        "",
        "Notes:",
        "",
        "- The model's own turn detection (semantic VAD) is the default; with local turn "
        "detection a session keeps Pipecat's defaults (Silero, then Smart Turn), which "
        "then decide its turns.",
        "- Not included: the pipeline's start and the model's socket (the same for both).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--keep", type=int, default=20, help="sessions held for the RSS")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.rounds, args.keep))
    result |= run_facts(__file__)
    write_results(args.out, "assistant_start", result, markdown)


if __name__ == "__main__":
    run_main(main)
