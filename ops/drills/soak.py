"""Soak: continuous session churn at a share of capacity, watching for leaks.

One worker serves echo sessions over the WebSocket transport; clients keep
``--load`` (default 70 %) of its slots busy, each session streaming the spoken
fixture, hearing the echo, then hanging up (``client_left``). Every
``--sample`` seconds it records the worker's RSS, open file descriptors and
asyncio tasks, and Redis' key count. Reported: the RSS slope against
sessions served (no growth per session over time), and how tasks, descriptors
and keys compare between the first and the last sample once the churn settles.

    .venv/bin/python ops/drills/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from harness.system import System
from harness.waiting import eventually
from harness.ws_client import ProtobufClient

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "hello.wav"
RESULTS = Path(__file__).parent / "results"
RETENTION_S = 20  # finished sessions' streams expire fast, so leaked keys would show


def _proc(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


async def _one_session(api: httpx.AsyncClient, stats: dict[str, int]) -> None:
    created = await api.post("/api/sessions", json={"transport": "websocket", "profile": "echo"})
    if created.status_code != 202:
        stats["refused"] += 1
        await asyncio.sleep(1)  # a back-off: this caller tries again a second later
        return
    sid = created.json()["session_id"]

    async def settled() -> str | None:
        status = (await api.get(f"/api/sessions/{sid}")).json()["status"]
        return status if status in ("ready", "failed", "ended", "expired", "cancelled") else None

    try:
        status = await eventually(settled, timeout=20, interval=0.1, what="the session ready")
    except AssertionError:
        stats["failed"] += 1
        await api.delete(f"/api/sessions/{sid}")
        return
    if status != "ready":
        stats["failed"] += 1
        return
    connect = await api.post(f"/api/sessions/{sid}/connect")  # the token: one per connection
    if connect.status_code != 200:
        stats["failed"] += 1
        await api.delete(f"/api/sessions/{sid}")
        return
    client = await ProtobufClient.connect(connect.json()["ws_url"], FIXTURE)
    try:
        await eventually(lambda: client.loudest_rms() > 300, timeout=20, what="echo")
        stats["served"] += 1
    except AssertionError:
        stats["silent"] += 1
    finally:
        await client.close()  # the session ends client_left


async def soak(minutes: float, capacity: int, load: float, sample_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="voicepool-soak-"))
    system = System(tmp, settings={
        "VOICEPOOL_MAX_SESSIONS_PER_USER": "0", "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
        "VOICEPOOL_STREAM_RETENTION": str(RETENTION_S), "VOICEPOOL_LOG_LEVEL": "WARNING",
        # A hang-up ends the call at once (no reconnect grace): the churn stays as measured.
        "VOICEPOOL_RECONNECT_GRACE": "0",
    })  # fmt: skip
    system.start(workers=1, capacity=capacity)
    samples: list[dict[str, float]] = []
    stats = {"served": 0, "failed": 0, "silent": 0, "refused": 0}
    try:
        token = system.create_user("soak")
        worker = system.workers[0]
        async with httpx.AsyncClient(
            base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api:
            stop_at = time.monotonic() + minutes * 60
            callers = max(int(capacity * load), 1)

            async def caller() -> None:
                while time.monotonic() < stop_at:
                    await _one_session(api, stats)

            async def sampler() -> None:
                started = time.monotonic()
                while time.monotonic() < stop_at:
                    await asyncio.sleep(sample_s)  # the sampling period
                    with system.redis as r:
                        beat = r.get(f"vp:worker:{system.live_workers()[0]['id']}")
                        keys = r.dbsize()
                    samples.append({
                        "t_s": round(time.monotonic() - started, 1), "served": stats["served"],
                        **_proc(worker.pid), "tasks": json.loads(beat)["tasks"] if beat else -1,
                        "redis_keys": keys,
                    })  # fmt: skip

            await asyncio.gather(sampler(), *(caller() for _ in range(callers)))
            await asyncio.sleep(RETENTION_S + 5)  # let finished sessions' keys expire
            with system.redis as r:
                beat = json.loads(r.get(f"vp:worker:{system.live_workers()[0]['id']}") or "{}")
                settled = {**_proc(worker.pid), "tasks": beat.get("tasks", -1),
                           "redis_keys": r.dbsize(), "active": beat.get("active", -1),
                           "redis_key_names": sorted(r.scan_iter(count=1000))[:100]}  # fmt: skip
    finally:
        system.stop()
    half = samples[len(samples) // 2 :]  # after warm-up: caches and pools have filled
    return {
        "minutes": minutes, "capacity": capacity, "load": load,
        "callers": max(int(capacity * load), 1),
        **stats,
        "rss_mb_per_100_sessions": round(
            100 * _slope([s["served"] for s in half], [s["rss_mb"] for s in half]), 3
        ),
        "rss_mb_per_hour": round(
            3600 * _slope([s["t_s"] for s in half], [s["rss_mb"] for s in half]), 2
        ),
        "first": samples[0] if samples else {}, "last": samples[-1] if samples else {},
        "settled": settled, "samples": samples,
    }  # fmt: skip


def markdown(result: dict[str, Any], command: str) -> str:
    first, last, settled = result["first"], result["last"], result["settled"]

    def row(name: str, key: str, fmt: str = "{:.0f}", note: str = "") -> str:
        values = (first.get(key), last.get(key), settled.get(key))
        cells = ["n/a" if v is None else fmt.format(v) for v in values]
        return f"| {name} | {cells[0]} | {cells[1]} | {cells[2]}{note} |"

    return "\n".join([
        f"# Soak: session churn at {result['load']:.0%} of capacity",
        "",
        f"Command: `{command}` (one worker, {result['capacity']} slots, {result['callers']} "
        "callers; echo sessions over the WebSocket transport, each streaming the spoken "
        f"fixture, hearing the echo, hanging up). {os.cpu_count()} CPUs, shared.",
        "",
        "| sessions served | failed | silent | refused |",
        "|---:|---:|---:|---:|",
        f"| {result['served']} | {result['failed']} | {result['silent']} | {result['refused']} |",
        "",
        "| measure | first sample | last sample | settled (idle, after stream retention) |",
        "|---|---:|---:|---:|",
        row("worker RSS MB", "rss_mb"),
        row("worker open files", "fds"),
        row("worker asyncio tasks", "tasks", note=f" ({settled.get('active')} sessions active)"),
        row("Redis keys", "redis_keys"),
        "",
        "Worker RSS by quarter of the run (the allocator hands memory back in a sawtooth, "
        "so compare peaks and means, not single samples):",
        "",
        "| quarter | sessions served | RSS min MB | RSS mean MB | RSS max MB |",
        "|---:|---|---:|---:|---:|",
        *_quarter_rows(result["samples"]),
        "",
        *_settled_keys(settled.get("redis_key_names")),
        f"Least-squares RSS slope over the second half: {result['rss_mb_per_100_sessions']} MB "
        f"per 100 sessions ({result['rss_mb_per_hour']} MB per hour); a line through a "
        "sawtooth, so read it with the quarters above. Settled values are taken "
        f"{RETENTION_S + 5} s after the churn stops, once finished sessions' streams expired.",
        "",
    ])  # fmt: skip


def _settled_keys(names: list[str] | None) -> list[str]:
    if not names:
        return []
    return [
        f"Redis keys once settled: {', '.join(f'`{k}`' for k in names)}.",
        "",
    ]


def _quarter_rows(samples: list[dict[str, float]]) -> list[str]:
    size = len(samples) // 4
    rows = []
    for n in range(4 if size else 0):
        part = samples[n * size : (n + 1) * size]
        rss = [s["rss_mb"] for s in part]
        rows.append(f"| {n + 1} | {part[0]['served']:.0f} to {part[-1]['served']:.0f} | "
                    f"{min(rss):.1f} | {sum(rss) / len(rss):.1f} | {max(rss):.1f} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--load", type=float, default=0.7, help="share of slots kept busy")
    parser.add_argument("--sample", type=float, default=30, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where soak.md and soak.json go")  # fmt: skip
    args = parser.parse_args()
    from loguru import logger  # the client's Pipecat serializer logs every message at DEBUG

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(soak(args.minutes, args.capacity, args.load, args.sample))
    text = markdown(result, "python ops/drills/soak.py " + " ".join(sys.argv[1:]))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.md").write_text(text)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
