"""Fault drills: break a running system on purpose and measure what the user saw.

Each drill prints a table row: the fault, what was running, what the user
saw, stored events lost (must be 0), and the time to recover. Real processes
throughout (embedded redis-server, the API under uvicorn, worker processes),
as tests/support/system.py starts them.

    .venv/bin/python ops/drills/drills.py            # all drills
    .venv/bin/python ops/drills/drills.py --only kill_worker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from shared.connections import redis_client  # noqa: E402
from shared.events import Reason, SessionState  # noqa: E402
from shared.live import LiveSessions  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.system import System  # noqa: E402

HEARTBEAT_TTL = 4.0


@dataclass
class Row:
    fault: str
    running: str
    user_saw: str
    lost: int
    recovery_s: float


async def _wait(predicate: Callable[[], Awaitable[bool]], timeout: float) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _stored_count(api: httpx.AsyncClient, conversation_id: str) -> int:
    return len((await api.get(f"/api/conversations/{conversation_id}")).json()["events"])


async def _lost_events(system: System, api: httpx.AsyncClient, sessions: list[dict]) -> int:
    """Events in the live streams that never reached SQL (after the persister caught up)."""
    lost = 0
    with system.redis as r:
        for s in sessions:
            published = {int(f["seq"]) for _, f in r.xrange(f"vp:session:{s['session_id']}:events")}
            detail = (await api.get(f"/api/conversations/{s['conversation_id']}")).json()
            stored = {e["seq"] for e in detail["events"] if e["session_id"] == s["session_id"]}
            lost += len(published - stored)
    return lost


async def kill_worker(system: System, api: httpx.AsyncClient) -> Row:
    sessions = [
        (await api.post("/api/sessions", json={"transport": "webrtc"})).json() for _ in range(5)
    ]
    for s in sessions:
        await _wait(lambda s=s: _status_is(api, s["session_id"], {"ready"}), 15)
    victims = {
        (await api.get(f"/api/sessions/{s['session_id']}")).json()["worker_id"] for s in sessions
    }
    for worker_id in victims:
        os.kill(system.worker_process(worker_id).pid, signal.SIGKILL)
    took = await _wait(lambda: _all_status(api, sessions, {"failed"}), HEARTBEAT_TTL + 5)
    await asyncio.sleep(1.0)  # the persister stores the failure events
    reasons = {
        (await api.get(f"/api/sessions/{s['session_id']}")).json()["reason"] for s in sessions
    }
    return Row("kill -9 worker", "5 ready sessions", f"failed: {', '.join(sorted(reasons))}",
               await _lost_events(system, api, sessions), took)  # fmt: skip


async def kill_api(system: System, api: httpx.AsyncClient) -> Row:
    """kill -9 the API while 5,000 events pour in; a new API process stores them all."""
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    redis = redis_client(system.redis_server.url)  # type: ignore[union-attr]
    live = LiveSessions(redis)
    await live.transition(session["session_id"], SessionState.STARTING, Reason.PICKED_UP,
                          allowed_from={SessionState.QUEUED}, worker_id="drill")  # fmt: skip
    burst = 5000

    async def pour() -> None:
        for i in range(burst):
            await live.publish(session["session_id"], "drill.tick", {"i": i})

    pouring = asyncio.create_task(pour())
    await asyncio.sleep(0.3)
    assert system.api is not None
    os.kill(system.api.pid, signal.SIGKILL)
    killed = time.monotonic()
    await pouring
    system.api = system._spawn("api-restarted", "api", "--port", str(system.api_port))
    system.settings["VOICEPOOL_PERSISTER_CLAIM_IDLE_MS"] = "500"
    await _wait(lambda: _ready(system), 30)
    expected = burst + 2  # queued, starting, and the ticks
    await _wait(lambda: _at_least(api, session["conversation_id"], expected), 60)
    took = time.monotonic() - killed
    lost = await _lost_events(system, api, [session])
    await live.transition(session["session_id"], SessionState.ENDED, Reason.CLIENT_ENDED,
                          allowed_from={SessionState.STARTING})  # fmt: skip
    await redis.aclose()
    return Row("kill -9 API", f"{burst} events being published", "API down until restart",
               lost, took)  # fmt: skip


async def _run(args: list[str], check: bool = True) -> None:
    await asyncio.to_thread(subprocess.run, args, check=check)


async def _pour(system: System, api: httpx.AsyncClient, count: int) -> dict:
    """A queued session (no worker takes it) and ``count`` events published into it."""
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    redis = redis_client(system.redis_server.url)  # type: ignore[union-attr]
    live = LiveSessions(redis)
    await live.transition(session["session_id"], SessionState.STARTING, Reason.PICKED_UP,
                          allowed_from={SessionState.QUEUED}, worker_id="drill")  # fmt: skip
    payload = {"text": "x" * 200}
    for i in range(count):
        await live.publish(session["session_id"], "drill.tick", {"i": i, **payload})
    await redis.aclose()
    return session


async def postgres_restart(system: System, api: httpx.AsyncClient) -> Row:
    """Restart PostgreSQL while the persister writes; it reconnects and stores everything."""
    server: PostgresServer = system.postgres  # type: ignore[attr-defined]
    pouring = asyncio.create_task(_pour(system, api, 3000))
    await asyncio.sleep(0.5)
    stopped = time.monotonic()
    server.restart()
    session = await pouring
    expected = 3000 + 2
    await _wait(lambda: _at_least(api, session["conversation_id"], expected), 60)
    took = time.monotonic() - stopped
    return Row("restart PostgreSQL", "3000 events being persisted",
               "the persister reconnected; history complete",
               await _lost_events(system, api, [session]), took)  # fmt: skip


async def sqlite_disk_full(system: System, api: httpx.AsyncClient) -> Row:
    """The SQLite disk fills up: clear errors, nothing acknowledged, no corruption; room
    made, everything is stored."""
    mount: Path = system.tiny_mount  # type: ignore[attr-defined]
    session = await _pour(system, api, 12000)
    await asyncio.sleep(3.0)  # the persister hits the full disk and keeps the entries pending
    log = (system.tmp / "api.log").read_text()
    saw = "database or disk is full" in log
    with system.redis as r:
        held = r.xlen("vp:ingest")  # nothing unstored is acknowledged, so nothing is trimmed
    grown = time.monotonic()
    await _run(["mount", "-o", "remount,size=64M", str(mount)])
    await _wait(lambda: _at_least(api, session["conversation_id"], 12000 + 2), 120)
    took = time.monotonic() - grown
    check = sqlite3.connect(mount / "voicepool.db").execute("PRAGMA integrity_check").fetchone()
    return Row("SQLite disk full", "12000 events, DB on a 1.5 MB filesystem",
               f"persister logged {'disk full' if saw else 'no disk-full error'}; {held} entries "
               f"held in Redis; integrity_check {check[0]}",
               await _lost_events(system, api, [session]), took)  # fmt: skip


async def restart_redis(system: System, api: httpx.AsyncClient) -> Row:
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    await _wait(lambda: _status_is(api, session["session_id"], {"ready"}), 15)
    assert system.redis_server is not None
    system.redis_server.stop()  # SIGTERM: AOF flushed
    down = time.monotonic()
    await asyncio.sleep(1.0)
    system.redis_server.start()
    took = await _wait(lambda: _ready(system), 30)
    took += time.monotonic() - down - took
    status = (await api.get(f"/api/sessions/{session['session_id']}")).json()
    ended = await api.delete(f"/api/sessions/{session['session_id']}")
    await asyncio.sleep(1.0)
    return Row("restart Redis (AOF)", "1 ready session",
               f"session {status['status']} after restart, then {ended.json()['status']}",
               await _lost_events(system, api, [session]), took)  # fmt: skip


async def _ready(system: System) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"{system.api_url}/readyz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def _status_is(api: httpx.AsyncClient, sid: str, statuses: set[str]) -> bool:
    try:
        return (await api.get(f"/api/sessions/{sid}")).json()["status"] in statuses
    except httpx.HTTPError:
        return False


async def _all_status(api: httpx.AsyncClient, sessions: list[dict], statuses: set[str]) -> bool:
    return all([await _status_is(api, s["session_id"], statuses) for s in sessions])


async def _at_least(api: httpx.AsyncClient, conversation_id: str, count: int) -> bool:
    try:
        return await _stored_count(api, conversation_id) >= count
    except httpx.HTTPError:
        return False


DRILLS = {
    "kill_worker": kill_worker,
    "kill_api": kill_api,
    "restart_redis": restart_redis,
    "postgres_restart": postgres_restart,
    "sqlite_disk_full": sqlite_disk_full,
}


async def run(only: list[str]) -> list[Row]:
    rows = []
    for name in only:
        tmp = Path(tempfile.mkdtemp(prefix=f"voicepool-drill-{name}-"))
        settings = {
            "VOICEPOOL_HEARTBEAT_TTL": str(HEARTBEAT_TTL),
            "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
            "VOICEPOOL_PERSISTER_CLAIM_IDLE_MS": "500",
            "VOICEPOOL_QUEUE_TTL": "600",
        }
        postgres, mount = None, None
        if name == "postgres_restart":
            postgres = PostgresServer.start()
            settings["VOICEPOOL_DATABASE_URL"] = postgres.create_database()
        if name == "sqlite_disk_full":
            mount = tmp / "tiny"
            mount.mkdir()
            await _run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)])
            settings["VOICEPOOL_DATABASE_URL"] = f"sqlite+aiosqlite:///{mount / 'voicepool.db'}"
        system = System(tmp, settings=settings)
        system.postgres, system.tiny_mount = postgres, mount  # type: ignore[attr-defined]
        system.start(workers=0 if postgres or mount else 2, capacity=4)
        try:
            token = system.create_user("drill")
            async with httpx.AsyncClient(
                base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as api:
                rows.append(await DRILLS[name](system, api))
        finally:
            system.stop()
            if postgres:
                postgres.stop()
            if mount:
                await _run(["umount", str(mount)], check=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(DRILLS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = asyncio.run(run(args.only or list(DRILLS)))
    print("| fault | what was running | what the user saw | stored events lost | recovery s |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r.fault} | {r.running} | {r.user_saw} | {r.lost} | {r.recovery_s:.2f} |")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    if any(r.lost for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
