"""A new session taken in the step that claims its job, against taken after the claim.

The worker a new session's ring wakes takes the session in the same Lua step as the claim
of its job (``VoicepoolWorker.claim``), if the session's hash says the worker's protocol;
without it (a session made by an API that does not say), the worker takes it one round
trip later, as every start was taken before (``take_ahead``). So both are measured in one
run of the real system (embedded Redis, the API, two workers, as ``anchor.py`` starts it),
alternating session by session: this process creates each session as the API does
(``LiveSessions.create`` with its start job and ring: a WebSocket ``echo`` session, which
the take also moves on to ``ready``) and times it to ``ready``, read from the session's
stream as ``POST /api/start`` waits for it (blocking, on from its ``queued`` event). Then it
ends the session (``DELETE``) and rests 100 ms.

Included: the create step, the ring, the worker's wake, claim and take, the ready event's
way back. Excluded: the HTTP request and answer, the client's connection.

    .venv/bin/python ops/bench/take_at_claim.py [--sessions 100]

Results: ops/bench/results/take_at_claim.{json,md}; the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from arq.connections import create_pool

sys.path.insert(0, str(Path(__file__).parent))
import anchor  # the same system as the anchor's voicepool target
from measure import bench_process, machine_facts, percentile, run_main, write_results

RESULTS = Path(__file__).parent / "results"
WARM_UP = 4  # sessions per arm not counted: first scripts loaded, first pipelines bound
REST_S = 0.1  # between sessions: each start finds its processes idle, as one at a time
ARMS = {"with the claim": True, "after the claim": False}


async def measure(target: anchor.Voicepool, sessions: int) -> dict[str, list[float]]:
    from shared import keys, queue
    from shared.connections import arq_redis_settings
    from shared.fleet import PROTOCOL
    from shared.live import LiveSessions

    assert target.system is not None and target.system.redis_server is not None
    url = target.system.redis_server.url
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    arq = await create_pool(arq_redis_settings(url))
    live = LiveSessions(redis)
    auth = {"Authorization": f"Bearer {target.token}"}
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        async with httpx.AsyncClient(base_url=target.system.api_url, headers=auth) as http:
            owner = (await http.get("/api/me")).json()["id"]
            for i in range(2 * (sessions + WARM_UP)):
                arm = list(ARMS)[i % 2]
                sid = f"bench{i:04d}{int(time.time() * 1000)}"
                fields = {
                    "conversation_id": f"c{sid}", "pool": "server", "transport": "websocket",
                    "profile": "echo", "job_id": sid, "created_ts": repr(time.time()),
                    **({"protocol": str(PROTOCOL)} if ARMS[arm] else {}),
                }  # fmt: skip
                await asyncio.sleep(REST_S)
                start = time.perf_counter()
                job = queue.new_start_job(arq, sid, "server", expires_s=60)
                created = await live.create(sid, owner, fields, job=job)
                last, state = created.event_id, "queued"
                while state not in ("ready", "failed", "ended"):
                    reply = await redis.xread({keys.session_events(sid): last}, block=5000)
                    if not reply:
                        raise RuntimeError(f"session {sid} not ready in 5 s (state {state})")
                    for _stream, entries in reply:
                        for entry_id, event in entries:
                            last = entry_id
                            if event.get("type") == "session.state":
                                state = json.loads(event["data"])["state"]
                elapsed = (time.perf_counter() - start) * 1000
                if state != "ready":
                    raise RuntimeError(f"session {sid} {state} instead of ready")
                if i >= 2 * WARM_UP:
                    times[arm].append(elapsed)
                await http.delete(f"/api/sessions/{sid}")
    finally:
        await arq.aclose()
        await redis.aclose()
    return times


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# A new session taken with its job's claim, or after it",
        "",
        f"{result['date']} · commit {result['machine']['commit']} · load average at start "
        f"{', '.join(map(str, result['machine']['loadavg_at_start']))}",
        "",
        f"Command: `{result['command']}`",
        "",
        "The two alternate session by session in one run. ms from the create request to "
        "`ready` read from the session's stream (this process creates each session as the "
        "API does).",
        "",
        "| take | n | p25 | p50 | p75 | p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm, cell in result["arms"].items():
        lines.append(
            f"| {arm} | {cell['n']} | {cell['p25']} | {cell['p50']} | {cell['p75']} "
            f"| {cell['p90']} |"
        )
    ratio = result["arms"]["with the claim"]["p50"] / result["arms"]["after the claim"]["p50"]
    lines += ["", f"**p50 with the claim / after it: {ratio:.2f}x**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100, help="counted sessions per arm")
    args = parser.parse_args(argv)
    target = anchor.Voicepool()
    with tempfile.TemporaryDirectory(prefix="vp-bench-take-") as tmp:
        try:
            target.start(Path(tmp))
            times = asyncio.run(measure(target, args.sessions))
        finally:
            target.stop()
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["ops/bench/take_at_claim.py", *(argv or sys.argv[1:])]),
        "machine": machine_facts(),
        "arms": {
            arm: {
                "n": len(values),
                **{f"p{q}": round(percentile(values, q), 2) for q in (25, 50, 75, 90)},
            }
            for arm, values in times.items()
        },
        "ms": times,
    }
    write_results(RESULTS, "take_at_claim", result, markdown)


if __name__ == "__main__":
    run_main(main)
