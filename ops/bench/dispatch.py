"""Dispatch latency: a session on a warm voicepool worker vs. a fresh process per session.

Both are measured in one invocation, one after the other, so that the numbers
are comparable on a noisy shared machine:

* baseline: spawn ``python -c <code>`` per session, the process-per-session
  pattern of Pipecat's example bot runners; the child imports what a worker
  imports for a session, prepares the ``echo`` profile (Silero VAD), builds
  the Pipeline and PipelineWorker, prints ``ready`` and exits. Run first, while
  nothing else of ours runs, which if anything favours the baseline.
* voicepool: the real system as processes (embedded Redis, API under uvicorn,
  N workers), the way harness/system.py starts it. A client times
  ``POST /api/sessions`` → the ``ready`` state seen on the session's SSE
  stream, then ends the session with DELETE. A Redis XREAD watcher on the same
  stream runs alongside, to show how much of the client number SSE itself adds.

Results go to ops/bench/results/dispatch.{json,md}; the Markdown table is printed too.

    .venv/bin/python ops/bench/dispatch.py [--sessions 100] [--baseline 20]
                                           [--workers 2] [--capacity 8]
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
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis.asyncio as aioredis
from measure import machine_facts, percentile, run_main, write_results  # ops/bench/measure.py

DESCRIPTION = "Dispatch latency: a warm voicepool worker vs. a fresh process per session."
ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
SESSION_BODY = {"transport": "webrtc", "profile": "echo"}
SESSION_TIMEOUT_S = 30.0
BASELINE_TIMEOUT_S = 60.0

if TYPE_CHECKING:
    from harness.system import System

# The baseline child: the same imports and per-session work as a worker
# (worker/worker.py, worker/session.py), in a fresh interpreter. It reports
# its own phase times on the ready line so the report can say where they go.
BASELINE_CODE = """
import time
t0 = time.perf_counter()
import asyncio
import sys

from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.transports.smallwebrtc.request_handler import (
    ConnectionMode,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: F401
from pipecat.workers.runner import WorkerRunner

import worker.profiles.echo  # noqa: F401
from worker.options import WorkerOptions
from worker.profiles import SessionContext, build_profile

logger.remove()
logger.add(sys.stderr, level="INFO")  # what `voicepool worker` does
t1 = time.perf_counter()


async def main():
    options = WorkerOptions(redis_url="redis://127.0.0.1:1/0")  # never connected
    context = SessionContext(
        session_id="baseline", meta={"profile": "echo"}, options=options,
        emit=lambda type, data: None, end=lambda reason, message=None: None,
    )
    profile = build_profile(context)
    SmallWebRTCRequestHandler(ice_servers=[], connection_mode=ConnectionMode.SINGLE)
    await profile.prepare()  # loads Silero VAD: this process has not yet
    t2 = time.perf_counter()
    # No peer here: stand-ins where the transport's input and output go.
    pipeline = Pipeline(profile.pipeline(IdentityFilter(), IdentityFilter()))
    PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=profile.audio_in_sample_rate,
            audio_out_sample_rate=profile.audio_out_sample_rate,
        ),
    )
    WorkerRunner(handle_sigint=False, handle_sigterm=False)
    t3 = time.perf_counter()
    print("ready", f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}", flush=True)


asyncio.run(main())
"""


# --- statistics ------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max/mean/min in milliseconds, from seconds."""
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
        "mean": round(sum(ms) / len(ms), 2),
        "min": round(min(ms), 2),
    }


# --- baseline: a fresh process per session ---------------------------------------------


@dataclass
class BaselineRun:
    ready_s: float  # spawn → "ready" read from the child's stdout
    exit_s: float  # spawn → the child exited
    imports_s: float  # the child's own clocks, from its first statement
    prepare_s: float
    pipeline_s: float


def run_baseline_once(log: Path) -> BaselineRun:
    with log.open("ab") as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", BASELINE_CODE],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()  # blocks until the child prints or exits
            ready = time.perf_counter() - start
            if not line.startswith("ready"):
                child.wait(BASELINE_TIMEOUT_S)
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"baseline child did not print ready:\n{tail}")
            child.wait(BASELINE_TIMEOUT_S)
            exited = time.perf_counter() - start
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    imports, prepare, pipeline = (float(x) for x in line.split()[1:4])
    return BaselineRun(ready, exited, imports, prepare, pipeline)


