"""py-spy: sample a running process, then rank its hottest functions.

spy = start(pid, seconds, out)       # in the background, while the load runs
await record(pid, seconds, out)      # or: sample and wait for it
summary = summarize(out, ours=("api", "shared"))
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RATE_HZ = 100

# Leaf frames where a sampled thread is waiting, not working (py-spy's own idle detection
# misses these C-level waits under --nonblocking).
IDLE_LEAVES = (
    "select (selectors.py)",
    "Condition.wait (threading.py)",
    "_worker (concurrent/futures/thread.py)",
    "Event.wait (threading.py)",
)


# A thread of aiosqlite (one per pooled SQLite connection) blocks in ``tx.get()`` between
# statements; its function's other lines run the statement. Told apart by line number.
def _aiosqlite_wait_leaf() -> tuple[str, str] | None:
    try:
        import aiosqlite.core
    except ImportError:
        return None
    lines, first = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    for offset, text in enumerate(lines):
        if "tx.get()" in text:
            return "_connection_worker_thread (", f"aiosqlite/core.py:{first + offset})"
    return None


IDLE_RAW_LEAVES = tuple(leaf for leaf in (_aiosqlite_wait_leaf(),) if leaf)

# Frames on (nearly) every stack: the event loop, thread start-up, the command line.
PLUMBING = (
    "(asyncio/",
    "(threading.py",
    "(runpy.py",
    "(voicepool/cli.py",
    "(concurrent/",
    "<module>",
    "worker_main (",
    "run_coroutine (pipecat/utils/asyncio/task_manager.py)",
)


def _command(pid: int, seconds: float, out: Path) -> list[str] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  py-spy not found (.venv/bin/pip install py-spy): no profile", flush=True)
        return None
    return [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
            "--rate", str(RATE_HZ), "--format", "raw", "--nonblocking",
            "--output", str(out)]  # fmt: skip


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` for ``seconds`` in the background; None when py-spy is missing."""
    command = _command(pid, seconds, out)
    if command is None:
        return None
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def record(pid: int, seconds: float, out: Path) -> None:
    """Sample ``pid`` for ``seconds`` and wait until the profile is written."""
    command = _command(pid, seconds, out)
    if command is None:
        return
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.wait_for(proc.wait(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def summarize(
    path: Path, *, ours: tuple[str, ...] = ("worker", "shared"), top: int = 15
) -> dict[str, Any]:
    """Collapsed stacks from ``py-spy record --format raw`` → the hottest functions.

    Shares are of the samples where a thread was working (waiting leaves left
    out); ``ours`` names the project's own top-level packages in this process.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = [f for f in stack.split(";") if f]
        frames = [_frame_name(f) for f in raw]
        if not frames:
            continue
        if (
            frames[-1].endswith(IDLE_LEAVES)
            or frames[-1].startswith("select (")
            or any(raw[-1].startswith(f) and raw[-1].endswith(w) for f, w in IDLE_RAW_LEAVES)
        ):
            idle += count
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count

    def ranked(table: dict[str, int], keep: Callable[[str], bool]) -> list[dict[str, Any]]:
        rows = sorted(((n, c) for n, c in table.items() if keep(n)), key=lambda x: -x[1])
        return [{"function": n, "share": round(c / max(total, 1), 3)} for n, c in rows[:top]]

    def plumbing(name: str) -> bool:
        return any(p in name for p in PLUMBING)

    def is_ours(name: str) -> bool:
        return not plumbing(name) and any(f"({package}/" in name for package in ours)

    by_package: dict[str, int] = {}
    for name, count in own.items():
        where = name.rpartition("(")[2].rstrip(")")
        package = where.split("/", 1)[0] if "/" in where else where
        by_package[package] = by_package.get(package, 0) + count
    return {
        "working_samples": total,
        "waiting_samples": idle,
        "self_by_package": ranked(by_package, lambda _: True),
        "self_time": ranked(own, lambda _: True),
        "inclusive_ours": ranked(inclusive, is_ours),
        "inclusive_all": ranked(inclusive, lambda n: not plumbing(n)),
    }


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (short/path.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for prefix in (str(ROOT) + "/", "site-packages/"):
        if prefix in where:
            where = where.split(prefix, 1)[1]
    return f"{name} ({where})" if where else name
