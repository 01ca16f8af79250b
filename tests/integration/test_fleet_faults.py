"""Workers dying and queues filling up, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from harness.api import api_client, connect_webrtc, create_session, wait_for_status
from harness.sse import read_events
from harness.webrtc_client import allow_loopback_ice

pytestmark = pytest.mark.slow

HEARTBEAT_TTL = 4.0  # the test system's VOICEPOOL_HEARTBEAT_TTL
POLL_SLACK = 0.2  # this test looks every 50 ms, over HTTP
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0


async def test_a_killed_workers_call_moves_on_and_fails_only_with_no_worker_left(
    make_system, hello_wav
) -> None:
    allow_loopback_ice()
    queue_ttl = 4.0
    system = make_system(workers=2, capacity=2, VOICEPOOL_QUEUE_TTL=str(queue_ttl))
    up = time.monotonic()
    token = system.create_user("bob")
    async with api_client(system, token) as api:
        session = await create_session(api, profile="echo")
        sid = session["session_id"]
        events = asyncio.create_task(read_events(api, session["events_url"]))
        client = await connect_webrtc(api, sid, str(hello_wav))
        try:
            live = await wait_for_status(api, sid, {"connected"})
            # The reaper judges nobody for a heartbeat TTL after it first sees a new Redis.
            await asyncio.sleep(max(up + HEARTBEAT_TTL + 1 - time.monotonic(), 0))
            os.kill(system.worker_process(live["worker_id"]).pid, signal.SIGKILL)
            killed_at = time.monotonic()
            moved = await wait_for_status(api, sid, {"ready"}, timeout=HEARTBEAT_TTL + 5)
            noticed_after = time.monotonic() - killed_at
        finally:
            await client.close()
        # The other worker took the call up; the client connects again and is heard.
        assert moved["reason"] == "recovered" and moved["worker_id"] != live["worker_id"]
        assert noticed_after <= HEARTBEAT_TTL + POLL_SLACK, noticed_after
        client = await connect_webrtc(api, sid, str(hello_wav))
        try:
            again = await wait_for_status(api, sid, {"connected"})
            assert again["reason"] == "client_reconnected"
            await client.wait_for_audio(ECHO_RMS, timeout=20)

            # Then that worker goes too: no worker takes the call up within the queue TTL.
            os.kill(system.worker_process(moved["worker_id"]).pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_for_status(api, sid, {"recovering"}, timeout=HEARTBEAT_TTL + 5)
            failed = await wait_for_status(
                api, sid, {"failed"}, timeout=HEARTBEAT_TTL + queue_ttl + 5
            )
            took = time.monotonic() - killed_at
        finally:
            await client.close()
        assert failed["reason"] == "worker_lost"
        assert took <= HEARTBEAT_TTL + queue_ttl + 2 * POLL_SLACK, took

        seen = await asyncio.wait_for(events, 10)
        states = [
            (e.data["data"]["state"], e.data["data"]["reason"])
            for e in seen
            if e.event == "session.state"
        ]
        assert states == [
            ("queued", "created"),
            ("starting", "picked_up"),
            ("ready", "pipeline_ready"),
            ("connected", "client_connected"),
            ("recovering", "worker_lost"),
            ("starting", "picked_up"),
            ("ready", "recovered"),
            ("connected", "client_reconnected"),
            ("recovering", "worker_lost"),
            ("failed", "worker_lost"),
        ]
        assert [e.data["seq"] for e in seen] == list(range(1, len(seen) + 1))

        # No worker left: a new session is refused at once. One that starts takes the next.
        refused = await api.post("/api/sessions", json={"transport": "webrtc"})
        assert refused.json()["detail"]["code"] == "no_workers"
        system.start_worker(capacity=2)
        system.wait_ready(1)
        fresh = await create_session(api, profile="echo")
        await wait_for_status(api, fresh["session_id"], {"ready"}, timeout=60)
        await api.delete(f"/api/sessions/{fresh['session_id']}")


async def test_full_pool_queues_then_starts_then_expires(make_system) -> None:
    queue_ttl = 4.0
    system = make_system(workers=1, capacity=1, VOICEPOOL_QUEUE_TTL=str(queue_ttl))
    token = system.create_user("carol")
    async with api_client(system, token) as api:
        first = await create_session(api, profile="echo")
        await wait_for_status(api, first["session_id"], {"ready"})

        second = await create_session(api, profile="echo")
        assert second["status"] == "queued"
        assert second["queue_position"] == 1
        await asyncio.sleep(1.0)  # the only slot is taken: it must still be waiting
        waiting = (await api.get(f"/api/sessions/{second['session_id']}")).json()
        assert (waiting["status"], waiting["queue_position"]) == ("queued", 1)

        ended = await api.delete(f"/api/sessions/{first['session_id']}")
        assert ended.json()["status"] == "ended"
        await wait_for_status(api, second["session_id"], {"ready"}, timeout=5)

        # Nothing frees up for the queue TTL: the third session expires.
        third = await create_session(api, profile="echo")
        events = await asyncio.wait_for(read_events(api, third["events_url"]), queue_ttl + 5)
        states = [
            (e.data["data"]["state"], e.data["data"]["reason"])
            for e in events
            if e.event == "session.state"
        ]
        assert states == [("queued", "created"), ("expired", "no_capacity")]
        places = [e.data["data"] for e in events if e.event == "session.queue"]
        assert places and places[0]["position"] == 1
        assert places[0]["estimated_wait_s"] > 0  # from the two starts seen so far
        with system.redis as r:
            assert r.zcard("vp:queue:server") == 0  # and it left the queue

        await api.delete(f"/api/sessions/{second['session_id']}")
        # A queued session can also be cancelled by its owner.
        blocker = await create_session(api, profile="echo")
        await wait_for_status(api, blocker["session_id"], {"ready"})
        waiting = await create_session(api, profile="echo")
        cancelled = (await api.delete(f"/api/sessions/{waiting['session_id']}")).json()
        assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "client_ended")
