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

What a hop costs: after the sessions of each voicepool rep, this process times a Redis
round trip (``HGET`` on the target's redis-server) back to back and after 50 ms of quiet,
as each hop of a start finds the processes it wakes (``round_trip``). Between the request
and ``ready`` a WebSocket ``echo`` start makes three Redis round trips one after another
(the API: the create script that records, enqueues and rings; the worker: the claim, then
the take that also moves it to ``ready``, while arq reads the job) and the API sees
``ready`` on a fourth (its blocking read), between four processes; an in-process runner
makes none.

With ``--burst N``, each rep opens N sessions at once instead, as ``anchor.py``'s burst
does, and every stage is reported from the burst's start (p50 / p90, max): where a
burst's starts wait. The client streams the audio of every connected session from one
process meanwhile, so ``answer`` and ``bot-ready`` include its own loop's delay too.

    .venv/bin/python ops/bench/start_trace.py [--sessions 30] [--reps 3] [--before REV]
    .venv/bin/python ops/bench/start_trace.py --burst 100 [--reps 3] [--before REV]

Results: ops/bench/results/start_trace.{json,md} (a burst: start_trace_burst.{json,md});
the Markdown table is printed.
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
from measure import before_tree, bench_process, client_collector_paused, machine_facts

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
            with client_collector_paused():
                sent = time.time()
                opened = await anchor.open_session(target, http, wav)
            await anchor.wait_echo(opened)
            await anchor.close(target, http, opened)
            run = opened.run
            if i >= WARM_UP and not run.error and opened.session:
                # Read once the call is over: the client's loop stays free while it talks.
                stages = {"answer": run.ready_s * 1000, "bot-ready": run.talk_s * 1000}
                stages |= await server_stages(events, opened.session, sent)
                if len(stages) == len(STAGES):
                    traced.append(stages)
            await asyncio.sleep(PAUSE_S)
    await events.aclose()
    return traced


async def trace_burst(target: anchor.Voicepool, count: int, wav: Path) -> list[dict[str, float]]:
    """Each session of a burst of ``count`` (opened at once, as ``anchor.py``'s burst), its
    stages in ms from the burst's start."""
    assert target.system is not None and target.system.redis_server is not None
    events = redis_client(target.system.redis_server.url)
    async with target.http(count + 8) as http:
        for _ in range(WARM_UP):
            warm = await anchor.open_session(target, http, wav)
            await anchor.wait_echo(warm)
            await anchor.close(target, http, warm)
        wall, mono = time.time(), time.perf_counter()
        opened = await asyncio.gather(
            *(anchor.open_session(target, http, wav) for _ in range(count))
        )
        await asyncio.gather(*(anchor.wait_echo(o) for o in opened))
        await asyncio.gather(*(anchor.close(target, http, o) for o in opened))
    traced: list[dict[str, float]] = []
    for one in opened:
        if one.run.error or not one.session:
            continue
        sent_ms = (one.t0 - mono) * 1000  # the client sends its requests as its loop gets to them
        stages = {"answer": sent_ms + one.run.ready_s * 1000}
        stages["bot-ready"] = sent_ms + one.run.talk_s * 1000
        stages |= await server_stages(events, one.session, wall)
        if len(stages) == len(STAGES):
            traced.append(stages)
    await events.aclose()
    return traced


async def server_stages(events: Any, session: str, since: float) -> dict[str, float]:
    """The session's first event of each server-stamped state, in ms after ``since``."""
    stages: dict[str, float] = {}
    for _id, fields in await events.xrange(keys.session_events(session)):
        state = json.loads(fields["data"]).get("state", "")
        if fields["type"] == EventType.SESSION_STATE and state in SERVER_STATES:
            stages.setdefault(state, (float(fields["ts"]) - since) * 1000)
    return stages


QUIET_S = 0.05  # between the "after quiet" round trips: about a pause between two starts
ROUND_TRIPS = 200


async def round_trip(url: str) -> dict[str, float]:
    """A Redis round trip's time from this process, in ms (p50): back to back, and after
    ``QUIET_S`` with nothing to do, when the processes involved have gone idle."""
    redis = redis_client(url)
    try:
        await redis.hget("vp:bench:probe", "f")  # connected
        timed: dict[str, list[float]] = {"hot": [], "after_quiet": []}
        for kind, pause in (("hot", 0.0), ("after_quiet", QUIET_S)):
            for _ in range(ROUND_TRIPS):
                if pause:
                    await asyncio.sleep(pause)
                began = time.perf_counter()
                await redis.hget("vp:bench:probe", "f")
                timed[kind].append((time.perf_counter() - began) * 1000)
        return {kind: round(statistics.median(values), 3) for kind, values in timed.items()}
    finally:
        await redis.aclose()


def summary(traced: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    previous = None
    for stage in STAGES:
        at = [t[stage] for t in traced]
        steps = [t[stage] - (t[previous] if previous else 0.0) for t in traced]
        rows[stage] = {
            "p50": round(statistics.median(at), 1),
            "p90": round(statistics.quantiles(at, n=10)[-1], 1) if len(at) > 1 else at[0],
            "min": round(min(at), 1),
            "max": round(max(at), 1),
            "step_p50": round(statistics.median(steps), 1),
        }
        previous = stage
    return rows


def markdown(result: dict[str, Any]) -> str:
    keys = list(result["targets"])
    burst = result.get("burst")
    if burst:
        title = f"a burst of {burst} sessions"
        how = (
            f"{burst} sessions opened at once per rep x {result['reps']} reps per target, "
            "interleaved. ms from the burst's start: p50 / p90 (max); step: p50 of the time "
            "since the stage before."
        )
    else:
        title = "one session at a time"
        how = (
            f"{result['sessions']} sessions per rep x {result['reps']} reps per target, "
            "interleaved. ms from the request: p50 (min-max); step: p50 of the time since "
            "the stage before."
        )
    origin = "from the burst's start" if burst else "from request"
    lines = [
        f"# Start trace, {title} ({result['date']})",
        "",
        f"`{result['command']}`; {how}",
        "",
        "| stage | " + " | ".join(f"{k}: {origin} | {k}: step" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
    for stage in STAGES:
        cells = []
        for key in keys:
            row = result["targets"][key]["stages"][stage]
            spread = f"{row['p90']} ({row['max']})" if burst else f"({row['min']}-{row['max']})"
            cells += [f"{row['p50']} {'/ ' if burst else ''}{spread}", f"{row['step_p50']}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    counted = ", ".join(f"{k}: {result['targets'][k]['counted']}" for k in keys)
    lines += ["", f"Sessions counted (all stages seen): {counted}."]
    trips = result.get("redis_round_trip_ms")
    if trips:
        hot, quiet = (trips[k]["p50_per_rep"] for k in ("hot", "after_quiet"))
        lines += [
            "",
            f"A Redis round trip from the client's process, p50 per rep: {_ms_list(hot)} ms back "
            f"to back, {_ms_list(quiet)} ms after {QUIET_S * 1000:.0f} ms of quiet.",
        ]
    return "\n".join(lines) + "\n"


def _ms_list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="counted sessions per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", help="also trace voicepool at this git revision")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="open this many sessions at once per rep instead (results: start_trace_burst.*)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    args = parse_args(argv)
    keys = ["voicepool", anchor.BEFORE] if args.before else ["voicepool"]
    traced: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    hops: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="vp-bench-trace-") as tmp_dir,
        before_tree(args.before, Path(tmp_dir) / "before") as args.before_tree,
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
                    if args.burst:
                        traced[key] += asyncio.run(trace_burst(target, args.burst, wav))
                    else:
                        traced[key] += asyncio.run(trace(target, args.sessions, wav))
                    if key == "voicepool":
                        assert target.system is not None and target.system.redis_server
                        hops.append(asyncio.run(round_trip(target.system.redis_server.url)))
                finally:
                    target.stop()
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["ops/bench/start_trace.py", *(argv or sys.argv[1:])]),
        "machine": machine_facts(),
        "sessions": args.sessions,
        "burst": args.burst,
        "reps": args.reps,
        "before": args.before,
        "targets": {k: {"counted": len(v), "stages": summary(v)} for k, v in traced.items()},
        "redis_round_trip_ms": {
            kind: {"p50_per_rep": [h[kind] for h in hops]} for kind in ("hot", "after_quiet")
        },
    }
    RESULTS.mkdir(exist_ok=True)
    name = "start_trace_burst" if args.burst else "start_trace"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