def run_baseline(count: int, log: Path) -> list[BaselineRun]:
    run_baseline_once(log)  # warm the OS file cache, as a long-running host would have it
    runs = []
    for i in range(count):
        runs.append(run_baseline_once(log))
        print(f"  baseline {i + 1}/{count}: {runs[-1].ready_s * 1000:.0f} ms", flush=True)
    return runs


# --- voicepool: warm workers -----------------------------------------------------------


@dataclass
class SessionRun:
    """One measured session; ``*_s`` are seconds after the POST was sent (client clock)."""

    sent_wall: float  # time.time() just before the POST, to compare with server ts
    session_id: str = ""
    post_s: float = math.nan  # POST answered
    sse_open_s: float = math.nan  # SSE response headers received (auth and lookup done)
    sse_ready_s: float = math.nan  # ready seen on SSE: the client number
    xread_ready_s: float = math.nan  # ready seen by XREAD on the Redis stream
    delete_s: float = math.nan  # DELETE round trip (after ready; not in the numbers)
    sse_seen_wall: float = math.nan
    xread_seen_wall: float = math.nan
    state_ts: dict[str, float] = field(default_factory=dict)  # server ts per state


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a Server-Sent Events response."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


async def watch_sse(client: httpx.AsyncClient, run: SessionRun, start: float) -> None:
    """Read the session's SSE stream (it replays from the start) until ``ready``."""
    url = f"/api/sessions/{run.session_id}/events"
    async with client.stream("GET", url, timeout=None) as response:
        response.raise_for_status()
        run.sse_open_s = time.perf_counter() - start
        async for event, data in sse_events(response):
            if event != "session.state":
                continue
            state = data["data"]["state"]
            run.state_ts[state] = data["ts"]
            if state == "ready":
                run.sse_ready_s, run.sse_seen_wall = time.perf_counter() - start, time.time()
                return
            if state in ("ended", "failed", "expired", "cancelled"):
                raise RuntimeError(f"session {run.session_id} became {state}: {data['data']}")
    raise RuntimeError(f"session {run.session_id}: event stream closed before ready")


async def watch_redis(redis: aioredis.Redis, run: SessionRun, start: float) -> None:
    """XREAD the session's live stream until ``ready`` (how a Redis-side client would)."""
    stream, last = f"vp:session:{run.session_id}:events", "0-0"
    while True:
        reply = await redis.xread({stream: last}, block=int(SESSION_TIMEOUT_S * 1000))
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("type") == "session.state":
                    if json.loads(fields["data"]).get("state") == "ready":
                        run.xread_ready_s = time.perf_counter() - start
                        run.xread_seen_wall = time.time()
                        return


async def one_session(client: httpx.AsyncClient, redis: aioredis.Redis) -> SessionRun:
    run, start = SessionRun(sent_wall=time.time()), time.perf_counter()
    response = await client.post("/api/sessions", json=SESSION_BODY)
    run.post_s = time.perf_counter() - start
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/sessions: {response.status_code} {response.text}")
    run.session_id = response.json()["session_id"]
    try:
        # A TaskGroup, not gather: if one watcher fails the other is cancelled.
        async with asyncio.timeout(SESSION_TIMEOUT_S), asyncio.TaskGroup() as group:
            group.create_task(watch_sse(client, run, start))
            group.create_task(watch_redis(redis, run, start))
    finally:
        # Ending it frees the slot for the next session. Best effort if the run failed.
        ending = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await client.delete(f"/api/sessions/{run.session_id}")
        run.delete_s = time.perf_counter() - ending
    return run


async def run_sessions(
    api_url: str, redis_url: str, token: str, count: int, interval: float, concurrency: int
) -> list[SessionRun]:
    """Start ``count`` sessions, one every ``interval`` s, never more than ``concurrency`` live."""
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 3 + 4)
    headers = {"Authorization": f"Bearer {token}"}
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, limits=limits, timeout=SESSION_TIMEOUT_S
    ) as client:
        try:

            async def paced(i: int) -> SessionRun:
                await asyncio.sleep(i * interval)
                async with slots:
                    return await one_session(client, redis)

            return list(await asyncio.gather(*(paced(i) for i in range(count))))
        finally:
            await redis.aclose()


