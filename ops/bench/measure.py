"""What every benchmark here shares: percentiles, CPU time, the facts of the machine it ran on."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in 0..100."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """min / median / max (and how many) of the values that are numbers; None if none is."""
    ok = [v for v in values if v is not None and not math.isnan(v)]
    if not ok:
        return None
    return {"min": min(ok), "median": statistics.median(ok), "max": max(ok), "n": len(ok)}


def min_median_max(cell: dict[str, float], digits: int) -> str:
    """A ``spread`` as a table cell: ``min / median / max``."""
    return " / ".join(f"{cell[k]:.{digits}f}" for k in ("min", "median", "max"))


@contextlib.contextmanager
def before_tree(rev: str | None, path: Path) -> Iterator[Path | None]:
    """A worktree of ``rev`` at ``path`` for as long as the run lasts (None without one):
    voicepool as it was, for a before/after in one run."""
    if not rev:
        yield None
        return
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds the process has used so far."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        "unknown",
    )


def machine_facts() -> dict[str, Any]:
    """Enough to tell two results files apart: machine, versions, commit, load at start."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pipecat": metadata.version("pipecat-ai"),
        "aiortc": metadata.version("aiortc"),
        "websockets": metadata.version("websockets"),
        "commit": _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGINT (a clean stop), then SIGKILL if it does not exit in ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_facts(script: str) -> dict[str, Any]:
    """A result's header: when, on what machine, and the command that made it (``script``:
    the benchmark's ``__file__``; its arguments from ``sys.argv``)."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "command": " ".join([f".venv/bin/python ops/bench/{Path(script).name}", *sys.argv[1:]]),
    }


def write_results(
    out: Path, name: str, result: dict[str, Any], markdown: Callable[[dict[str, Any]], str]
) -> None:
    """``out/name.json`` and ``out/name.md``, and the Markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    (out / f"{name}.md").write_text(report)
    print("\n" + report, flush=True)


def run_main(main: Callable[[], None]) -> None:
    """A benchmark's entry point: Ctrl-C stops it with exit code 130, quietly (each one
    stops its processes on the way out)."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def bench_process() -> None:
    """What a benchmark process sets first: Pipecat's serializer logs every message at
    DEBUG (not to be counted in the clients' CPU), and SIGTERM stops it as Ctrl-C does."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextlib.contextmanager
def client_collector_paused() -> Iterator[None]:
    """The benchmark client's own garbage collected just before one measured window, and
    its collector off during it.

    The client is one process driving every target in turn; a full collection of its
    heap took 26-65 ms (ops/bench/start_trace.py, timed with ``gc.callbacks``), and landed
    in whichever target's session it happened to hit, as that session's latency: with 30
    sessions a rep, one such pause is a rep's p99. Only for windows measured one at a
    time (milliseconds long); the server processes collect as they always do.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
