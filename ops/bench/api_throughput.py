"""API: session-create and history-read throughput on one API process, under a load tool.

One invocation, everything as real processes on this machine:

* embedded Redis and ONE API process (uvicorn, as harness/system.py starts it), no
  workers (sessions stay queued: creating them is what is measured), SQLite, with the
  per-user and per-minute limits lifted and the queue made long enough never to refuse;
* the load tool: ``wrk`` (Debian package) on loopback, one thread, keep-alive connections,
  at a few concurrency levels (connections), with small generated Lua scripts for the POST
  and for walking the seeded conversation ids. Each run reports requests/s, p50/p99/max
  latency (wrk's HdrHistogram), non-2xx responses and socket errors, and the API process's
  CPU over the run (psutil) → CPU ms per request.

Endpoints, each at each concurrency:

* ``GET /healthz`` — the baseline: no auth, no database, no Redis; the cost of one request
  through uvicorn + FastAPI + our middleware on this machine, measured in the same run;
* ``POST /api/sessions`` — create (auth, limits, queue length, two rows committed to SQLite,
  the transcript-history read, the Lua create in Redis, the arq enqueue; and the persister
  in the same process stores the ``queued`` event each create publishes);
* ``GET /api/conversations`` — the caller's newest 50 conversations (history list);
* ``GET /api/conversations/{id}`` — one conversation with its events, cycling over the
  seeded ids.

Seeding: ``--seed`` conversations created through the API, then ``--events`` events each
published straight into Redis with shared.live.LiveSessions (as a worker would), stored by
the API's own persister; the benchmark waits until every conversation shows them all.

A py-spy profile of the API process is taken during an extra run of each non-baseline
endpoint at the middle concurrency (so the profiler does not disturb the measured runs).

Results go to ops/bench/results/api.{json,md}; the Markdown is printed too.

    .venv/bin/python ops/bench/api_throughput.py [--concurrency 1,8,32] [--duration 8] [--seed 200]
                                      [--events 20] [--spy-seconds 6]
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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import profiling  # ops/bench/profiling.py
from measure import cpu_seconds, machine_facts, write_results  # ops/bench/measure.py

if TYPE_CHECKING:
    import psutil

    from harness.system import System

DESCRIPTION = "API: session-create and history-read throughput on one API process."
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# wrk's done() hook prints one JSON line; latency is in microseconds.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"max_us":%d,"mean_us":%.1f,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def lua_script(kind: str, token: str, ids: list[str]) -> str:
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    if kind == "healthz":
        body = 'wrk.path = "/healthz"\n'
    elif kind == "create":
        body = (
            auth
            + 'wrk.method = "POST"\nwrk.path = "/api/sessions"\n'
            + 'wrk.headers["Content-Type"] = "application/json"\n'
            + 'wrk.body = \'{"transport": "websocket", "profile": "echo"}\'\n'
        )
    elif kind == "list":
        body = auth + 'wrk.path = "/api/conversations"\n'
    elif kind == "detail":
        listed = ", ".join(f'"{i}"' for i in ids)
        body = (
            auth
            + f"local ids = {{{listed}}}\nlocal i = 0\n"
            + "request = function()\n  i = i % #ids + 1\n"
            + '  return wrk.format(nil, "/api/conversations/" .. ids[i])\nend\n'
        )
    else:
        raise ValueError(kind)
    return body + DONE_LUA


OURS = ("api", "shared")  # this process's own packages, in the profiles

# Reads first: every create leaves a queued session behind (no workers), which the API's
# reaper then visits on each sweep, so creates run last.
ENDPOINTS = {
    "healthz": "GET /healthz (baseline)",
    "list": "GET /api/conversations",
    "detail": "GET /api/conversations/{id}",
    "create": "POST /api/sessions",
}


def start_system(tmp: Path) -> System:
    from harness.system import System

    settings = {
        "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
        "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
        "VOICEPOOL_MAX_QUEUE_LENGTH": "1000000",
        "VOICEPOOL_QUEUE_TTL": "3600",
        "VOICEPOOL_ADMIT_WITHOUT_WORKERS": "true",  # no worker: the API alone is measured
        "VOICEPOOL_LOG_LEVEL": "WARNING",
    }
    system = System(tmp, settings=settings)
    try:
        system.start(workers=0)
    except BaseException:
        system.stop()
        raise
    return system


# --- seeding -------------------------------------------------------------------------------


async def seed(system: System, token: str, conversations: int, events: int) -> list[str]:
    """Conversations through the API, events straight into Redis; wait until all stored."""
    import redis.asyncio as aioredis

    from shared.live import LiveSessions

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=30) as api:
        made: list[tuple[str, str]] = []
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem:
                r = await api.post(
                    "/api/sessions", json={"transport": "websocket", "profile": "echo"}
                )
            if r.status_code != 202:
                raise RuntimeError(f"seed POST /api/sessions: {r.status_code} {r.text}")
            made.append((r.json()["session_id"], r.json()["conversation_id"]))

        await asyncio.gather(*(one() for _ in range(conversations)))
        assert system.redis_server is not None
        redis = aioredis.Redis.from_url(system.redis_server.url, decode_responses=True)
        live = LiveSessions(redis)
        try:
            for sid, _cid in made:
                for n in range(events):
                    kind = "user.transcript" if n % 2 == 0 else "assistant.transcript"
                    text = f"turn {n}: a sentence of about the length people speak in a turn."
                    await live.publish(sid, kind, {"text": text, "final": True})
        finally:
            await redis.aclose()
        # The persister stores them; each conversation also has its `queued` state event.
        deadline = time.monotonic() + 60
        ids = [cid for _, cid in made]
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for cid in list(pending):
                body = (await api.get(f"/api/conversations/{cid}")).json()
                if len(body.get("events", [])) >= events + 1:
                    pending.discard(cid)
            if pending:
                await asyncio.sleep(0.5)
        if pending:
            raise RuntimeError(f"{len(pending)} conversations not fully stored in 60 s")
        return ids


# --- one load run ----------------------------------------------------------------------------


def machine_busy() -> float:
    import psutil

    m = psutil.cpu_times()
    return sum(m) - m.idle - getattr(m, "iowait", 0.0)


def run_wrk(
    url: str, script: Path, connections: int, duration: float, api: psutil.Process
) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), url]  # fmt: skip
    c0, m0, t0 = cpu_seconds(api), machine_busy(), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    c1, m1, t1 = cpu_seconds(api), machine_busy(), time.monotonic()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    w = json.loads(line.removeprefix("WRKJSON "))
    secs = w["duration_us"] / 1e6
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    return {
        "connections": connections,
        "requests": w["requests"],
        "rps": round(w["requests"] / secs, 1),
        "p50_ms": round(w["p50_us"] / 1000, 2),
        "p90_ms": round(w["p90_us"] / 1000, 2),
        "p99_ms": round(w["p99_us"] / 1000, 2),
        "max_ms": round(w["max_us"] / 1000, 2),
        "non_2xx": w["status"],
        "socket_errors": errors,
        "api_cores": round((c1 - c0) / (t1 - t0), 3),
        "api_cpu_ms_per_request": round((c1 - c0) * 1000 / max(w["requests"], 1), 3),
        "machine_busy_cores": round((m1 - m0) / (t1 - t0), 2),
    }


def queued(system: System) -> int:
    from shared import keys

    with system.redis as r:
        return int(r.zcard(keys.queue("server")))


# --- report ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# API: session-create and history-read throughput on one API process",
        "",
        f"{result['date']} · {m['nproc']} CPUs · Python {m['python']} · commit {m['commit']} · "
        f"load average at start {', '.join(str(x) for x in m['loadavg_at_start'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Load tool: {result['load_tool']}; {result['config']['duration']} s per run; "
        f"{result['seeded']['conversations']} conversations seeded with "
        f"{result['seeded']['events_each']} events each (+1 state event).",
        "",
        "| endpoint | connections | req/s | p50 ms | p99 ms | max ms | x healthz req/s "
        "| x healthz p99 | API cores | API CPU ms/req | machine busy | non-2xx / errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {ENDPOINTS[r['endpoint']]} | {r['connections']} | {r['rps']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
            f"{r['rps_vs_healthz']:.2f} | {r['p99_vs_healthz']:.1f} | {r['api_cores']:.2f} | "
            f"{r['api_cpu_ms_per_request']:.2f} | {r['machine_busy_cores']:.2f} | "
            f"{r['non_2xx']} / {r['socket_errors']} |"
        )
    lines += [
        "",
        "Cost relative to a bare request (healthz), at the highest concurrency: "
        + "; ".join(
            f"{ENDPOINTS[k]} costs **{v['cost_x']:.1f}x** (API CPU/req "
            f"{v['cpu_ms']:.2f} ms vs {v['healthz_cpu_ms']:.2f} ms)"
            for k, v in result["cost_vs_healthz"].items()
        ),
    ]
    for name, spy in sorted(result.get("py_spy", {}).items(), key=lambda kv: kv[0] != "create"):
        lines += [
            "",
            f"py-spy of the API process, {ENDPOINTS[name]} at {spy['connections']} connections "
            f"({spy['working_samples']} working samples, {spy['waiting_samples']} waiting).",
            "",
            "| self time by package | share |",
            "|---|---:|",
            *[f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["self_by_package"][:8]],
            "",
            "| inclusive, ours | share |",
            "|---|---:|",
            *[f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["inclusive_ours"][:8]],
            "",
            "| inclusive, all (plumbing left out) | share |",
            "|---|---:|",
            *[f"| `{f['function']}` | {f['share']:.1%} |" for f in spy["inclusive_all"][:10]],
        ]
    lines += ["", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--concurrency", type=ints, default=ints("1,8,32"))
    parser.add_argument("--duration", type=float, default=8.0, help="s per wrk run")
    parser.add_argument("--seed", type=int, default=200, help="conversations to seed")
    parser.add_argument("--events", type=int, default=20, help="events per conversation")
    parser.add_argument("--spy-seconds", type=float, default=6.0, help="0: no py-spy")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import psutil

    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    facts = machine_facts()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows: list[dict[str, Any]] = []
    spies: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vp-bench-api-") as tmp_dir:
        tmp = Path(tmp_dir)
        system = start_system(tmp / "system")
        try:
            assert system.api is not None
            api_proc = psutil.Process(system.api.pid)
            token = system.create_user("bench")
            print(f"seeding {args.seed} conversations x {args.events} events", flush=True)
            t = time.monotonic()
            ids = asyncio.run(seed(system, token, args.seed, args.events))
            seed_s = time.monotonic() - t
            scripts = {}
            for kind in ENDPOINTS:
                scripts[kind] = tmp / f"{kind}.lua"
                scripts[kind].write_text(lua_script(kind, token, ids))
            for kind in ENDPOINTS:
                for c in args.concurrency:
                    r = {"endpoint": kind} | run_wrk(
                        system.api_url, scripts[kind], c, args.duration, api_proc
                    )
                    rows.append(r)
                    print(f"  {json.dumps(r)}", flush=True)
            idle = {"queued_sessions": queued(system)}
            c0, t0 = cpu_seconds(api_proc), time.monotonic()
            time.sleep(3)
            idle["api_cores"] = round((cpu_seconds(api_proc) - c0) / (time.monotonic() - t0), 3)
            print(f"  idle API after the creates: {idle}", flush=True)
            if args.spy_seconds > 0:
                mid = args.concurrency[len(args.concurrency) // 2]
                for kind in ("list", "detail", "create"):
                    out = tmp / f"spy-{kind}.txt"
                    spy = profiling.start(api_proc.pid, args.spy_seconds, out)
                    if spy is None:
                        break
                    time.sleep(0.3)
                    run_wrk(system.api_url, scripts[kind], mid, args.spy_seconds, api_proc)
                    spy.wait(args.spy_seconds + 30)
                    if out.exists():
                        spies[kind] = {
                            "connections": mid,
                            **profiling.summarize(out, ours=OURS, top=12),
                        }
                        print(f"  py-spy {kind}: {spies[kind]['self_by_package'][:4]}", flush=True)
        except Exception:
            print(system.log_tail(), file=sys.stderr)
            raise
        finally:
            system.stop()

    base = {r["connections"]: r for r in rows if r["endpoint"] == "healthz"}
    for r in rows:
        b = base[r["connections"]]
        r["rps_vs_healthz"] = round(r["rps"] / b["rps"], 3) if b["rps"] else math.nan
        r["p99_vs_healthz"] = round(r["p99_ms"] / b["p99_ms"], 2) if b["p99_ms"] else math.nan
    top = max(args.concurrency)
    cost = {}
    for kind in ("create", "list", "detail"):
        r = next(x for x in rows if x["endpoint"] == kind and x["connections"] == top)
        b = base[top]
        cost[kind] = {
            "cost_x": round(b["rps"] / r["rps"], 2) if r["rps"] else math.nan,
            "cpu_ms": r["api_cpu_ms_per_request"],
            "healthz_cpu_ms": b["api_cpu_ms_per_request"],
        }
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "load_tool": f"{wrk_version.splitlines()[0].strip()} (-t1, keep-alive)",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seeded": {
            "conversations": len(ids),
            "events_each": args.events,
            "seconds": round(seed_s, 1),
        },
        "rows": rows,
        "cost_vs_healthz": cost,
        "idle_after_creates": idle,
        "py_spy": spies,
        "notes": [
            "One API process (uvicorn, one event loop), SQLite (aiosqlite), embedded Redis, no "
            "workers: created sessions stay queued (queue length limit lifted). The API's own "
            "persister stores each create's `queued` event in the same process, so create "
            "throughput includes that write.",
            "x healthz req/s = endpoint req/s ÷ healthz req/s at the same concurrency (lower "
            "is costlier); x healthz p99 likewise for latency. 'costs Nx' = healthz req/s ÷ "
            "endpoint req/s at the highest concurrency.",
            "API CPU ms/req = the API process's user+system CPU over the run ÷ requests; "
            "'machine busy' = cores busy machine-wide (wrk, Redis and the API share the 2 "
            "cores, so at high concurrency the API competes with the load tool for CPU).",
            "Latency is wrk's (closed loop: each connection sends its next request when the "
            "previous answer arrives), so at N connections latency ≈ N ÷ throughput; p99 at "
            "1 connection is the unloaded cost of one request.",
            "Reads run before creates: each create leaves a queued session (no workers) that "
            "the API's reaper visits every sweep; after the create runs, with "
            f"{idle['queued_sessions']} sessions queued, the idle API process used "
            f"{idle['api_cores']} cores. The py-spy runs come after that, so their profiles "
            "include the reaper's share.",
            "Reading the profiles: `aiosqlite` self time is SQLite running statements in "
            "aiosqlite's threads (their waits between statements count as waiting); "
            "`asyncio` self time is `Runner.run`, i.e. uvloop's C event loop (callbacks, "
            "socket I/O, and its epoll waits, which py-spy cannot tell apart).",
            f"Total run time {time.monotonic() - started:.0f} s (seeding {seed_s:.0f} s).",
        ],
    }
    write_results(args.out, "api", result, markdown)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
