"""The API's HTTP protocol: ``httptools`` (the default) against ``h11`` and uvicorn's own.

Three targets: ``h11``; ``httptools``, voicepool's (shared/http_server.py: heads bounded
as h11 bounds them); and ``httptools, uvicorn's own`` (its
``HttpToolsProtocol`` as is: the API at ``--before``, 3361ab8 by default, with
``VOICEPOOL_API_HTTP=httptools``; nothing else on a request's way differs from it).

One invocation: the three APIs (uvicorn, as harness/system.py starts it, no workers, each
with its own Redis) run side by side; each round sends each in turn, target order rotated
per round, ``--requests`` authenticated requests one at a time on one keep-alive
connection (``GET /api/me`` with a bearer token the API has checked lately: the cost of any
request before its route's own work; httpx in this process), after as many to warm them
up. Short rounds, many of them: this machine's own drift is shared out evenly. Measured
per request: the API process's CPU (psutil, over the round) and the client's wall time
from sending to the answer read; min / median / max over the rounds.

Not included: a route's own work (the same under either parser), TLS (a reverse proxy's),
and many connections at once (``ops/bench/api_throughput.py``).

    .venv/bin/python ops/bench/http_parser.py [--rounds 30] [--requests 300] [--before REV]
                                              [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from measure import (
    before_tree,
    bench_process,
    cpu_seconds,
    min_median_max,
    run_facts,
    run_main,
    spread,
    write_results,
)

from harness.system import System

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS = {
    "h11": "h11",
    "uvicorn": "httptools, uvicorn's own",
    "httptools": "httptools, voicepool's",
}
BEFORE = "3361ab8"  # the last commit with uvicorn's own httptools protocol


async def _requests(client: httpx.AsyncClient, n: int) -> float:
    """Send ``n`` requests one after another; the wall seconds they took."""
    began = time.perf_counter()
    for _ in range(n):
        answer = await client.get("/api/me")
        answer.raise_for_status()
    return time.perf_counter() - began


async def _rounds(
    apis: dict[str, tuple[str, str, psutil.Process]], rounds: int, requests: int
) -> dict[str, list[dict[str, float]]]:
    names = list(apis)
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in names}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            t: await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"})
            )
            for t, (url, token, _api) in apis.items()
        }
        for client in clients.values():
            await _requests(client, requests)  # warm: the token checked, the routes built
        for n in range(rounds):
            for target in names[n % len(names) :] + names[: n % len(names)]:
                api = apis[target][2]
                cpu_before = cpu_seconds(api)
                wall = await _requests(clients[target], requests)
                cpu = cpu_seconds(api) - cpu_before
                runs[target].append(
                    {"api_cpu_us": cpu / requests * 1e6, "wall_us": wall / requests * 1e6}
                )
    return runs


def measure(rounds: int, requests: int, before: Path) -> dict[str, Any]:
    """All three APIs up at once, each round a block of requests to each in turn."""
    with contextlib.ExitStack() as stack:
        apis: dict[str, tuple[str, str, psutil.Process]] = {}
        for target in TARGETS:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vp-bench-http-")))
            settings = {"VOICEPOOL_API_HTTP": "h11" if target == "h11" else "httptools"}
            root = before if target == "uvicorn" else ROOT
            system = System(tmp, settings=settings, root=root).start(workers=0)
            stack.callback(system.stop)
            assert system.api is not None
            token = system.create_user("bench")
            apis[target] = (system.api_url, token, psutil.Process(system.api.pid))
        runs = asyncio.run(_rounds(apis, rounds, requests))
    return {
        "rounds": rounds,
        "requests": requests,
        "targets": {
            t: {m: spread([r[m] for r in runs[t]]) for m in ("api_cpu_us", "wall_us")}
            for t in TARGETS
        },
    }


def markdown(result: dict[str, Any]) -> str:
    facts, rows = result["machine"], result["targets"]
    lines = [
        "# The API's HTTP protocol: httptools (voicepool's) against h11 and uvicorn's own",
        "",
        f"{result['date']} · {facts['nproc']} CPUs · Python {facts['python']} · "
        f"commit {facts['commit']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['rounds']} rounds, targets interleaved; {result['requests']} cached-token "
        "`GET /api/me` one at a time per target and round, on one keep-alive connection. "
        f"uvicorn's own: the API at `{result['before']}`.",
        "",
        "| target | API CPU per request, µs: min / median / max | "
        "request to answer, µs: min / median / max |",
        "|---|---:|---:|",
    ]
    for target, label in TARGETS.items():
        cpu, wall = rows[target]["api_cpu_us"], rows[target]["wall_us"]
        lines.append(f"| {label} | {min_median_max(cpu, 0)} | {min_median_max(wall, 0)} |")
    ours = rows["httptools"]
    lines.append("")
    for base in ("h11", "uvicorn"):
        cpu = ours["api_cpu_us"]["median"] / rows[base]["api_cpu_us"]["median"]
        wall = ours["wall_us"]["median"] / rows[base]["wall_us"]["median"]
        lines.append(
            f"- voicepool's httptools / {TARGETS[base]}, medians: API CPU {cpu:.2f}x, "
            f"request to answer {wall:.2f}x."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--before", default=BEFORE, help="a commit with uvicorn's own protocol")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vp-bench-before-") as tmp:
        with before_tree(args.before, Path(tmp) / "tree") as before:
            assert before is not None
            result = measure(args.rounds, args.requests, before)
    result |= {"before": args.before} | run_facts(__file__)
    write_results(args.out, "http_parser", result, markdown)


if __name__ == "__main__":
    run_main(main)
