"""Autoscaling under a burst: the production ScaledObject's formula driving real workers.

The real system (harness/system.py: embedded Redis, the API, one `server` worker, as
minReplicaCount says), a real Prometheus (Debian's `prometheus`) scraping the API every
5 s, and ops/scale/keda_loop.py reading the rendered ScaledObject of
deploy/k8s/overlays/production (query, threshold, polling interval, HPA behavior) and
starting or draining `voicepool worker` processes with the Deployment's --capacity. Real
callers arrive at random (Poisson, fixed seed): idle, then ten times the rate, then idle
again. Each asks for an echo session over the WebSocket transport, waits in the queue
if it must, connects (harness/ws_client.py's ProtobufClient, streaming the spoken
fixture in real time), stays --hold seconds and hangs up with DELETE; a call that its
draining worker hands to another one connects again and carries on.

Reported: how long after the burst began the pool had slots for it, queue waits,
sessions expired (target 0) or refused, calls moved by scale-down and none cut, idle
slots afterwards, and a timeline. To fit about four minutes, scale-down is compressed
(window and policy period shorter, drain timeout and grace shorter); scale-up, the HPA
sync period (15 s), the polling interval and the queue TTL are as deployed.

    .venv/bin/python ops/bench/autoscale.py [--seed 7] [--hold 10] [--idle-rate 0.1]

Results: ops/bench/results/autoscale.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from measure import bench_process, machine_facts, percentile, run_main, write_results
from prometheus_client.parser import text_string_to_metric_families

from harness.system import System
from harness.ws_client import ProtobufClient
from shared.connections import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops" / "scale"))
import keda_loop  # noqa: E402  # ops/scale/keda_loop.py

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURE = ROOT / "tests" / "fixtures" / "hello.wav"
POOL = "server"
BODY = {"transport": "websocket", "profile": "echo", "pool": POOL}
SCRAPE_S = 5  # the API's scrape interval deploy/k8s/README.md asks for
QUEUE_TTL_S = 30  # VOICEPOOL_QUEUE_TTL as deployed (base ConfigMap)
POLL_S = 0.25  # callers poll their session's state this often
FINAL = {"ended", "failed", "expired", "cancelled"}


# --- callers ------------------------------------------------------------------------------


@dataclass
class Call:
    arrived_s: float  # since the run began
    phase: str
    status: int = 0
    refusal: str = ""
    session_id: str = ""
    pool: str = ""
    wait_s: float = math.nan  # POST -> ready (queue wait and start)
    heard_echo: bool = False
    moves: int = 0  # handed to another worker by a drain, and connected again
    final: str = ""
    reason: str = ""
    error: str = ""


async def _state(api: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    response = await api.get(f"/api/sessions/{sid}")
    response.raise_for_status()
    return dict(response.json())


async def _until_ready(api: httpx.AsyncClient, sid: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str((await _state(api, sid))["status"])
        if status == "ready" or status in FINAL:
            return status
        await asyncio.sleep(POLL_S)
    return "timeout"


async def _connect(api: httpx.AsyncClient, sid: str) -> ProtobufClient:
    connect = await api.post(f"/api/sessions/{sid}/connect")
    connect.raise_for_status()
    return await ProtobufClient.connect(connect.json()["ws_url"], FIXTURE)


async def caller(api: httpx.AsyncClient, call: Call, hold_s: float) -> None:
    sent = time.monotonic()
    try:
        created = await api.post("/api/sessions", json=BODY)
        call.status = created.status_code
        if created.status_code != 202:
            call.refusal = created.json().get("detail", {}).get("code", "")
            return
        call.session_id = sid = created.json()["session_id"]
        # A queued session expires after the queue TTL: wait a little longer than that.
        if await _until_ready(api, sid, QUEUE_TTL_S + 15) != "ready":
            return
        call.wait_s = time.monotonic() - sent
        client = await _connect(api, sid)
        hang_up = time.monotonic() + hold_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.closed.wait(), max(hang_up - time.monotonic(), 0))
            call.heard_echo = call.heard_echo or client.loudest_rms() > 300
            if not client.closed.is_set() or time.monotonic() >= hang_up:
                break
            # The socket closed under us: the worker drained and handed the call on.
            await client.close()
            if await _until_ready(api, sid, QUEUE_TTL_S + 15) != "ready":
                return
            call.moves += 1
            client = await _connect(api, sid)
        await api.delete(f"/api/sessions/{sid}")
        await client.close()
    except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        call.error = f"{type(exc).__name__}: {exc}"


def arrivals(phases: list[tuple[str, float, float]], seed: int) -> list[tuple[float, str]]:
    """Poisson arrival times (seconds from the start) for phases of (name, seconds, rate)."""
    rng = random.Random(seed)
    times: list[tuple[float, str]] = []
    start = 0.0
    for name, length, rate in phases:
        t = start + rng.expovariate(rate)
        while t < start + length:
            times.append((t, name))
            t += rng.expovariate(rate)
        start += length
    return times


# --- what the fleet looks like, each second -------------------------------------------------


def pool_gauges(text: str) -> dict[str, float]:
    """The API's view of the pool: demand (live sessions, queued included), queued,
    slots of serving workers, workers."""
    found = {"demand": 0.0, "queued": 0.0, "slots": 0.0, "workers": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pool") != POOL:
                continue
            if sample.name == "voicepool_live_sessions":
                found["demand"] += sample.value
                if sample.labels.get("state") == "queued":
                    found["queued"] = sample.value
            elif sample.name == "voicepool_pool_capacity_sessions":
                found["slots"] = sample.value
            elif sample.name == "voicepool_pool_workers":
                found["workers"] = sample.value
    return found


# --- Prometheus ------------------------------------------------------------------------------


def start_prometheus(tmp: Path, api_port: int) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus not found: apt-get install prometheus (make test-deps)")
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
        "scrape_configs:\n  - job_name: voicepool-api\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{api_port}']\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("prometheus did not start")


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    phases: list[tuple[str, float, float]]
    hold_s: float
    calls: list[Call] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    exits: list[tuple[int, float, int | None]] = field(default_factory=list)


async def run(args: argparse.Namespace, system: System, prometheus: str, scaled: list[Any]) -> Run:
    scaling = keda_loop.with_overrides(
        keda_loop.Scaling.from_manifests(keda_loop.render(args.manifests), POOL), args
    )
    idle, burst = args.idle_rate, args.idle_rate * args.burst_factor
    phases = [("idle", args.idle_s, idle), ("burst", args.burst_s, burst),
              ("after", args.after_s, idle)]  # fmt: skip
    result = Run(phases, args.hold)
    token = system.create_user("autoscale")
    workers = keda_loop.Workers(
        spawn=lambda: system.start_worker(capacity=scaling.capacity, pool=POOL),
        grace_s=scaling.grace_s,
        running=scaled,
    )
    started = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - started, 2)

    def decided(d: keda_loop.Decision) -> None:
        result.decisions.append({**asdict(d), "t": now()})
        if d.desired != d.current:
            print(f"{now():6.1f}s  {d.value} -> replicas {d.current} -> {d.desired}", flush=True)

    loop = keda_loop.Autoscaler(
        scaling, keda_loop.PrometheusSource(prometheus), workers,
        hpa_sync_s=args.hpa_sync, on_decision=decided,
    )  # fmt: skip
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with (
        httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=30, limits=limits)
        as api,
        httpx.AsyncClient(timeout=5) as scraper,
    ):  # fmt: skip

        async def sample() -> None:
            while not stop.is_set():
                workers.reap()  # drains seen to end within a second, not a poll
                with contextlib.suppress(httpx.HTTPError):
                    text = (await scraper.get(f"{system.api_url}/metrics")).text
                    result.timeline.append({
                        "t": now(), **pool_gauges(text),
                        "running": len(workers.running), "draining": len(workers.terminating),
                        "arrived": sum(1 for c in result.calls),
                    })  # fmt: skip
                await asyncio.sleep(1)

        async def arrive() -> None:
            tasks = []
            for at, phase in arrivals(phases, args.seed):
                await asyncio.sleep(max(at - (time.monotonic() - started), 0))
                call = Call(arrived_s=now(), phase=phase)
                result.calls.append(call)
                tasks.append(asyncio.create_task(caller(api, call, args.hold)))
            await asyncio.gather(*tasks)

        background = [asyncio.create_task(loop.run(stop)), asyncio.create_task(sample())]
        await arrive()
        # The last calls ended: watch the pool settle back to its minimum.
        for _ in range(int(args.settle_s)):
            if len(workers.running) <= scaling.min_replicas and not workers.terminating:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*background)
        for call in result.calls:
            if call.session_id:
                with contextlib.suppress(httpx.HTTPError):
                    state = await _state(api, call.session_id)
                    call.final, call.reason = state["status"], state.get("reason") or ""
                    call.pool = state["pool"]
    result.exits = workers.exits
    return result


# --- the numbers ------------------------------------------------------------------------------


def since(t: float | None, start: float) -> float | None:
    return None if t is None else round(t - start, 1)


def analyse(r: Run, scaling: keda_loop.Scaling, args: argparse.Namespace) -> dict[str, Any]:
    burst_start = r.phases[0][1]
    burst_end = burst_start + r.phases[1][1]
    line = r.timeline
    in_burst = [s for s in line if burst_start <= s["t"] <= burst_end + r.hold_s]
    peak = max((s["demand"] for s in in_burst), default=0)
    queued = [s["t"] for s in in_burst if s["queued"] > 0]
    first_up = next(
        (d["t"] for d in r.decisions if d["t"] >= burst_start and d["desired"] > d["current"]),
        None,
    )
    max_running = max((s["running"] for s in line), default=0)
    # Back at the minimum: the first sample after the burst with no more than
    # minReplicaCount running and none draining.
    settled = next(
        (s["t"] for s in line
         if s["t"] > burst_end and s["running"] <= scaling.min_replicas and not s["draining"]),
        None,
    )  # fmt: skip
    after = [s for s in line if s["t"] > burst_end + r.hold_s]
    idle_after = [s["slots"] - s["demand"] for s in after]
    waits = {
        phase: [c.wait_s for c in r.calls if c.phase == phase and not math.isnan(c.wait_s)]
        for phase in ("idle", "burst", "after")
    }
    refused: dict[str, int] = {}
    for c in r.calls:
        if c.refusal:
            refused[c.refusal] = refused.get(c.refusal, 0) + 1
    reasons: dict[str, int] = {}
    for c in r.calls:
        if c.final:
            key = f"{c.final}/{c.reason}"
            reasons[key] = reasons.get(key, 0) + 1

    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {"n": 0}
        return {"n": len(values), "p50": round(percentile(values, 50), 2),
                "p95": round(percentile(values, 95), 2), "max": round(max(values), 2)}  # fmt: skip

    return {
        "burst_start_s": burst_start,
        "burst_end_s": burst_end,
        "calls": len(r.calls),
        "calls_by_phase": {p: sum(1 for c in r.calls if c.phase == p) for p, _, _ in r.phases},
        "peak_demand_in_burst": peak,
        "first_scale_up_after_burst_s": since(first_up, burst_start),
        # From then on every session found a slot at once: the slots caught up.
        "queue_last_nonempty_after_burst_s": since(queued[-1], burst_start) if queued else 0.0,
        "max_workers": max_running,
        "max_slots": max((s["slots"] for s in line), default=0),
        "back_to_min_after_burst_end_s": since(settled, burst_end),
        "wait_s": {phase: stats(v) for phase, v in waits.items()},
        "expired": sum(1 for c in r.calls if c.final == "expired"),
        "refused": refused,
        "spilled": sum(1 for c in r.calls if c.pool and c.pool != POOL),
        "errors": [c.error for c in r.calls if c.error],
        "ended_by": reasons,
        "cut": sum(1 for c in r.calls if c.final and c.reason not in ("client_ended", "")),
        "moved_by_drain": sum(c.moves for c in r.calls),
        "heard_echo": sum(1 for c in r.calls if c.heard_echo),
        "connected": sum(1 for c in r.calls if not math.isnan(c.wait_s)),
        "idle_slots_after": {
            "mean": round(sum(idle_after) / len(idle_after), 2) if idle_after else None,
            "at_end": idle_after[-1] if idle_after else None,
            "slot_seconds": round(sum(idle_after), 1),  # one sample a second
        },
        "worker_exits": [{"pid": p, "drain_s": s, "code": c} for p, s, c in r.exits],
        "drain_max_s": max((s for _, s, _ in r.exits), default=None),
    }


def summary_rows(m: dict[str, Any]) -> list[tuple[str, Any]]:
    idle = m["idle_slots_after"]
    by_phase = ", ".join(str(v) for v in m["calls_by_phase"].values())
    return [
        ("calls (idle, burst, after)", f"{m['calls']} ({by_phase})"),
        ("peak demand in the burst (queued + live)", f"{m['peak_demand_in_burst']:.0f}"),
        ("first scale-up decision after the burst began", f"{m['first_scale_up_after_burst_s']} s"),
        (
            "slots caught up (no session queued any more), after the burst began",
            f"{m['queue_last_nonempty_after_burst_s']} s",
        ),
        ("most workers (slots)", f"{m['max_workers']} ({m['max_slots']:.0f})"),
        ("sessions expired in the queue", m["expired"]),
        ("sessions refused", ", ".join(f"{k} {v}" for k, v in m["refused"].items()) or "none"),
        ("sessions spilled to another pool", m["spilled"]),
        ("connected / heard their echo", f"{m['connected']} / {m['heard_echo']}"),
        ("calls moved by a draining worker (then connected again)", m["moved_by_drain"]),
        ("calls cut (ended for any reason but the caller's DELETE)", m["cut"]),
        (
            "back to minReplicaCount after the burst ended",
            f"{m['back_to_min_after_burst_end_s']} s",
        ),
        ("scaled-down workers' drain, SIGTERM to exit (max)", f"{m['drain_max_s']} s"),
        (
            "idle slots of the pool after the burst: mean / at the end",
            f"{idle['mean']} / {idle['at_end']}",
        ),
        ("idle slot-seconds after the burst", idle["slot_seconds"]),
    ]


def markdown(result: dict[str, Any]) -> str:
    m, s, o = result["measured"], result["scaling"], result["settings"]
    facts = result["machine"]
    waits = m["wait_s"]

    def wait_row(phase: str) -> str:
        w = waits[phase]
        if not w.get("n"):
            return f"| {phase} | 0 | | | |"
        return f"| {phase} | {w['n']} | {w['p50']} | {w['p95']} | {w['max']} |"

    rows = []
    for sample in result["timeline"]:
        if sample["t"] % 5 < 1:  # one row every 5 s
            rows.append(
                f"| {sample['t']:.0f} | {sample['phase']} | {sample['arrived']} | "
                f"{sample['demand']:.0f} | {sample['queued']:.0f} | {sample['slots']:.0f} | "
                f"{sample['running']} | {sample['draining']} |"
            )
    ended = ", ".join(f"{k} {v}" for k, v in sorted(m["ended_by"].items()))
    return "\n".join([
        "# Autoscaling: a burst against the production ScaledObject",
        "",
        f"{result['date']} · {facts['nproc']} CPUs · Python {facts['python']} · "
        f"commit {facts['commit']} · load average at start "
        f"{', '.join(map(str, facts['loadavg_at_start']))}",
        "",
        f"Command: `{result['command']}`",
        "",
        "What ran: the API, an embedded Redis and `voicepool worker` processes "
        "(harness/system.py); Debian's Prometheus scraping the API every "
        f"{o['scrape_s']} s; ops/scale/keda_loop.py applying `{s['name']}` as rendered from "
        "deploy/k8s/overlays/production: "
        f"`{s['query']}` over threshold {s['threshold']} per worker of "
        f"{s['capacity']} slots, polling every {s['polling_interval_s']:.0f} s, HPA sync "
        f"{o['hpa_sync_s']:.0f} s, replicas {s['min_replicas']}..{s['max_replicas']}, "
        f"scale-up policies {s['scale_up']}. Compressed to fit the run: scale-down "
        f"window {s['scale_down_window_s']:.0f} s and one pod per "
        f"{s['scale_down_period_s']:.0f} s (deployed: 300 s, 60 s), drain timeout "
        f"{o['drain_timeout_s']:.0f} s and grace {s['grace_s']:.0f} s (deployed: 300 s, "
        "330 s). Callers: echo sessions over the WebSocket transport, Poisson arrivals "
        f"(seed {o['seed']}): {o['phases']}, each connected for {o['hold_s']:.0f} s and "
        "ended with DELETE."
        + (
            f" Plus a fixed pool `warm` of {o['warm_workers']} workers that sessions the "
            "server pool refuses spill to (`VOICEPOOL_POOL_FALLBACKS=server=warm`); demand, "
            "slots and workers below are the server pool's."
            if o.get("warm_workers")
            else ""
        ),
        "",
        "| measure | value |",
        "|---|---:|",
        *(f"| {label} | {value} |" for label, value in summary_rows(m)),
        "",
        f"How sessions ended: {ended}. Client errors: {len(m['errors'])}.",
        "",
        "Wait from the request to `ready` (seconds; queue wait plus the worker's start of "
        "the session):",
        "",
        "| phase | n | p50 | p95 | max |",
        "|---|---:|---:|---:|---:|",
        wait_row("idle"), wait_row("burst"), wait_row("after"),
        "",
        "Timeline (every 5 s; demand = queued + live sessions, slots = serving workers' "
        "slots, both from the API's gauges; workers = processes running, and draining):",
        "",
        "| t s | phase | arrived | demand | queued | slots | workers | draining |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "In a cluster add to the scale-up: Prometheus' scrape of the API (up to "
        f"{o['scrape_s']} s here too), pod scheduling and image pull (a cached image: about "
        "a second), and KEDA's metrics adapter; a worker here is a process start.",
        "",
    ])  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keda_loop.add_arguments(parser)
    parser.set_defaults(scale_down_window=30.0, scale_down_period=10.0, grace=40.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--idle-rate", type=float, default=0.1, help="calls per second")
    parser.add_argument("--burst-factor", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--burst-s", type=float, default=40.0)
    parser.add_argument("--after-s", type=float, default=60.0)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds connected per call")
    parser.add_argument("--settle-s", type=float, default=120.0, help="most to wait at the end")
    parser.add_argument(
        "--warm-workers",
        type=int,
        default=0,
        help="a fixed pool `warm` of this many workers that the server pool's refused "
        "sessions spill to (VOICEPOOL_POOL_FALLBACKS=server=warm)",
    )
    parser.add_argument("--name", default="autoscale", help="results file name")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    bench_process()
    facts = machine_facts()
    scaling = keda_loop.with_overrides(
        keda_loop.Scaling.from_manifests(keda_loop.render(args.manifests), POOL), args
    )
    tmp = Path(tempfile.mkdtemp(prefix="voicepool-autoscale-"))
    system = System(tmp, settings={
        "VOICEPOOL_MAX_SESSIONS_PER_USER": "0", "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
        "VOICEPOOL_MAX_REQUESTS_PER_CREDENTIAL": "0", "VOICEPOOL_LOG_LEVEL": "WARNING",
        "VOICEPOOL_QUEUE_TTL": str(QUEUE_TTL_S),
        "VOICEPOOL_DRAIN_TIMEOUT": str(args.drain_timeout),
    })  # fmt: skip
    if args.warm_workers:
        system.settings.update(
            {"VOICEPOOL_POOLS": f"{POOL},warm", "VOICEPOOL_POOL_FALLBACKS": f"{POOL}=warm"}
        )
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        print(f"starting the system: 1 worker x {scaling.capacity} slots", flush=True)
        system.start(workers=scaling.min_replicas, capacity=scaling.capacity)
        scaled = list(system.workers)  # the loop's; warm workers are not
        for _ in range(args.warm_workers):
            system.start_worker(capacity=scaling.capacity, pool="warm")
        system.wait_ready(len(system.workers))
        prometheus, url = start_prometheus(tmp, system.api_port)
        r = asyncio.run(run(args, system, url, scaled))
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        system.stop()
    measured = analyse(r, scaling, args)
    burst_start, burst_end = measured["burst_start_s"], measured["burst_end_s"]
    for sample in r.timeline:
        t = sample["t"]
        sample["phase"] = "idle" if t < burst_start else "burst" if t < burst_end else "after"
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "ops/bench/autoscale.py", *sys.argv[1:]]),
        "machine": facts,
        "scaling": {
            "name": scaling.name, "query": scaling.query, "threshold": scaling.threshold,
            "capacity": scaling.capacity, "polling_interval_s": scaling.polling_interval_s,
            "min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
            "scale_up": ", ".join(
                f"{p.type} {p.value}/{p.period_s:.0f}s" for p in scaling.scale_up.policies
            ),
            "scale_down_window_s": scaling.scale_down.stabilization_s,
            "scale_down_period_s": scaling.scale_down.policies[0].period_s,
            "grace_s": scaling.grace_s,
        },
        "settings": {
            "seed": args.seed, "hold_s": args.hold, "scrape_s": SCRAPE_S,
            "hpa_sync_s": args.hpa_sync, "drain_timeout_s": args.drain_timeout,
            "queue_ttl_s": QUEUE_TTL_S, "warm_workers": args.warm_workers,
            "phases": ", ".join(f"{n} {s:.0f} s at {rate:g}/s" for n, s, rate in r.phases),
        },
        "measured": measured,
        "timeline": r.timeline,
        "decisions": [d for d in r.decisions if d["desired"] != d["current"]],
        "calls": [asdict(c) for c in r.calls],
    }  # fmt: skip
    write_results(args.results, args.name, result, markdown)


if __name__ == "__main__":
    run_main(main)
