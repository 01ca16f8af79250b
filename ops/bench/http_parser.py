"""The API's HTTP parser: ``httptools`` (bounded heads, the default) against ``h11``.

One invocation, interleaved: each round starts the API (uvicorn, as harness/system.py
starts it, no workers) once per parser, target order rotated per round, and sends it
``--requests`` authenticated requests one at a time on one keep-alive connection
(``GET /api/me`` with a bearer token the API has checked lately: the cost of any request
before its route's own work; httpx in this process), after as many to warm it up.
Measured per request: the API process's CPU (psutil, over the run) and the client's wall
time from sending to the answer read. min / median / max over the rounds.

Not included: a route's own work (the same under either parser), TLS (a reverse proxy's),
and many connections at once (``ops/bench/api_throughput.py``).

    .venv/bin/python ops/bench/http_parser.py [--rounds 3] [--requests 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from measure import bench_process, cpu_seconds, run_facts, run_main, write_results

from harness.system import System

HERE = Path(__file__).resolve().parent
PARSERS = ("h11", "httptools")
BASELINE = "h11"


async def _requests(url: str, token: str, n: int) -> float:
    """Send ``n`` requests one after another; the wall seconds they took."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        began = time.perf_counter()
        for _ in range(n):
            answer = await client.get("/api/me")
            answer.raise_for_status()
        return time.perf_counter() - began


def measure_one(parser: str, requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vp-bench-http-") as tmp:
        system = System(Path(tmp), settings={"VOICEPOOL_API_HTTP": parser}).start(workers=0)
        try:
            token = system.create_user("bench")
            assert system.api is not None
            api = psutil.Process(system.api.pid)
            asyncio.run(_requests(system.api_url, token, requests))  # warm: token cached
            cpu_before = cpu_seconds(api)
            wall = asyncio.run(_requests(system.api_url, token, requests))
            cpu = cpu_seconds(api) - cpu_before
        finally:
            system.stop()
    return {"api_cpu_us": cpu / requests * 1e6, "wall_us": wall / requests * 1e6}


def _spread(values: list[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def measure(rounds: int, requests: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in PARSERS}
    for n in range(rounds):
        order = PARSERS[n % len(PARSERS) :] + PARSERS[: n % len(PARSERS)]
        for parser in order:
            runs[parser].append(measure_one(parser, requests))
            print(f"round {n + 1} {parser}: {runs[parser][-1]}", file=sys.stderr, flush=True)
    return {
        "rounds": rounds,
        "requests": requests,
        "targets": {
            p: {m: _spread([r[m] for r in runs[p]]) for m in ("api_cpu_us", "wall_us")}
            for p in PARSERS
        },
    }


def markdown(result: dict[str, Any]) -> str:
    facts, rows = result["machine"], result["targets"]
    lines = [
        "# The API's HTTP parser: httptools (bounded heads) against h11",
        "",
        f"{result['date']} · {facts['nproc']} CPUs · Python {facts['python']} · "
        f"commit {facts['commit']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['rounds']} rounds, parsers interleaved; {result['requests']} cached-token "
        "`GET /api/me` one at a time per run, on one keep-alive connection.",
        "",
        "| parser | API CPU per request, µs: min / median / max | "
        "request to answer, µs: min / median / max |",
        "|---|---:|---:|",
    ]
    for parser in PARSERS:
        c, w = rows[parser]["api_cpu_us"], rows[parser]["wall_us"]
        lines.append(
            f"| {parser} | {c[0]:.0f} / {c[1]:.0f} / {c[2]:.0f} | "
            f"{w[0]:.0f} / {w[1]:.0f} / {w[2]:.0f} |"
        )
    fast, base = rows["httptools"], rows[BASELINE]
    lines += [
        "",
        f"httptools / h11, median: API CPU {fast['api_cpu_us'][1] / base['api_cpu_us'][1]:.2f}x, "
        f"request to answer {fast['wall_us'][1] / base['wall_us'][1]:.2f}x.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.requests)
    result |= run_facts(__file__)
    write_results(args.out, "http_parser", result, markdown)


if __name__ == "__main__":
    run_main(main)
