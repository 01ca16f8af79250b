"""Fault drills: break a running system on purpose and measure what the user saw.

Each drill prints a table row: the fault, what was running, what the user
saw, stored events lost (must be 0), and the time to recover. Real processes
throughout (embedded redis-server, the API under uvicorn, worker processes),
as harness/system.py starts them.

    .venv/bin/python ops/drills/drills.py            # all drills
    .venv/bin/python ops/drills/drills.py --only kill_worker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any, cast

import httpx

from harness.api import connect_webrtc
from harness.postgres import PostgresServer
from harness.sentinel import SentinelSet
from harness.sse import is_final_state, read_events
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import allow_loopback_ice
from harness.ws_client import ProtobufClient
from shared import keys
from shared.connections import redis_client
from shared.lifecycle import Reason
from shared.live import LiveSessions

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_TTL = 4.0
HELLO_WAV = ROOT / "tests" / "fixtures" / "hello.wav"
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
LOOP_PAUSE_S = 2.5  # clients say their line again after this pause: the bot's turn
QUEUE_READ_S = 0.2  # a rung worker has read its queue by then (one round trip, loaded)


@dataclass
class Row:
    fault: str
    running: str
    user_saw: str
    lost: int
    recovery_s: float
    facts: dict[str, Any] = field(default_factory=dict)  # for the tests; not printed


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


async def _persisted(system: System, api: httpx.AsyncClient, sessions: list[dict]) -> None:
    """Wait (bounded) for the persister to store what the sessions published; whatever is
    still missing after that, ``_lost_events`` counts as lost."""

    async def all_stored() -> bool:
        return await _lost_events(system, api, sessions) == 0

    with contextlib.suppress(AssertionError):
        await eventually(all_stored, timeout=10, what="every published event stored")


async def kill_worker(system: System, api: httpx.AsyncClient) -> Row:
    """kill -9 the worker of 4 ready sessions, with another worker free: each call goes
    ``recovering`` and is ready again (``recovered``) on the other worker."""
    began = time.monotonic()
    sessions = [
        (await api.post("/api/sessions", json={"transport": "webrtc"})).json() for _ in range(4)
    ]
    for s in sessions:
        await eventually(
            lambda s=s: _status_is(api, s["session_id"], {"ready"}), timeout=15, what="ready"
        )
    owners = {
        s["session_id"]: (await api.get(f"/api/sessions/{s['session_id']}")).json()["worker_id"]
        for s in sessions
    }
    victim = owners[sessions[0]["session_id"]]  # the others fit on the other worker (4 slots)
    moving = [s for s in sessions if owners[s["session_id"]] == victim]
    # The reaper judges nobody for a heartbeat TTL after it first sees a new Redis.
    await asyncio.sleep(max(began + HEARTBEAT_TTL + 1 - time.monotonic(), 0))
    os.kill(system.worker_process(victim).pid, signal.SIGKILL)
    killed = time.monotonic()
    await eventually(
        lambda: _all_recovered(api, moving, victim), timeout=HEARTBEAT_TTL + 10, what="recovered"
    )
    took = time.monotonic() - killed
    await _persisted(system, api, sessions)
    described = [(await api.get(f"/api/sessions/{s['session_id']}")).json() for s in moving]
    outcomes = sorted({f"{d['status']}/{d['reason']}" for d in described})
    return Row(
        "kill -9 worker (another free)", f"{len(sessions)} ready sessions, {len(moving)} on it",
        f"{len(moving)}/{len(moving)} {', '.join(outcomes)} on the other worker",
        await _lost_events(system, api, sessions), took,
        facts={"moved": len(moving), "outcomes": outcomes},
    )  # fmt: skip


async def _all_recovered(api: httpx.AsyncClient, sessions: list[dict], lost: str) -> bool:
    for s in sessions:
        d = (await api.get(f"/api/sessions/{s['session_id']}")).json()
        if (d["status"], d["reason"]) != ("ready", "recovered") or d["worker_id"] == lost:
            return False
    return True


async def kill_api(system: System, api: httpx.AsyncClient) -> Row:
    """kill -9 the API while 5,000 events pour in; a new API process stores them all."""
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    redis = redis_client(system.redis_server.url)  # type: ignore[union-attr]
    live = LiveSessions(redis)
    await live.pick_up(session["session_id"], "drill")
    burst = 5000

    async def pour() -> None:
        for i in range(burst):
            await live.publish(session["session_id"], "drill.tick", {"i": i})

    pouring = asyncio.create_task(pour())
    await asyncio.sleep(0.3)  # time, not a condition: the API dies in the middle of the burst
    assert system.api is not None
    os.kill(system.api.pid, signal.SIGKILL)
    killed = time.monotonic()
    await pouring
    system.api = system._spawn("api-restarted", "api", "--port", str(system.api_port))
    system.settings["VOICEPOOL_PERSISTER_CLAIM_IDLE_MS"] = "500"
    await eventually(lambda: _ready(system), timeout=30, what="the API ready again")
    expected = burst + 2  # queued, starting, and the ticks
    await eventually(
        lambda: _at_least(api, session["conversation_id"], expected),
        timeout=60,
        what=f"{expected} events stored",
    )
    took = time.monotonic() - killed
    lost = await _lost_events(system, api, [session])
    await live.move(session["session_id"], "finish_own", Reason.CLIENT_ENDED, worker_id="drill")
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
    await live.pick_up(session["session_id"], "drill")
    payload = {"text": "x" * 200}
    for i in range(count):
        await live.publish(session["session_id"], "drill.tick", {"i": i, **payload})
    await redis.aclose()
    return session


async def postgres_restart(system: System, api: httpx.AsyncClient) -> Row:
    """Restart PostgreSQL while the persister writes; it reconnects and stores everything."""
    server: PostgresServer = system.postgres  # type: ignore[attr-defined]
    pouring = asyncio.create_task(_pour(system, api, 3000))
    await asyncio.sleep(0.5)  # time, not a condition: PostgreSQL restarts mid-way through
    stopped = time.monotonic()
    server.restart()
    session = await pouring
    expected = 3000 + 2
    await eventually(
        lambda: _at_least(api, session["conversation_id"], expected),
        timeout=60,
        what=f"{expected} events stored",
    )
    took = time.monotonic() - stopped
    return Row("restart PostgreSQL", "3000 events being persisted",
               "the persister reconnected; history complete",
               await _lost_events(system, api, [session]), took)  # fmt: skip


async def sqlite_disk_full(system: System, api: httpx.AsyncClient) -> Row:
    """The SQLite disk fills up: clear errors, nothing acknowledged, no corruption; room
    made, everything is stored."""
    mount: Path = system.tiny_mount  # type: ignore[attr-defined]
    session = await _pour(system, api, 12000)
    with contextlib.suppress(AssertionError):  # the row then says the error never showed
        await eventually(
            lambda: "database or disk is full" in (system.tmp / "api.log").read_text(),
            timeout=10,
            what="the persister hitting the full disk",
        )
    log = (system.tmp / "api.log").read_text()
    saw = "database or disk is full" in log
    with system.redis as r:
        held = r.xlen("vp:ingest")  # nothing unstored is acknowledged, so nothing is trimmed
    grown = time.monotonic()
    await _run(["mount", "-o", "remount,size=64M", str(mount)])
    await eventually(
        lambda: _at_least(api, session["conversation_id"], 12000 + 2),
        timeout=120,
        what="12002 events stored",
    )
    took = time.monotonic() - grown
    check = sqlite3.connect(mount / "voicepool.db").execute("PRAGMA integrity_check").fetchone()
    return Row("SQLite disk full", "12000 events, DB on a 1.5 MB filesystem",
               f"persister logged {'disk full' if saw else 'no disk-full error'}; {held} entries "
               f"held in Redis; integrity_check {check[0]}",
               await _lost_events(system, api, [session]), took)  # fmt: skip


async def _until_ok(
    call: Callable[[], Awaitable[httpx.Response]], timeout: float = 10
) -> httpx.Response:
    """A user's request, repeated while the API answers 503 (Redis still coming back)."""

    async def answered() -> httpx.Response:
        response = await call()
        assert response.status_code != 503, response.text
        return response

    return await eventually(
        answered, timeout=timeout, interval=0.1, what="an answer other than 503"
    )