def start_system(tmp: Path, workers: int, capacity: int) -> System:
    from harness.system import System

    # No per-user limit: the benchmark's one user runs up to workers x capacity at once.
    # Ready sessions that no client joins stay live for the "200 live" phase: a long
    # connect timeout, and no per-user rate limit.
    settings = {
        "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
        "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
        "VOICEPOOL_CONNECT_TIMEOUT": "900",
        "VOICEPOOL_MAX_STREAMS_PER_USER": "0",  # one SSE stream per concurrent session
    }
    system = System(tmp, settings=settings)
    try:
        system.start(workers=workers, capacity=capacity)
    except BaseException:
        system.stop()
        raise
    return system


async def fill_pool(
    api_url: str, token: str, count: int, concurrency: int = 16
) -> tuple[list[str], float]:
    """Create ``count`` sessions and wait until each is ``ready``; they stay live (no
    client joins, no DELETE). Returns their ids and the seconds it took."""
    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, timeout=SESSION_TIMEOUT_S
    ) as client:

        async def one() -> str:
            async with slots:
                response = await client.post("/api/sessions", json=SESSION_BODY)
                if response.status_code != 202:
                    raise RuntimeError(
                        f"POST /api/sessions: {response.status_code} {response.text}"
                    )
                sid = response.json()["session_id"]
                deadline = time.monotonic() + SESSION_TIMEOUT_S
                while time.monotonic() < deadline:
                    status = (await client.get(f"/api/sessions/{sid}")).json()["status"]
                    if status == "ready":
                        return sid
                    if status in ("ended", "failed", "expired", "cancelled"):
                        raise RuntimeError(f"live session {sid} became {status}")
                    await asyncio.sleep(0.02)
                raise RuntimeError(f"live session {sid} not ready in {SESSION_TIMEOUT_S} s")

        sids = list(await asyncio.gather(*(one() for _ in range(count))))
    return sids, time.perf_counter() - started


