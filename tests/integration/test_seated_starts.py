"""Seats with real processes: a waiting worker's slot taken in the API's create step.

What a user sees: ``POST /api/start`` answers with a worker that is ready for them, and
what comes next works as with any start: they connect and are heard, their slot comes
back, a second caller waits in the queue for it, a draining worker takes nobody, and a
worker killed as it offered its seat costs its one caller a resume, not the call.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from harness.api import api_client, wait_for_status
from harness.waiting import eventually
from harness.ws_client import talk
from shared import keys

pytestmark = pytest.mark.slow

HEARTBEAT_TTL = 4.0  # the test system's VOICEPOOL_HEARTBEAT_TTL
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
SEATED = 'voicepool_sessions_seated_total{pool="server"}'


def _seated(system: Any) -> float:
    return system.metrics(f"{system.api_url}/metrics").get(SEATED, 0)


async def _start(api: httpx.AsyncClient, **body: Any) -> tuple[str, str]:
    started = await api.post("/api/start", json={"transport": "websocket", **body})
    assert started.status_code == 200, started.text
    return started.headers["X-Session-Id"], started.json()["wsUrl"]


def _offered(system: Any, worker_id: str | None = None) -> int:
    """The worker's seat if offered (1, else 0), or without one, the pool's seats offered."""
    with system.redis as r:
        if worker_id is None:
            return int(r.scard(keys.pool_seats("server")))
        return int(r.exists(keys.worker_seat(worker_id)))


def _ready_on(system: Any, session_id: str) -> list[str]:
    """The workers the session was ready on, from its events."""
    with system.redis as r:
        entries = r.xrange(keys.session_events(session_id))
    events = [json.loads(fields["data"]) for _id, fields in entries]
    return [e["worker_id"] for e in events if e.get("state") == "ready"]


async def _heard(ws_url: str, wav: Any) -> None:
    await talk(ws_url, wav, ECHO_RMS)


async def test_a_seated_start_is_heard_and_its_slot_comes_back_for_the_next(
    make_system, hello_wav
) -> None:
    system = make_system(workers=1, capacity=1)
    async with api_client(system, system.create_user("alice")) as api:
        # A worker that has just started offers its seat once its pipeline is built.
        worker_id = str(system.live_workers()[0]["id"])
        await eventually(lambda: _offered(system, worker_id), what="a seat offered")
        first, ws_url = await _start(api)
        assert _seated(system) == 1
        assert (await api.get(f"/api/sessions/{first}")).json()["status"] == "ready"

        # The one slot is taken: a second caller is queued, not seated, and waits.
        waiting = await api.post("/api/sessions", json={"transport": "websocket"})
        assert waiting.status_code == 202 and waiting.json()["status"] == "queued"
        await _heard(ws_url, hello_wav)
        assert (await api.delete(f"/api/sessions/{first}")).status_code == 200

        # The slot came back: the queued one starts on it (through the queue).
        second = waiting.json()["session_id"]
        await wait_for_status(api, second, {"ready"}, timeout=10)
        assert _seated(system) == 1
        await api.delete(f"/api/sessions/{second}")

        # Nobody waits now: the next start is seated again, and heard.
        async def seat_again() -> tuple[str, str]:
            await eventually(lambda: _offered(system) == 1, what="a seat")
            return await _start(api)

        third, ws_url = await seat_again()
        assert _seated(system) == 2
        await _heard(ws_url, hello_wav)
        await api.delete(f"/api/sessions/{third}")


async def test_a_draining_workers_seat_takes_nobody(make_system) -> None:
    system = make_system(workers=2, capacity=2)
    admin, user = system.create_user("ops", admin=True), system.create_user("bo")
    async with api_client(system, admin) as ops, api_client(system, user) as api:
        await eventually(lambda: _offered(system) == 2, what="two seats")
        draining = system.live_workers()[0]["id"]
        drained = await ops.post(f"/api/workers/{draining}/drain", json={"timeout_s": 2})
        assert drained.status_code == 202
        for _ in range(3):
            session_id, _url = await _start(api)
            assert _ready_on(system, session_id) != [draining]
            await api.delete(f"/api/sessions/{session_id}")
        # Its seat was withdrawn as the drain began, not left to lapse.
        assert not _offered(system, draining)


async def test_a_caller_seated_on_a_worker_killed_meanwhile_resumes_on_another(
    make_system, hello_wav
) -> None:
    system = make_system(workers=1, capacity=2)
    up = time.monotonic()
    async with api_client(system, system.create_user("carol")) as api:
        (worker,) = system.live_workers()
        await eventually(lambda: _offered(system, str(worker["id"])), what="a seat")
        # The reaper judges nobody for a heartbeat TTL after it first sees a new Redis.
        await asyncio.sleep(max(up + HEARTBEAT_TTL + 1 - time.monotonic(), 0))
        await eventually(lambda: _offered(system, str(worker["id"])), what="a seat")
        os.kill(system.worker_process(str(worker["id"])).pid, signal.SIGKILL)
        # At once: while the dead worker's seat has not lapsed, the caller is seated there
        # (unless the kill came in the moment between two offers: then the caller is
        # queued, and the next worker starts the call).
        starting = asyncio.create_task(_start(api))
        await asyncio.sleep(0.5)
        system.start_worker(capacity=2)
        session_id, ws_url = await starting
        if _ready_on(system, session_id) == [worker["id"]]:
            with pytest.raises(OSError):  # nobody listens there any more
                await websockets.connect(ws_url, open_timeout=5)

            # What the caller does next: start again with their session's id (which waits
            # while the call moves), until they get a worker that is alive: the reaper
            # moves the call once the worker is two heartbeats late with no connection.
            async def resumed() -> str:
                again = await api.post(
                    "/api/start", json={"transport": "websocket", "sessionId": session_id}
                )
                assert again.status_code == 200, again.text
                assert urlsplit(again.json()["wsUrl"]).netloc != urlsplit(ws_url).netloc
                return str(again.json()["wsUrl"])

            ws_url = await eventually(resumed, timeout=HEARTBEAT_TTL + 5, what="a live worker")
        assert _ready_on(system, session_id)[-1] != worker["id"]
        await _heard(ws_url, hello_wav)
        await api.delete(f"/api/sessions/{session_id}")
