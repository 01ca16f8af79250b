"""Event path benchmark: publish, persist, and fan out to SSE subscribers.

Each number comes with a baseline measured in the same run on the same
machine, so the ratio means something on a shared, noisy host:

1. publish: events/s through ``LiveSessions.publish`` (the Lua script that
   assigns seq and writes both streams) vs. a bare XADD of the same fields.
2. persist: events/s the persister stores (consumer group read, one
   transaction per batch, idempotent insert, XACK, trim) into SQLite and
   PostgreSQL, with zero loss checked, vs. a bare multi-row INSERT of the
   same rows into the same database.
3. fan-out: delivery latency from publish to receipt for N SSE subscribers on
   one API process vs. N direct Redis XREAD readers.

    .venv/bin/python ops/bench/events.py [--events 20000] [--subscribers 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from api.persister import Persister  # noqa: E402
from shared import keys  # noqa: E402
from shared.connections import EmbeddedRedis, redis_client  # noqa: E402
from shared.live import LiveSessions  # noqa: E402
from shared.models import Conversation, EventRecord, User, VoiceSession  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Store, migrate_async  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.system import System  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PUBLISHERS = 32  # concurrent publishing tasks (a worker's sessions publish side by side)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def bench_publish(redis_url: str, events: int) -> dict[str, float]:
    redis = redis_client(redis_url)
    await redis.flushall()
    live = LiveSessions(redis)
    for i in range(PUBLISHERS):
        await live.create(f"s{i}", "u", {"conversation_id": "c"})
    per_task = events // PUBLISHERS
    data = {"turn": 1, "duration_s": 1.234}

    async def ours(sid: str) -> None:
        for _ in range(per_task):
            await live.publish(sid, "user.turn_stopped", data)

    async def bare(sid: str) -> None:
        fields = {"sid": sid, "cid": "c", "seq": 1, "ts": time.time(), "type": "x",
                  "data": json.dumps(data)}  # fmt: skip
        for _ in range(per_task):
            await redis.xadd(f"bare:{sid}", fields)

    started = time.perf_counter()
    await asyncio.gather(*(bare(f"s{i}") for i in range(PUBLISHERS)))
    bare_rate = per_task * PUBLISHERS / (time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(ours(f"s{i}") for i in range(PUBLISHERS)))
    our_rate = per_task * PUBLISHERS / (time.perf_counter() - started)
    await redis.aclose()
    return {"events": per_task * PUBLISHERS, "voicepool_per_s": our_rate,
            "bare_xadd_per_s": bare_rate, "ratio": our_rate / bare_rate}  # fmt: skip


async def _seed_rows(store: Store, sessions: int) -> None:
    async with store.session() as db:
        db.add(User(id="u", name="bench"))
        await db.flush()
        db.add(Conversation(id="c", user_id="u"))
        await db.flush()
        for i in range(sessions):
            db.add(VoiceSession(id=f"s{i}", conversation_id="c", user_id="u", pool="server",
                                transport="webrtc", profile="echo"))  # fmt: skip
        await db.commit()


async def bench_persist(redis_url: str, database_url: str, events: int) -> dict[str, float]:
    url = Settings(database_url=database_url).sqlalchemy_url
    await migrate_async(url)
    store = Store(url)
    await _seed_rows(store, PUBLISHERS)
    redis = redis_client(redis_url)
    await redis.flushall()
    live = LiveSessions(redis)
    for i in range(PUBLISHERS):
        await live.create(f"s{i}", "u", {"conversation_id": "c"})
    per_task = events // PUBLISHERS
    await asyncio.gather(
        *(
            asyncio.gather(*(live.publish(f"s{i}", "tick", {"n": n}) for n in range(per_task)))
            for i in range(PUBLISHERS)
        )
    )
    total = await redis.xlen(keys.INGEST_STREAM)

    persister = Persister(redis, store, consumer="bench", batch_size=500)
    await persister.ensure_group()
    started = time.perf_counter()
    while await persister.step(block_ms=10):
        pass
    elapsed = time.perf_counter() - started
    async with store.session() as db:
        from sqlmodel import func, select

        stored = (await db.exec(select(func.count()).select_from(EventRecord))).one()

    # Baseline: the same rows, inserted in the same batch size with SQLAlchemy's
    # fastest path (executemany → insertmanyvalues), nothing else: no Redis, no
    # conflict handling, no session rows, no acknowledgements.
    rows = [
        {"session_id": f"b{n % PUBLISHERS}", "conversation_id": "c", "seq": n, "ts": time.time(),
         "type": "tick", "data": {"n": n}, "stream_id": "1-0"}
        for n in range(total)
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(rows), 500):
        async with store.session() as db:
            await db.execute(insert(EventRecord), rows[i : i + 500])
            await db.commit()
    bare = time.perf_counter() - started
    await redis.aclose()
    await store.aclose()
    return {"events": total, "stored": stored, "lost": total - stored,
            "voicepool_per_s": total / elapsed, "bare_insert_per_s": total / bare,
            "ratio": (total / elapsed) / (total / bare)}  # fmt: skip


async def bench_fanout(subscribers: int, events: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="voicepool-bench-events-"))
    # No workers: the session stays queued (a long queue TTL keeps it from expiring),
    # and this process publishes into its stream as a worker would.
    system = System(tmp, settings={"VOICEPOOL_MAX_STREAMS_PER_USER": "0",
                                   "VOICEPOOL_QUEUE_TTL": "3600",
                                   "VOICEPOOL_LOG_LEVEL": "WARNING"})  # fmt: skip
    system.start(workers=0)
    try:
        token = system.create_user("bench")
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=subscribers + 10)
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, limits=limits,
                                     timeout=60) as api:  # fmt: skip
            session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
            sid = session["session_id"]
            redis = redis_client(system.redis_server.url)  # type: ignore[union-attr]
            live = LiveSessions(redis)
            sse_latencies: list[float] = []
            xread_latencies: list[float] = []
            opened = 0
            all_open = asyncio.Event()

            resume_after: dict[str, str] = {}
            per_subscriber: dict[int, int] = {}
            statuses: dict[int, int] = {}

            async def sse_subscriber(me: int) -> None:
                nonlocal opened
                async with api.stream(
                    "GET", session["events_url"], headers=resume_after
                ) as response:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    opened += 1
                    if opened == subscribers:
                        all_open.set()
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            event = json.loads(line[5:])
                            if event["type"] == "bench.tick":
                                sse_latencies.append(time.time() - event["data"]["sent"])
                                per_subscriber[me] = per_subscriber.get(me, 0) + 1
                                if event["data"]["n"] == events - 1:
                                    return

            async def xread_subscriber() -> None:
                reader = redis_client(system.redis_server.url)  # type: ignore[union-attr]
                last = "$"
                try:
                    while True:
                        reply = await reader.xread({keys.session_events(sid): last}, block=5000)
                        for _s, entries in reply or ():
                            for entry_id, fields in entries:
                                last = entry_id
                                if fields["type"] != "bench.tick":
                                    continue  # e.g. the reaper's session.queue updates
                                data = json.loads(fields["data"])
                                xread_latencies.append(time.time() - data["sent"])
                                if data["n"] == events - 1:
                                    return
                finally:
                    await reader.aclose()

            async def publish() -> None:
                for n in range(events):
                    await live.publish(sid, "bench.tick", {"n": n, "sent": time.time()})
                    await asyncio.sleep(0.02)  # a lively session: 50 events/s

            # Baseline: direct Redis readers.
            readers = [asyncio.create_task(xread_subscriber()) for _ in range(subscribers)]
            await asyncio.sleep(1.0)
            await publish()
            await asyncio.wait_for(asyncio.gather(*readers), 60)
            # voicepool: SSE subscribers on one API process, resuming after the baseline's
            # events (Last-Event-ID), as a reconnecting browser would.
            last = await redis.xrevrange(keys.session_events(sid), count=1)
            resume_after["Last-Event-ID"] = last[0][0]
            streams = [asyncio.create_task(sse_subscriber(i)) for i in range(subscribers)]
            await asyncio.wait_for(all_open.wait(), 120)
            await asyncio.sleep(1.0)  # everyone has replayed the backlog
            sse_latencies.clear()
            await publish()
            await asyncio.wait_for(asyncio.gather(*streams), 120)
            await redis.aclose()
    finally:
        system.stop()
    ms = 1000
    return {"subscribers": subscribers, "events": events,
            "sse_p50_ms": pct(sse_latencies, 0.5) * ms, "sse_p99_ms": pct(sse_latencies, 0.99) * ms,
            "xread_p50_ms": pct(xread_latencies, 0.5) * ms,
            "xread_p99_ms": pct(xread_latencies, 0.99) * ms,
            "deliveries": len(sse_latencies), "statuses": statuses}  # fmt: skip


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="voicepool-bench-redis-"))).start()
    postgres = PostgresServer.start()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="voicepool-bench-db-"))
        return {
            "publish": await bench_publish(redis.url, args.events),
            "persist_sqlite": await bench_persist(
                redis.url, f"sqlite+aiosqlite:///{tmp / 'bench.db'}", args.events
            ),
            "persist_postgresql": await bench_persist(
                redis.url, postgres.create_database(), args.events
            ),
            "fanout": await bench_fanout(args.subscribers, args.fanout_events),
        }
    finally:
        postgres.stop()
        redis.stop()


def report(results: dict[str, Any], command: str) -> str:
    p, s, g, f = (results[k] for k in ("publish", "persist_sqlite", "persist_postgresql", "fanout"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    return "\n".join([
        "# Event path: publish, persist, fan out",
        "",
        f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()} · commit {commit}",
        "",
        f"Command: `{command}`",
        "",
        "| path | voicepool | baseline (same run) | ratio |",
        "|---|---:|---:|---:|",
        f"| publish (Lua: seq + 2 streams), {PUBLISHERS} publishers | "
        f"{p['voicepool_per_s']:,.0f}/s | bare XADD {p['bare_xadd_per_s']:,.0f}/s | "
        f"{p['ratio']:.2f} |",
        f"| persist → SQLite ({s['events']:,} events, lost {s['lost']}) | "
        f"{s['voicepool_per_s']:,.0f}/s | bare INSERT {s['bare_insert_per_s']:,.0f}/s | "
        f"{s['ratio']:.2f} |",
        f"| persist → PostgreSQL ({g['events']:,} events, lost {g['lost']}) | "
        f"{g['voicepool_per_s']:,.0f}/s | bare INSERT {g['bare_insert_per_s']:,.0f}/s | "
        f"{g['ratio']:.2f} |",
        f"| SSE delivery p50 / p99, {f['subscribers']} subscribers, one API process | "
        f"{f['sse_p50_ms']:.1f} / {f['sse_p99_ms']:.1f} ms | direct XREAD "
        f"{f['xread_p50_ms']:.1f} / {f['xread_p99_ms']:.1f} ms | "
        f"{f['sse_p99_ms'] / max(f['xread_p99_ms'], 0.001):.1f} (p99) |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--fanout-events", type=int, default=100)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    command = "python ops/bench/events.py " + " ".join(sys.argv[1:])
    text = report(results, command.strip())
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "events.md").write_text(text)
    (RESULTS / "events.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