async def still_live(api_url: str, token: str, sids: list[str]) -> int:
    """How many of ``sids`` are still ``ready`` (none ended under us)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as client:
        slots = asyncio.Semaphore(16)

        async def status(sid: str) -> str:
            async with slots:
                return (await client.get(f"/api/sessions/{sid}")).json()["status"]

        return sum(s == "ready" for s in await asyncio.gather(*(status(s) for s in sids)))


async def end_sessions(api_url: str, token: str, sids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as client:
        slots = asyncio.Semaphore(16)

        async def end(sid: str) -> None:
            async with slots:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(f"/api/sessions/{sid}")

        await asyncio.gather(*(end(s) for s in sids))


def load_rows(
    steady: list[SessionRun], burst: list[SessionRun], loaded: list[SessionRun]
) -> dict[str, Any]:
    """Burst and pool-under-load numbers next to the warm steady state of the same run."""

    def stats(runs: list[SessionRun]) -> dict[str, dict[str, float]]:
        return {
            "client POST → ready (SSE)": summary([r.sse_ready_s for r in runs]),
            "queued → starting (arq pickup, server ts)": summary(
                [r.state_ts["starting"] - r.state_ts["queued"] for r in runs]
            ),
            "queued → ready (server ts)": summary(
                [r.state_ts["ready"] - r.state_ts["queued"] for r in runs]
            ),
        }

    rows = {"warm steady state": stats(steady)}
    if burst:
        rows["burst (all at once)"] = stats(burst)
    if loaded:
        rows["steady, with the pool already holding live sessions"] = stats(loaded)
    base = rows["warm steady state"]
    versus = {
        name: {m: {q: ratio(v[m][q], base[m][q]) for q in ("p50", "p99", "max")} for m in v}
        for name, v in rows.items()
        if name != "warm steady state"
    }
    return {"rows": rows, "vs_warm_steady": versus}


def load_markdown(result: dict[str, Any]) -> list[str]:
    load = result.get("load")
    if not load:
        return []
    c = result["config"]
    lines = [
        "",
        f"## Burst of {c['burst']} and pickup with {c['live']} sessions live in the pool",
        "",
        f"Same system, same run: {c['workers']} workers x {c['capacity']} slots. "
        f"Live pool: {load['live_ready_before']} sessions `ready` (no client; connect timeout "
        f"raised) before the phase, {load['live_ready_after']} still ready after it; "
        f"filling it took {load['fill_s']:.1f} s.",
        "",
        "| phase | measurement | n | p50 ms | p99 ms | max ms | p50 / p99 / max vs warm |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, stats in load["rows"].items():
        for m, s in stats.items():
            vs = load["vs_warm_steady"].get(name, {}).get(m)
            ratios = f"{vs['p50']}x / {vs['p99']}x / {vs['max']}x" if vs else "—"
            lines.append(
                f"| {name} | {m} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | "
                f"{s['max']:.1f} | {ratios} |"
            )
    return lines


# --- report ----------------------------------------------------------------------------


def phases(runs: list[SessionRun]) -> dict[str, dict[str, float]]:
    """Where voicepool's time goes, from the server's event timestamps (same clock)."""
    out: dict[str, list[float]] = {
        "client POST sent → queued event (API before Redis)": [],
        "queued → starting (dispatch: arq pickup)": [],
        "starting → ready (worker prepares the session)": [],
        "ready event → seen on SSE": [],
        "ready event → seen by XREAD": [],
        "POST round trip": [],
        "POST answered → SSE response open (second request: auth, lookup)": [],
        "DELETE round trip (after ready; not in the numbers)": [],
    }
    keys = list(out)
    for r in runs:
        ts = r.state_ts
        out[keys[0]].append(ts["queued"] - r.sent_wall)
        out[keys[1]].append(ts["starting"] - ts["queued"])
        out[keys[2]].append(ts["ready"] - ts["starting"])
        out[keys[3]].append(r.sse_seen_wall - ts["ready"])
        out[keys[4]].append(r.xread_seen_wall - ts["ready"])
        out[keys[5]].append(r.post_s)
        out[keys[6]].append(r.sse_open_s - r.post_s)
        out[keys[7]].append(r.delete_s)
    return {k: summary(v) for k, v in out.items()}


def ratio(a: float, b: float) -> float:
    return round(a / b, 1) if b else math.nan


def markdown(result: dict[str, Any]) -> str:
    rows = result["results"]
    lines = [
        "# Dispatch latency: warm voicepool worker vs. a fresh process per session",
        "",
        f"{result['date']} · {result['machine']['nproc']} CPUs · Python "
        f"{result['machine']['python']} · pipecat-ai {result['machine']['pipecat']} · "
        f"commit {result['machine']['commit']}",
        "",
        f"Command: `{result['command']}`",
        "",
        "| measurement | n | p50 ms | p99 ms | max ms | mean ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} "
            f"| {s['mean']:.1f} |"
        )
    r = result["ratios"]
    lines += [
        "",
        f"**Baseline / voicepool (client, SSE): p50 {r['p50']}x, p99 {r['p99']}x** "
        f"(server-side queued→ready: p50 {r['p50_server']}x, p99 {r['p99_server']}x)",
        "",
        "Where voicepool's time goes (server timestamps, one clock):",
        "",
        "| phase | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in result["voicepool_phases"].items():
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += [
        "",
        "Where the baseline's time goes (the child's own clocks; the rest is interpreter "
        "start and exit):",
        "",
        "| phase | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in result["baseline_phases"].items():
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += load_markdown(result)
    lines += ["", *[f"- {note}" for note in result["notes"]], ""]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--sessions", type=int, default=100, help="measured voicepool sessions")
    parser.add_argument("--baseline", type=int, default=20, help="measured fresh processes")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--capacity", type=int, default=60, help="sessions per worker")
    parser.add_argument("--burst", type=int, default=50, help="sessions created at once (0: skip)")
    parser.add_argument(
        "--live", type=int, default=200, help="sessions kept live for the loaded phase (0: skip)"
    )
    parser.add_argument("--warmup", type=int, default=6, help="unmeasured sessions first")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between session starts (0: at once)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    facts = machine_facts()
    started = time.monotonic()
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so every finally runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    with tempfile.TemporaryDirectory(prefix="vp-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"baseline: {args.baseline} fresh processes", flush=True)
        baseline = run_baseline(args.baseline, tmp / "baseline.log")

        print(f"voicepool: {args.workers} workers x {args.capacity} slots", flush=True)
        system = start_system(tmp, args.workers, args.capacity)
        try:
            token = system.create_user("bench")
            concurrency = args.workers * args.capacity
            redis_url = system.redis_server.url if system.redis_server else ""
            # Warm-up, one at a time: first requests, connections, each worker's first sessions.
            asyncio.run(run_sessions(system.api_url, redis_url, token, args.warmup, 0.0, 1))
            vp = asyncio.run(
                run_sessions(
                    system.api_url, redis_url, token, args.sessions, args.interval, concurrency
                )
            )
            burst: list[SessionRun] = []
            if args.burst:
                print(f"voicepool: burst of {args.burst}", flush=True)
                burst = asyncio.run(
                    run_sessions(system.api_url, redis_url, token, args.burst, 0.0, args.burst)
                )
            loaded: list[SessionRun] = []
            if args.live:
                print(f"voicepool: filling the pool with {args.live} live sessions", flush=True)
                live, fill_s = asyncio.run(fill_pool(system.api_url, token, args.live))
                try:
                    before = asyncio.run(still_live(system.api_url, token, live))
                    print(f"voicepool: steady rate again, {before} live", flush=True)
                    room = max(1, concurrency - args.live)
                    loaded = asyncio.run(
                        run_sessions(
                            system.api_url, redis_url, token, args.sessions, args.interval, room
                        )
                    )
                    after = asyncio.run(still_live(system.api_url, token, live))
                finally:
                    asyncio.run(end_sessions(system.api_url, token, live))
        except Exception:
            print(f"the voicepool run failed; logs:\n{system.log_tail()}", file=sys.stderr)
            raise
        finally:
            system.stop()

    client = summary([r.sse_ready_s for r in vp])
    server = summary([r.state_ts["ready"] - r.state_ts["queued"] for r in vp])
    base = summary([r.ready_s for r in baseline])
    results = {
        "voicepool: POST → ready on SSE (client)": client,
        "voicepool: POST → ready by Redis XREAD (client)": summary([r.xread_ready_s for r in vp]),
        "voicepool: queued → ready (server ts)": server,
        "baseline: spawn → ready (fresh python process)": base,
        "baseline: spawn → exited": summary([r.exit_s for r in baseline]),
    }
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "ready_measured_by": "SSE (GET /api/sessions/{id}/events); XREAD alongside for comparison",
        "results": results,
        "ratios": {
            "p50": ratio(base["p50"], client["p50"]),
            "p99": ratio(base["p99"], client["p99"]),
            "p50_server": ratio(base["p50"], server["p50"]),
            "p99_server": ratio(base["p99"], server["p99"]),
        },
        "voicepool_phases": phases(vp),
        "load": load_rows(vp, burst, loaded)
        | (
            {"fill_s": round(fill_s, 2), "live_ready_before": before, "live_ready_after": after}
            if args.live
            else {"fill_s": 0.0, "live_ready_before": 0, "live_ready_after": 0}
        ),
        "baseline_phases": {
            "imports": summary([r.imports_s for r in baseline]),
            "profile prepare (Silero load)": summary([r.prepare_s for r in baseline]),
            "Pipeline + PipelineWorker": summary([r.pipeline_s for r in baseline]),
        },
        "notes": [
            f"voicepool: {args.sessions} sessions after {args.warmup} warm-up, one started every "
            f"{args.interval} s, at most {args.workers * args.capacity} live; each ended with "
            "DELETE once ready.",
            "The baseline builds its Pipeline and PipelineWorker before ready; a voicepool "
            "session builds them when the client connects, after ready.",
            "The baseline ran first, with no voicepool process running.",
            f"Burst: {args.burst} sessions POSTed at once (each ended with DELETE once ready). "
            f"Loaded: {args.live} sessions first made ready and left live (no client; "
            "VOICEPOOL_CONNECT_TIMEOUT=900), then the steady phase again with the same count "
            "and interval; warm steady = the main voicepool phase above, same system.",
            "Defaults changed from 2 workers x 8 slots to 4 x 60, so that the pool can hold "
            "the live sessions plus the steady phase's.",
            f"Total run time {time.monotonic() - started:.0f} s.",
        ],
        "raw": {
            "voicepool": [asdict(r) for r in vp],
            "baseline": [asdict(r) for r in baseline],
        },
    }
    write_results(args.out, "dispatch", result, markdown)


if __name__ == "__main__":
    run_main(main)
