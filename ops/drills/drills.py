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
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from shared.connections import redis_client  # noqa: E402
from shared.events import Reason, SessionState  # noqa: E402
from shared.live import LiveSessions  # noqa: E402
from tests.support.api import connect_webrtc  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.system import System  # noqa: E402
from tests.support.webrtc_client import allow_loopback_ice  # noqa: E402
from tests.support.ws_client import ProtobufClient  # noqa: E402

HEARTBEAT_TTL = 4.0
HELLO_WAV = ROOT / "tests" / "fixtures" / "hello.wav"
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
LOOP_PAUSE_S = 2.5  # clients say their line again after this pause: the bot's turn


@dataclass
class Row:
    fault: str
    running: str
    user_saw: str
    lost: int
    recovery_s: float
    facts: dict[str, Any] = field(default_factory=dict)  # for the tests; not printed


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


async def _until_ok(call: Callable[[], Awaitable[httpx.Response]], timeout: float = 10):  # type: ignore[no-untyped-def]
    """A user's request, repeated while the API answers 503 (Redis still coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await call()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def _ready_session(api: httpx.AsyncClient, transport: str = "webrtc") -> dict:
    created = (await api.post("/api/sessions", json={"transport": transport})).json()
    await _wait(lambda: _status_is(api, created["session_id"], {"ready"}), 15)
    return (await api.get(f"/api/sessions/{created['session_id']}")).json()


async def _ws_heard(client: ProtobufClient, since: int, timeout: float) -> bool:
    try:
        await client.wait_for(lambda: client.loudest_rms(since=since) > ECHO_RMS, "echo", timeout)
        return True
    except AssertionError:
        return False


async def _rtc_heard(client: Any, since_s: float, timeout: float) -> bool:
    try:
        await client.wait_for_audio(ECHO_RMS, start_s=since_s, timeout=timeout)
        return True
    except TimeoutError:
        return False


def _duplicates_and_disorder(entries: list[dict[str, str]]) -> tuple[int, int]:
    """Events written twice (same type and data), and worker events out of the order
    they were made in (their ``at`` must not go back as ``seq`` goes up)."""
    seen: set[tuple[str, str]] = set()
    duplicates = disorder = 0
    last_at = 0.0
    for e in entries:
        key = (e["type"], e["data"])
        duplicates += key in seen
        seen.add(key)
        at = json.loads(e["data"]).get("at")
        if at is not None:
            disorder += at < last_at
            last_at = max(last_at, at)
    return duplicates, disorder


async def redis_outage(
    system: System, api: httpx.AsyncClient, *, down_s: float, graceful: bool = False
) -> Row:
    """Redis killed (or restarted gracefully) while a WebRTC call and a WebSocket call are
    live, two more sessions wait ready and one is queued. Users act the moment it is back:
    two sessions end, a new one starts. The calls must stay connected and keep echoing,
    the queued session start, the new one be ready within 3 s, and every event the worker
    made reach SQL once, in order."""
    allow_loopback_ice()
    call = await _ready_session(api)
    rtc = await connect_webrtc(api, call["session_id"], str(HELLO_WAV), loop_pause_s=LOOP_PAUSE_S)
    ws_call = await _ready_session(api, "websocket")
    ws = await ProtobufClient.connect(ws_call["connect"]["ws_url"], HELLO_WAV, loop=True)
    blockers = [await _ready_session(api) for _ in range(2)]  # the worker is full now
    queued = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    assert queued["status"] == "queued", queued
    calls = [call, ws_call]
    await _wait(lambda: _all_status(api, calls, {"connected"}), 15)
    assert await _rtc_heard(rtc, 0, 20) and await _ws_heard(ws, 0, 20), "no echo before the fault"

    assert system.redis_server is not None
    heard_rtc, heard_ws = rtc.received_seconds(), len(ws.audio)
    (system.redis_server.stop if graceful else system.redis_server.kill)()
    down_at = time.monotonic()
    echoed_while_down = None
    if down_s >= 5:  # long enough for a turn: the calls go on without Redis
        echoed_while_down = await _rtc_heard(rtc, heard_rtc, down_s - 1) and await _ws_heard(
            ws, heard_ws, max(down_s - 1 - (time.monotonic() - down_at), 0.1)
        )
    await asyncio.sleep(max(down_s - (time.monotonic() - down_at), 0))
    system.redis_server.start()
    back_at = time.monotonic()
    down_for = back_at - down_at

    for blocker in blockers:  # users act at once: two end, one starts
        await _until_ok(lambda b=blocker: api.delete(f"/api/sessions/{b['session_id']}"))
    fresh = await _until_ok(lambda: api.post("/api/sessions", json={"transport": "webrtc"}))
    fresh = fresh.json()
    waiting = [queued, fresh]
    await _wait(lambda: _all_status(api, waiting, {"ready"}), 15)
    recovered_s = time.monotonic() - back_at
    statuses = {
        s["session_id"]: (await api.get(f"/api/sessions/{s['session_id']}")).json()["status"]
        for s in calls
    }
    heard_rtc, heard_ws = rtc.received_seconds(), len(ws.audio)
    echo_after = await _rtc_heard(rtc, heard_rtc, 15) and await _ws_heard(ws, heard_ws, 15)

    everyone = [*calls, *blockers, queued, fresh]
    for s in [*calls, queued, fresh]:
        await api.delete(f"/api/sessions/{s['session_id']}")
    await rtc.close()
    await ws.close()
    await _wait(lambda: _all_status(api, everyone, {"ended", "cancelled", "failed"}), 15)
    await asyncio.sleep(1.5)  # the persister stores the last events
    lost = await _lost_events(system, api, everyone)
    duplicates = disorder = 0
    call_states: list[list[str]] = []
    with system.redis as r:
        for s in everyone:
            entries = [f for _, f in r.xrange(f"vp:session:{s['session_id']}:events")]
            d, o = _duplicates_and_disorder(entries)
            duplicates, disorder = duplicates + d, disorder + o
            if s in calls:
                call_states.append(
                    [
                        json.loads(e["data"])["state"]
                        for e in entries
                        if e["type"] == "session.state"
                    ]
                )
    fault = f"Redis {'restarted (SIGTERM, AOF)' if graceful else 'kill -9'}, {down_for:.1f} s down"
    saw = (
        f"calls {'/'.join(sorted(set(statuses.values())))} throughout"
        + (f", echo while down {'yes' if echoed_while_down else 'no'}" if down_s >= 5 else "")
        + f", echo after {'yes' if echo_after else 'no'}; queued one started; "
        f"{duplicates} duplicate, {disorder} out of order"
    )
    return Row(
        fault, "WebRTC + WebSocket call, 2 ready, 1 queued", saw, lost, recovered_s,
        facts={
            "statuses": statuses, "call_states": call_states, "echo_after": echo_after,
            "echoed_while_down": echoed_while_down, "duplicates": duplicates,
            "disorder": disorder, "down_s": down_for,
        },
    )  # fmt: skip


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


DRILLS: dict[str, Callable[[System, httpx.AsyncClient], Awaitable[Row]]] = {
    "kill_worker": kill_worker,
    "kill_api": kill_api,
    "redis_kill_0.3s": functools.partial(redis_outage, down_s=0.3),
    "redis_kill_2s": functools.partial(redis_outage, down_s=2),
    "redis_kill_10s": functools.partial(redis_outage, down_s=10),
    "redis_kill_30s": functools.partial(redis_outage, down_s=30),
    "redis_restart": functools.partial(redis_outage, down_s=1, graceful=True),
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
        shape = {"workers": 0} if postgres or mount else {"workers": 2}
        if name.startswith("redis_"):
            shape = {"workers": 1}  # full at 4: the fifth session queues
        system.start(capacity=4, **shape)
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