async def _ready_session(api: httpx.AsyncClient, transport: str = "webrtc") -> dict:
    created = (await api.post("/api/sessions", json={"transport": transport})).json()
    await eventually(
        lambda: _status_is(api, created["session_id"], {"ready"}), timeout=15, what="ready"
    )
    return (await api.get(f"/api/sessions/{created['session_id']}")).json()


async def _ws_heard(client: ProtobufClient, since: int, timeout: float) -> bool:
    try:
        await eventually(
            lambda: client.loudest_rms(since=since) > ECHO_RMS, timeout=timeout, what="echo"
        )
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


def _pause(system: System, sig: signal.Signals) -> None:
    """Stop (or continue) every process of the system, as a paused machine or VM would."""
    assert system.redis_server is not None and system.redis_server.process is not None
    for proc in [system.redis_server.process, system.api, *system.workers]:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)


async def redis_outage(
    system: System,
    api: httpx.AsyncClient,
    *,
    down_s: float,
    graceful: bool = False,
    paused: bool = False,
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
    ws_url = (await api.post(f"/api/sessions/{ws_call['session_id']}/connect")).json()["ws_url"]
    ws = await ProtobufClient.connect(ws_url, HELLO_WAV, loop=True)
    blockers = [await _ready_session(api) for _ in range(2)]  # the worker is full now
    queued = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    assert queued["status"] == "queued", queued
    calls = [call, ws_call]
    await eventually(
        lambda: _all_status(api, calls, {"connected"}), timeout=15, what="both calls connected"
    )
    assert await _rtc_heard(rtc, 0, 20) and await _ws_heard(ws, 0, 20), "no echo before the fault"

    assert system.redis_server is not None
    heard_rtc, heard_ws = rtc.received_seconds(), len(ws.audio)
    if paused:  # the whole machine stops: Redis, the API and the worker
        _pause(system, signal.SIGSTOP)
    else:
        (system.redis_server.stop if graceful else system.redis_server.kill)()
    down_at = time.monotonic()
    echoed_while_down = None
    if down_s >= 5 and not paused:  # long enough for a turn: the calls go on without Redis
        echoed_while_down = await _rtc_heard(rtc, heard_rtc, down_s - 1) and await _ws_heard(
            ws, heard_ws, max(down_s - 1 - (time.monotonic() - down_at), 0.1)
        )
    await asyncio.sleep(max(down_s - (time.monotonic() - down_at), 0))  # the outage lasts
    if paused:
        _pause(system, signal.SIGCONT)
    else:
        system.redis_server.start()
    back_at = time.monotonic()
    down_for = back_at - down_at

    for blocker in blockers:  # users act at once: two end, one starts
        await _until_ok(lambda b=blocker: api.delete(f"/api/sessions/{b['session_id']}"))
    fresh = await _until_ok(lambda: api.post("/api/sessions", json={"transport": "webrtc"}))
    fresh = fresh.json()
    waiting = [queued, fresh]
    await eventually(lambda: _all_status(api, waiting, {"ready"}), timeout=15, what="ready")
    recovered_s = time.monotonic() - back_at
    statuses = {
        s["session_id"]: (await api.get(f"/api/sessions/{s['session_id']}")).json()["status"]
        for s in calls
    }
    heard_rtc, heard_ws = rtc.received_seconds(), len(ws.audio)
    rtc_after, ws_after = await asyncio.gather(
        _rtc_heard(rtc, heard_rtc, 15), _ws_heard(ws, heard_ws, 15)
    )
    echo_after = rtc_after and ws_after

    everyone = [*calls, *blockers, queued, fresh]
    for s in [*calls, queued, fresh]:
        await api.delete(f"/api/sessions/{s['session_id']}")
    await rtc.close()
    await ws.close()
    await eventually(
        lambda: _all_status(api, everyone, {"ended", "cancelled", "failed"}),
        timeout=15,
        what="every session over",
    )
    await _persisted(system, api, everyone)  # the last events
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
    how = "restarted (SIGTERM, AOF)" if graceful else "kill -9"
    fault = f"Redis {how}, {down_for:.1f} s down"
    if paused:
        fault = f"the machine paused {down_for:.1f} s (SIGSTOP Redis, API, worker)"
    saw = (
        f"calls {'/'.join(sorted(set(statuses.values())))} throughout"
        + (
            f", echo while down {'yes' if echoed_while_down else 'no'}"
            if echoed_while_down is not None
            else ""
        )
        + f", echo after: WebRTC {'yes' if rtc_after else 'no'}, WebSocket "
        f"{'yes' if ws_after else 'no'}; queued one started; "
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


# --- worker supervision ----------------------------------------------------------------


async def _watch(api: httpx.AsyncClient, url: str, seen: set[tuple[int, str]]) -> None:
    """Every event a browser following ``url`` is shown, through reconnects (Last-Event-ID),
    until the session's final state: what users saw, to hold the store against."""
    last: str | None = None
    while True:
        try:
            for event in await read_events(api, url, last_event_id=last):
                seen.add((int(event.data["seq"]), event.event))
                last = event.id or last
                if is_final_state(event):
                    return
            return
        except (httpx.HTTPError, AssertionError, json.JSONDecodeError):
            await asyncio.sleep(0.2)  # the API's stream broke with Redis: follow again


async def sentinel_failover(system: System, api: httpx.AsyncClient) -> Row:
    """Redis behind Sentinel (a primary, a replica, three Sentinels): the primary is
    killed while 4 calls stream audio on 2 workers. Every process knows only the
    Sentinels. New calls must start once the replica is promoted, the 4 go on, and every
    event users were shown must be in the store, with no seq missing."""
    allow_loopback_ice()
    sentinels: SentinelSet = system.sentinels  # type: ignore[attr-defined]
    calls = [await _ready_session(api) for _ in range(4)]
    peers = [
        await connect_webrtc(api, c["session_id"], str(HELLO_WAV), loop_pause_s=LOOP_PAUSE_S)
        for c in calls
    ]
    await eventually(lambda: _all_status(api, calls, {"connected"}), timeout=20, what="calls")
    seen: list[set[tuple[int, str]]] = [set() for _ in calls]
    watchers = [
        asyncio.create_task(_watch(api, c["events_url"], into))
        for c, into in zip(calls, seen, strict=True)
    ]
    for peer in peers:
        assert await _rtc_heard(peer, 0, 20), "no echo before the fault"
    heard = [peer.received_seconds() for peer in peers]

    assert sentinels.primary is not None
    killed = time.monotonic()
    sentinels.primary.kill()
    system.redis_server = sentinels.replica  # the one Sentinels promote (the harness's look)
    while (created := await api.post("/api/sessions", json={})).status_code != 202:
        assert time.monotonic() - killed < 60, created.text  # 503 while Redis is away
        await asyncio.sleep(0.2)
    fresh = created.json()
    admitted_s = time.monotonic() - killed
    await eventually(
        lambda: _status_is(api, fresh["session_id"], {"ready"}), timeout=60, what="ready"
    )
    back_s = time.monotonic() - killed
    went_on = [await _rtc_heard(p, since, 20) for p, since in zip(peers, heard, strict=True)]
    still = [await _status_is(api, c["session_id"], {"connected"}) for c in calls]
    dropped = sum(1 for ok, on in zip(went_on, still, strict=True) if not (ok and on))

    for session in [*calls, fresh]:
        await api.delete(f"/api/sessions/{session['session_id']}")
    for peer in peers:
        await peer.close()
    await asyncio.wait_for(asyncio.gather(*watchers), 30)
    await _persisted(system, api, calls)
    lost = 0
    for session, shown in zip(calls, seen, strict=True):
        detail = (await api.get(f"/api/conversations/{session['conversation_id']}")).json()
        stored = {(e["seq"], e["type"]) for e in detail["events"]
                  if e["session_id"] == session["session_id"]}  # fmt: skip
        seqs = sorted(seq for seq, _ in stored)
        lost += len(shown - stored) + (seqs[-1] - len(seqs) if seqs else 0)  # + seqs missing
    return Row(
        "Redis primary kill -9 under Sentinel (1 replica, 3 Sentinels)",
        "4 WebRTC calls on 2 workers",
        f"a new session admitted {admitted_s:.1f} s and ready {back_s:.1f} s after the kill; "
        f"{len(calls) - dropped}/{len(calls)} calls went on (echo after, still connected), "
        f"{dropped} dropped; {sum(map(len, seen))} events shown to their watchers",
        lost,
        back_s,
        facts={"dropped": dropped, "admitted_s": admitted_s, "back_s": back_s},
    )


async def poll_loop_fails(system: System, api: httpx.AsyncClient) -> Row:
    """Redis refuses the command arq polls with (an ACL change): the worker's poll loop
    fails for good. It must exit non-zero, never be listed with free slots meanwhile,
    and a worker started in its place (as systemd would) serves the next session.

    An idle worker reads its queue when a job rings it in (or at its 1 s safety poll):
    a ring here, then a moment for that read, and from then on it is failing."""
    admin = system.create_user("operator", admin=True)
    victim = system.workers[0]
    with system.redis as r:
        r.execute_command("ACL", "SETUSER", "default", "-zrangebyscore")
        r.lpush(keys.doorbell("server"), 1)  # what queueing a session does
    broken_at = time.monotonic()
    await asyncio.sleep(QUEUE_READ_S)
    free_while_failing = 0
    async with httpx.AsyncClient(
        base_url=system.api_url, headers={"Authorization": f"Bearer {admin}"}, timeout=10
    ) as ops:
        while victim.poll() is None and time.monotonic() - broken_at < 30:
            pools = (await ops.get("/api/pools")).json()
            free_while_failing = max(free_while_failing, sum(p["capacity"] for p in pools))
            await asyncio.sleep(0.05)  # a sampling period: watched until the worker exits
    exited_after = time.monotonic() - broken_at
    with system.redis as r:
        r.execute_command("ACL", "SETUSER", "default", "+@all")
    system.start_worker(capacity=4)  # the service manager's restart

    async def admitted() -> dict[str, Any]:
        # Until the new worker joins, the pool has none: 503 no_workers, and a client
        # tries again (here sooner than the Retry-After it is told, to time the join).
        reply = await api.post("/api/sessions", json={"transport": "webrtc"})
        assert reply.status_code == 202, reply.text
        return cast("dict[str, Any]", reply.json())

    session = await eventually(admitted, timeout=30, interval=0.25, what="a session admitted")
    await eventually(
        lambda: _status_is(api, session["session_id"], {"ready"}), timeout=30, what="ready"
    )
    recovered = time.monotonic() - broken_at
    await api.delete(f"/api/sessions/{session['session_id']}")
    return Row(
        "worker's poll loop fails for good (Redis ACL refuses it)", "1 idle worker",
        f"worker exited {victim.returncode} after {exited_after:.1f} s; free slots listed "
        f"meanwhile: {free_while_failing}; a new worker served the next session",
        0, recovered,
        facts={"returncode": victim.returncode, "free_while_failing": free_while_failing},
    )  # fmt: skip


# --- hostile and careless users ------------------------------------------------------


async def _open_and_abandon(system: System, token: str, url: str) -> int:
    """Open the event stream, read its first event, and go away without a word."""
    async with (
        httpx.AsyncClient(base_url=system.api_url, timeout=10) as client,
        client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        if response.status_code == 200:
            async for _chunk in response.aiter_bytes():
                break
        return response.status_code


async def sse_abandoned(system: System, api: httpx.AsyncClient) -> Row:
    """50 page reloads (streams opened and dropped), then streams held open while the API
    is killed: the user's next stream opens each time."""
    token = api.headers["Authorization"].removeprefix("Bearer ")
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    url = session["events_url"]
    codes = [await _open_and_abandon(system, token, url) for _ in range(50)]
    after_reloads = await _open_and_abandon(system, token, url)
    limit = int(system.settings["VOICEPOOL_MAX_STREAMS_PER_USER"])
    held = [  # every slot taken by open streams, then the API dies under them
        await httpx.AsyncClient(base_url=system.api_url, timeout=None).send(
            httpx.Request(
                "GET", system.api_url + url, headers={"Authorization": f"Bearer {token}"}
            ),
            stream=True,
        )
        for _ in range(limit)
    ]
    refused_while_full = await _open_and_abandon(system, token, url)
    assert system.api is not None
    os.kill(system.api.pid, signal.SIGKILL)
    killed = time.monotonic()
    system.api = system._spawn("api-restarted", "api", "--port", str(system.api_port))
    await eventually(lambda: _ready(system), timeout=30, what="the API ready again")
    for response in held:
        await response.aclose()
    reopened = None

    async def reopens() -> bool:
        nonlocal reopened
        reopened = await _open_and_abandon(system, token, url)
        return reopened == 200

    with contextlib.suppress(AssertionError):  # the row then says what the stream got
        await eventually(
            reopens, timeout=120 - (time.monotonic() - killed), interval=0.25, what="a stream"
        )
    took = time.monotonic() - killed
    lease = float(system.settings["VOICEPOOL_STREAM_LEASE"])
    return Row(
        "50 stream reloads; then API kill -9 with every stream slot open",
        f"1 queued session, {limit} streams per user, {lease:.0f} s lease",
        f"reloads: {codes.count(200)}/50 opened, then {after_reloads}; while full: "
        f"{refused_while_full}; after the API restart: {reopened}",
        0, took,
        facts={"codes": codes, "after_reloads": after_reloads, "refused": refused_while_full,
               "reopened": reopened, "lease": lease},
    )  # fmt: skip


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    response = await client.request(method, url, **kw)
    assert response.status_code < 500, response.text
    return time.perf_counter() - started


class Bystander:
    """Another user, timing ordinary requests (their session, /readyz) one after another,
    over a connection opened beforehand."""

    def __init__(self, system: System):
        self.system = system
        self.token = system.create_user(f"bystander{time.monotonic_ns()}")
        self.client = httpx.AsyncClient(
            base_url=system.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )
        self.session_id = ""

    async def __aenter__(self) -> Bystander:
        mine = (await self.client.post("/api/sessions", json={"transport": "webrtc"})).json()
        self.session_id = mine["session_id"]
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.delete(f"/api/sessions/{self.session_id}")
        await self.client.aclose()

    async def time_for(self, seconds: float) -> list[float]:
        took: list[float] = []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            took.append(await _timed(self.client, "GET", f"/api/sessions/{self.session_id}"))
            took.append(await _timed(self.client, "GET", "/readyz"))
        return took


def log_error(message: str) -> None:
    print(message, file=sys.stderr)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _ms(values: list[float]) -> str:
    return f"{_p(values, 0.5) * 1000:.0f}/{_p(values, 0.99) * 1000:.0f} ms"


async def flood_offers(api_url: str, token: str, url: str, offers: int, seconds: float) -> dict:
    """Keep ``offers`` SDP offers in flight for ``seconds`` (each answered one is sent
    again); returns how they were answered. Runs in a process of its own."""
    from harness.sdp import VALID_OFFER

    body = {"sdp": VALID_OFFER, "type": "offer"}
    codes: dict[int, int] = {}
    until = time.monotonic() + seconds

    async def keep_sending(hostile: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            try:
                status = (await hostile.post(url, json=body)).status_code
            except httpx.HTTPError:
                status = 0  # no answer at all
            codes[status] = codes.get(status, 0) + 1

    async with httpx.AsyncClient(
        base_url=api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=offers, max_keepalive_connections=offers),
    ) as hostile:
        await asyncio.gather(*(keep_sending(hostile) for _ in range(offers)))
    return codes


async def offer_flood(system: System, api: httpx.AsyncClient, *, offers: int = 300) -> Row:
    """One user keeps 300 SDP offers in flight to a session no worker has taken (from a
    process of its own: each answered offer is sent again) for 10 s; another user's
    requests are timed meanwhile, and for as long without the flood, in the same run."""
    flood_s = 10
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    token = api.headers["Authorization"].removeprefix("Bearer ")
    args = [system.api_url, token, f"/api/sessions/{session['session_id']}/offer"]
    async with Bystander(system) as bystander:
        quiet = await bystander.time_for(flood_s)
        flood = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood", *args, str(offers), str(flood_s),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # time, not a condition: the flood gets going first
        busy = await bystander.time_for(flood_s - 2)
        out, _ = await flood.communicate()
    codes = {int(k): v for k, v in json.loads(out).items()}
    answered = (
        f"{sum(codes.values())} offers: {codes.get(429, 0)}x429, {codes.get(409, 0)}x409 "
        f"not_ready, {sum(v for k, v in codes.items() if k >= 500)}x5xx, {codes.get(0, 0)} "
        "unanswered"
    )
    return _flood_row(f"{offers} SDP offers kept in flight by one user for {flood_s} s",
                      answered, busy, quiet, codes=codes)  # fmt: skip


def _flood_row(
    fault: str, answered: str, busy: list[float], quiet: list[float], **facts: Any
) -> Row:
    """A flood drill's row: how the flood was answered, and what another user saw."""
    ratio = _p(busy, 0.99) / _p(quiet, 0.99)
    return Row(
        fault, "1 queued session, no worker",
        f"{answered}; another user's p50/p99 {_ms(busy)} over {len(busy)} requests (without "
        f"the flood {_ms(quiet)}; p99 {ratio:.1f}x)",
        0, 0.0,
        facts={**facts, "busy_p99": _p(busy, 0.99), "quiet_p99": _p(quiet, 0.99),
               "busy": len(busy)},
    )  # fmt: skip


async def offer_rate_flood(system: System, api: httpx.AsyncClient, *, offers: int = 300) -> Row:
    """As ``offer_flood``, but sent by wrk as fast as one API process can refuse them: a
    request-rate flood. Refusals cost no database or Redis work, but the process itself
    saturates; a deployment puts a per-client rate limit in its reverse proxy for this."""
    from harness.sdp import VALID_OFFER

    flood_s = 10
    session = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
    script = system.tmp / "offer.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps({'sdp': VALID_OFFER, 'type': 'offer'}))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "{api.headers["Authorization"]}"\n'
    )
    wrk = [
        "wrk", "-t", "2", "-c", str(offers), "-d", f"{flood_s}s", "--timeout", "30s",
        "-s", str(script), f"{system.api_url}/api/sessions/{session['session_id']}/offer",
    ]  # fmt: skip
    async with Bystander(system) as bystander:
        quiet = await bystander.time_for(flood_s)
        flood = await asyncio.create_subprocess_exec(*wrk, stdout=subprocess.PIPE)
        await asyncio.sleep(1.0)  # time, not a condition: the flood gets going first
        busy = await bystander.time_for(flood_s - 2)
        out = (await flood.communicate())[0].decode()
    sent = int(out.split(" requests in ")[0].split()[-1])
    refused = out.split("Non-2xx or 3xx responses: ")[-1].split()[0] if "Non-2xx" in out else "0"
    answered = f"{sent} offers, {refused} refused (429, or 409 once the wait for ready ran out)"
    return _flood_row(f"{offers} SDP offers kept in flight by one user for {flood_s} s (wrk)",
                      answered, busy, quiet, sent=sent)  # fmt: skip


async def bad_requests(system: System, api: httpx.AsyncClient) -> Row:
    """Concurrent creates over the per-user limit, and offers that are not SDP."""
    limit = int(system.settings["VOICEPOOL_MAX_SESSIONS_PER_USER"])
    creates = await asyncio.gather(
        *(api.post("/api/sessions", json={"transport": "webrtc"}) for _ in range(8))
    )
    codes = sorted(r.status_code for r in creates)
    accepted = [r.json() for r in creates if r.status_code == 202]
    listed = (await api.get("/api/conversations")).json()
    conversations = len(listed if isinstance(listed, list) else listed.get("items", listed))
    session = accepted[0]
    before = (await api.get(f"/api/sessions/{session['session_id']}")).json()["status"]
    offers = [
        await api.post(
            f"/api/sessions/{session['session_id']}/offer", json={"sdp": sdp, "type": "offer"}
        )
        for sdp in ("hello", "", "v=0", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")
    ]
    after = (await api.get(f"/api/sessions/{session['session_id']}")).json()["status"]
    offer_codes = sorted({(r.status_code, r.json()["detail"]["code"]) for r in offers})
    for s in accepted:
        await api.delete(f"/api/sessions/{s['session_id']}")
    return Row(
        f"8 concurrent creates over a limit of {limit}; 4 offers that are not SDP",
        "a user with no sessions",
        f"creates: {codes.count(202)}x202, {codes.count(429)}x429, {codes.count(500)}x500, "
        f"{conversations} conversations kept; offers: "
        + ", ".join(f"{c} {code}" for c, code in offer_codes)
        + f"; session {before} → {after}",
        0, 0.0,
        facts={"codes": codes, "conversations": conversations, "limit": limit,
               "offer_codes": offer_codes, "before": before, "after": after},
    )  # fmt: skip


async def concurrent_migrate(system: System, api: httpx.AsyncClient) -> Row:
    """Three replicas migrate a fresh PostgreSQL database at once."""
    server: PostgresServer = system.postgres  # type: ignore[attr-defined]
    url = server.create_database()
    env = {**system.env, "VOICEPOOL_DATABASE_URL": url}
    started = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicepool", "migrate", env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]  # fmt: skip
    codes = [await asyncio.wait_for(p.wait(), 60) for p in procs]
    took = time.monotonic() - started
    return Row(
        "3 `voicepool migrate` at once on a fresh PostgreSQL", "an empty database",
        f"exit codes {codes}", 0, took, facts={"codes": codes},
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
    "redis_machine_pause_25s": functools.partial(redis_outage, down_s=25, paused=True),
    "poll_loop_fails": poll_loop_fails,
    "sse_abandoned": sse_abandoned,
    "offer_flood": offer_flood,
    "offer_rate_flood": offer_rate_flood,
    "bad_requests": bad_requests,
    "concurrent_migrate": concurrent_migrate,
    "postgres_restart": postgres_restart,
    "sqlite_disk_full": sqlite_disk_full,
    "sentinel_failover": sentinel_failover,
}


# Workers and settings a drill needs beyond the defaults (2 workers of 4 slots).
SETUPS: dict[str, tuple[int, dict[str, str]]] = {
    **{name: (1, {}) for name in DRILLS if name.startswith("redis_")},  # 5th session queues
    "poll_loop_fails": (1, {}),
    "sse_abandoned": (0, {"VOICEPOOL_MAX_STREAMS_PER_USER": "20", "VOICEPOOL_STREAM_LEASE": "6"}),
    "offer_flood": (0, {"VOICEPOOL_READY_WAIT": "10"}),
    "offer_rate_flood": (0, {"VOICEPOOL_READY_WAIT": "10"}),
    "bad_requests": (0, {"VOICEPOOL_MAX_SESSIONS_PER_USER": "3"}),
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
        workers, extra = SETUPS.get(name, (2, {}))
        settings.update(extra)
        postgres, mount = None, None
        if name in ("postgres_restart", "concurrent_migrate"):
            postgres = PostgresServer.start()
            settings["VOICEPOOL_DATABASE_URL"] = postgres.create_database()
        if name == "sqlite_disk_full":
            mount = tmp / "tiny"
            mount.mkdir()
            await _run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)])
            settings["VOICEPOOL_DATABASE_URL"] = f"sqlite+aiosqlite:///{mount / 'voicepool.db'}"
        if workers == 0 or postgres or mount:  # sessions wait in the queue; none runs them
            settings["VOICEPOOL_ADMIT_WITHOUT_WORKERS"] = "true"
        sentinels = SentinelSet(tmp / "redis").start() if name == "sentinel_failover" else None
        if sentinels:
            settings["VOICEPOOL_REDIS_URL"] = sentinels.url
        system = System(tmp, settings=settings)
        system.postgres, system.tiny_mount = postgres, mount  # type: ignore[attr-defined]
        if sentinels:
            system.sentinels, system.redis_server = sentinels, sentinels.primary  # type: ignore[attr-defined]
        system.start(workers=0 if postgres or mount else workers, capacity=4)
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
            if sentinels:
                sentinels.stop()
            if mount:
                await _run(["umount", str(mount)], check=False)
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--flood"]:  # offer_flood's own process
        api_url, token, url, offers, seconds = sys.argv[2:7]
        codes = asyncio.run(flood_offers(api_url, token, url, int(offers), float(seconds)))
        print(json.dumps(codes))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(DRILLS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    rows = asyncio.run(run(args.only or list(DRILLS)))
    table = [
        "| fault | what was running | what the user saw | stored events lost | recovery s |",
        "|---|---|---|---:|---:|",
        *(
            f"| {r.fault} | {r.running} | {r.user_saw} | {r.lost} | {r.recovery_s:.2f} |"
            for r in rows
        ),
    ]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text(
            "# Fault drills\n\n`make drills` on a 2-core machine; recovery is from the fault "
            "(Redis outages: from Redis answering again) to users being served.\n\n"
            + "\n".join(table)
            + "\n"
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    if any(r.lost for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
