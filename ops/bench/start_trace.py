"""Where one session's start goes, one at a time: the client's clock and the session's own.

Sessions are opened one at a time exactly as ``anchor.py``'s one-at-a-time phase does
(``POST /api/start``, connect, RTVI client-ready → bot-ready, echo, close), against the
same ``voicepool`` target (and, with ``--before REV``, voicepool as it was at REV, the
two interleaved: rotated per rep, 3 reps). For each session it puts on one clock (wall
time; every process here runs on this machine):

* the client: its request sent, the HTTP answer received, ``bot-ready`` received;
* the session's state events as the API and the worker stamped them in Redis:
  ``queued`` (the API has admitted it; the live record written), ``starting`` (a worker
  claimed the job and took it), ``ready`` (prepared; the owner's connect parameters
  set), ``connected`` (its WebSocket attached).

Each stage is reported from the request (p50, min-max over the sessions of all reps)
and as a step from the stage before. Excluded: the session's end, the echo. What the
steps include: ``queued``, the HTTP request into the API, authentication, admission;
``starting``, the enqueue, the worker's wake-up, claim and pickup; ``answer``, the
API's wake on ``ready``, the token minted, the response; ``connected``, the WebSocket
handshake to the worker and its token check; ``bot-ready``, the client's
``client-ready`` and the bot's answer.

    .venv/bin/python ops/bench/start_trace.py [--sessions 30] [--reps 3] [--before REV]

Results: ops/bench/results/start_trace.{json,md}; the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import anchor  # the same target, client and session steps
from measure import bench_process, machine_facts

from shared import keys
from shared.connections import redis_client
from shared.events import EventType

RESULTS = Path(__file__).parent / "results"
WARM_UP = 2  # sessions opened first and not counted: imports, connection pools, caches
PAUSE_S = 0.2  # between sessions, as anchor.py's one-at-a-time phase
STAGES = ("queued", "starting", "ready", "answer", "connected", "bot-ready")
SERVER_STATES = {"queued", "starting", "ready", "connected"}


async def trace(target: anchor.Voicepool, count: int, wav: Path) -> list[dict[str, float]]:
    """Each counted session's stages, in ms from its request."""
    assert target.system is not None and target.system.redis_server is not None
    events = redis_client(target.system.redis_server.url)
    traced: list[dict[str, float]] = []
    async with target.http(4) as http:
        for i in range(WARM_UP + count):
            sent = time.time()
            opened = await anchor.open_session(target, http, wav)
            await anchor.wait_echo(opened)
            await anchor.close(target, http, opened)
            run = opened.run
            if i >= WARM_UP and not run.error and opened.session:
                # Read once the call is over: the client's loop stays free while it talks.
                stages = {"answer": run.ready_s * 1000, "bot-ready": run.talk_s * 1000}
                for _id, fields in await events.xrange(keys.session_events(opened.session)):
                    state = json.loads(fields["data"]).get("state", "")
                    if fields["type"] == EventType.SESSION_STATE and state in SERVER_STATES:
                        stages.setdefault(state, (float(fields["ts"]) - sent) * 1000)
                if len(stages) == len(STAGES):
                    traced.append(stages)
            await asyncio.sleep(PAUSE_S)
    await events.aclose()
    return traced


def summary(traced: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    previous = None
    for stage in STAGES:
        at = [t[stage] for t in traced]
        steps = [t[stage] - (t[previous] if previous else 0.0) for t in traced]
        rows[stage] = {
            "p50": round(statistics.median(at), 1),
            "min": round(min(at), 1),
            "max": round(max(at), 1),
            "step_p50": round(statistics.median(steps), 1),
        }
        previous = stage
    return rows


def markdown(result: dict[str, Any]) -> str:
    keys = list(result["targets"])
    lines = [
        f"# Start trace, one session at a time ({result['date']})",
        "",
        f"`{result['command']}`; {result['sessions']} sessions per rep x {result['reps']} reps "
        "per target, interleaved. ms from the request: p50 (min-max); step: p50 of the "
        "time since the stage before.",
        "",
        "| stage | " + " | ".join(f"{k}: from request | {k}: step" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
    for stage in STAGES:
        cells = []
        for key in keys:
            row = result["targets"][key]["stages"][stage]
            cells += [f"{row['p50']} ({row['min']}-{row['max']})", f"{row['step_p50']}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    counted = ", ".join(f"{k}: {result['targets'][k]['counted']}" for k in keys)
    lines += ["", f"Sessions counted (all stages seen): {counted}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="counted sessions per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", help="also trace voicepool at this git revision")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    args = parse_args(argv)
    keys = ["voicepool", anchor.BEFORE] if args.before else ["voicepool"]
    traced: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    with (
        tempfile.TemporaryDirectory(prefix="vp-bench-trace-") as tmp_dir,
        anchor.before_tree(args.before, Path(tmp_dir) / "before") as args.before_tree,
    ):
        tmp = Path(tmp_dir)
        wav = anchor.phrase_wav(tmp / "phrase.wav")
        for rep in range(1, args.reps + 1):
            shift = (rep - 1) % len(keys)
            for key in keys[shift:] + keys[:shift]:
                target = anchor.make_target(key, args)
                assert isinstance(target, anchor.Voicepool)
                print(f"rep {rep}: {key}", flush=True)
                try:
                    target.start(tmp / f"rep{rep}-{key}")
                    traced[key] += asyncio.run(trace(target, args.sessions, wav))
                finally:
                    target.stop()
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["ops/bench/start_trace.py", *(argv or sys.argv[1:])]),
        "machine": machine_facts(),
        "sessions": args.sessions,
        "reps": args.reps,
        "before": args.before,
        "targets": {k: {"counted": len(v), "stages": summary(v)} for k, v in traced.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "start_trace.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "start_trace.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
