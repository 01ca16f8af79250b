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
   one API process vs. N direct Redis XREAD readers, both as featherweight
   raw-socket probes (``probes.py``) so the client's parsing is not measured.

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

import httpx
import psutil
from measure import cpu_seconds, percentile  # ops/bench/measure.py
from probes import open_sse, open_xread  # ops/bench/probes.py
from sqlalchemy import insert

from api.persister import Persister
from harness.postgres import PostgresServer
from harness.system import System
from shared import keys
from shared.connections import EmbeddedRedis, redis_client
from shared.live import LiveSessions
from shared.models import Conversation, EventRecord, User, VoiceSession
from shared.settings import Settings
from shared.store import Store, migrate_async

ROOT = Path(__file__).resolve().parents[2]

RESULTS = Path(__file__).parent / "results"
PUBLISHERS = 32  # concurrent publishing tasks (a worker's sessions publish side by side)


async def _publishing_sessions(redis_url: str) -> tuple[Any, LiveSessions]:
    """An empty Redis with one live session per publisher: s0, s1, …"""
    redis = redis_client(redis_url)
    await redis.flushall()
    live = LiveSessions(redis)
    for i in range(PUBLISHERS):
        await live.create(f"s{i}", "u", {"conversation_id": "c"})
    return redis, live


async def bench_publish(redis_url: str, events: int) -> dict[str, float]:
    redis, live = await _publishing_sessions(redis_url)
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
    redis, live = await _publishing_sessions(redis_url)
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
                                   "VOICEPOOL_ADMIT_WITHOUT_WORKERS": "true",
                                   "VOICEPOOL_LOG_LEVEL": "WARNING"})  # fmt: skip
    system.start(workers=0)
    api_proc = psutil.Process(system.api.pid)  # type: ignore[union-attr]
    try:
        token = system.create_user("bench")
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=system.api_url, headers=auth) as api:
            session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
        sid = session["session_id"]
        stream = keys.session_events(sid)
        redis_url = system.redis_server.url  # type: ignore[union-attr]
        redis = redis_client(redis_url)
        live = LiveSessions(redis)

        async def publish() -> None:
            for n in range(events):
                await live.publish(sid, "bench.tick", {"n": n, "sent": time.time()})
                await asyncio.sleep(0.02)  # a lively session: 50 events/s

        # Baseline: every subscriber reads the stream straight from Redis.
        xread_latencies: list[float] = []
        readers = [await open_xread(redis_url, stream, events - 1, xread_latencies)
                   for _ in range(subscribers)]  # fmt: skip
        await asyncio.sleep(1.0)  # all blocked in XREAD
        await publish()
        await asyncio.wait_for(asyncio.gather(*(r.done for r in readers)), 60)
        # voicepool: SSE subscribers on one API process, resuming after the baseline's
        # events (Last-Event-ID), as a reconnecting browser would.
        last = await redis.xrevrange(stream, count=1)
        headers = {**auth, "Last-Event-ID": last[0][0]}
        sse_latencies: list[float] = []
        streams = [await open_sse(system.api_url + session["events_url"], headers, events - 1,
                                  sse_latencies) for _ in range(subscribers)]  # fmt: skip
        statuses = await asyncio.wait_for(asyncio.gather(*(s.opened for s in streams)), 120)
        await asyncio.sleep(1.0)  # everyone has replayed the backlog
        sse_latencies.clear()
        cpu_before = cpu_seconds(api_proc)
        await publish()
        await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), 120)
        api_cpu = cpu_seconds(api_proc) - cpu_before
        await redis.aclose()
    finally:
        system.stop()
    ms = 1000
    return {"subscribers": subscribers, "events": events,
            "sse_p50_ms": percentile(sse_latencies, 50) * ms,
            "sse_p99_ms": percentile(sse_latencies, 99) * ms,
            "sse_max_ms": max(sse_latencies) * ms,
            "xread_p50_ms": percentile(xread_latencies, 50) * ms,
            "xread_p99_ms": percentile(xread_latencies, 99) * ms,
            "api_cpu_us_per_delivery": api_cpu / max(len(sse_latencies), 1) * 1e6,
            "deliveries": len(sse_latencies), "expected": subscribers * events,
            "statuses": {s: statuses.count(s) for s in set(statuses)}}  # fmt: skip


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
        f"Fan-out: {f['deliveries']:,} of {f['expected']:,} deliveries arrived; slowest "
        f"{f['sse_max_ms']:.1f} ms. The API process spent {f['api_cpu_us_per_delivery']:.0f} µs "
        f"of CPU per delivery ({f['api_cpu_us_per_delivery'] * f['subscribers'] / 1000:.1f} ms "
        "per event for all subscribers): that serial write loop is the floor of the p99. "
        "Subscribers are raw-socket probes (`ops/bench/probes.py`) that stamp bytes on "
        "arrival, so the client's own parsing is not counted against the server.",
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
