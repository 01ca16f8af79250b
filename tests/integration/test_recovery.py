"""A call survives its worker, with real processes: killed (kill -9) or drained, the call
goes ``recovering``, another worker takes it up with the conversation so far (``ready`` /
``recovered``), and the client connects again to carry on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from harness.api import api_client, connect_webrtc, create_session, wait_for_status
from harness.doubles.openai_realtime import FakeRealtimeServer, Turn
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import allow_loopback_ice

pytestmark = pytest.mark.slow

API_KEY = "sk-test-voicepool-secret-0123456789"
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0


def _events(system: System, session_id: str) -> list[dict]:
    """The session's published events: seq, ts, type and data."""
    with system.redis as r:
        entries = r.xrange(f"vp:session:{session_id}:events")
    return [
        {"seq": int(f["seq"]), "ts": float(f["ts"]), "type": f["type"], **json.loads(f["data"])}
        for _id, f in entries
    ]


def _states(system: System, session_id: str) -> list[dict]:
    return [e for e in _events(system, session_id) if e["type"] == "session.state"]


def _said(system: System, session_id: str, kind: str) -> list[str]:
    return [e["text"] for e in _events(system, session_id) if e["type"] == kind]


async def _past_the_reapers_grace(started: float, heartbeat_ttl: float) -> None:
    """The reaper judges no worker lost for a heartbeat TTL after it first sees a Redis that
    has just started (it may have restarted under it): a test that kills a worker waits
    that out, counted from when the system was up (``started``, monotonic)."""
    await asyncio.sleep(max(started + heartbeat_ttl + 1.0 - time.monotonic(), 0.0))


async def test_a_killed_workers_assistant_call_goes_on_with_its_conversation_elsewhere(
    make_system, hello_wav
) -> None:
    allow_loopback_ice()
    async with FakeRealtimeServer(turns=[Turn("My name is Ana", answer="Hello Ana")]) as fake:
        # The default heartbeat: the loss is seen from the worker's connections, not by
        # waiting for its heartbeat to expire (9 s).
        system = make_system(
            workers=2,
            capacity=2,
            OPENAI_API_KEY=API_KEY,
            VOICEPOOL_OPENAI_BASE_URL=fake.base_url,
            VOICEPOOL_HEARTBEAT_TTL="10",
            VOICEPOOL_HEARTBEAT_INTERVAL="1",
        )
        up = time.monotonic()
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, str(hello_wav))
            try:
                await eventually(
                    lambda: "Hello Ana" in _said(system, sid, "assistant.transcript"),
                    timeout=40,
                    what="the first turn answered and recorded",
                )
                owner = (await api.get(f"/api/sessions/{sid}")).json()["worker_id"]
                await _past_the_reapers_grace(up, 10)
                os.kill(system.worker_process(owner).pid, signal.SIGKILL)
                killed_at = time.time()
            finally:
                await client.close()  # its media went with the worker

            ready = await wait_for_status(api, sid, {"ready"}, timeout=30)
            assert ready["reason"] == "recovered" and ready["worker_id"] != owner
            states = _states(system, sid)
            moved = [(s["state"], s["reason"]) for s in states[-3:]]
            assert moved == [
                ("recovering", "worker_lost"),
                ("starting", "picked_up"),
                ("ready", "recovered"),
            ]
            recovering_after = states[-3]["ts"] - killed_at
            ready_after = states[-1]["ts"] - killed_at
            print(f"kill -9 → recovering {recovering_after:.2f} s, → ready {ready_after:.2f} s")
            assert recovering_after < 5.0, recovering_after  # not the 9 s heartbeat expiry

            # The client connects again; the new worker's model gets the conversation so
            # far before anything else is said, and no greeting.
            fake.turns = [Turn("What is my name", answer="You are Ana")]  # the next connection's
            connections_before = len(fake.connection_starts)
            client = await connect_webrtc(api, sid, str(hello_wav))
            try:
                connected = await wait_for_status(api, sid, {"connected"})
                assert connected["reason"] == "client_reconnected"
                await fake.wait_for(
                    lambda e: (
                        len(fake.connection_starts) > connections_before
                        and e["type"] == "conversation.item.create"
                        and "Hello Ana" in json.dumps(e)
                    ),
                    timeout=20,
                )
                seeded_at = time.time()
                await eventually(
                    lambda: "You are Ana" in _said(system, sid, "assistant.transcript"),
                    timeout=40,
                    what="the next turn answered",
                )
                await client.wait_for_audio(ECHO_RMS, timeout=10)  # the model's voice
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()

        new = fake.received[fake.connection_starts[connections_before] :]
        items = [json.dumps(e["item"]) for e in new if e["type"] == "conversation.item.create"]
        # (Pipecat gives a Realtime session earlier messages as one item, the transcript.)
        assert any("My name is Ana" in i and "Hello Ana" in i for i in items), items
        assert not any(e["type"] == "response.create" for e in new)  # no greeting again
        # The model had the conversation before it next spoke.
        events = _events(system, sid)
        spoke = [e["ts"] for e in events if e["type"] == "bot.started_speaking"]
        assert next(t for t in spoke if t > killed_at) > seeded_at - 0.5, (seeded_at, spoke)
        # One stream, every seq once and none missing, across both workers.
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert _said(system, sid, "user.transcript").count("My name is Ana") == 1
        assert _said(system, sid, "assistant.transcript").count("Hello Ana") == 1
        assert (events[-1]["state"], events[-1]["reason"]) == ("ended", "client_ended")


async def test_a_drain_moves_live_calls_to_a_free_worker_and_exits_in_seconds(
    make_system, hello_wav
) -> None:
    allow_loopback_ice()
    system = make_system(workers=1, capacity=2)
    admin = system.create_user("ops", admin=True)
    user = system.create_user("dana")
    async with api_client(system, admin) as ops, api_client(system, user) as api:
        calls = [await create_session(api, profile="echo") for _ in range(2)]
        clients = [await connect_webrtc(api, c["session_id"], str(hello_wav)) for c in calls]
        try:
            for call, client in zip(calls, clients, strict=True):
                await wait_for_status(api, call["session_id"], {"connected"})
                await client.wait_for_audio(ECHO_RMS, timeout=20)  # the echo came back
            (drained,) = system.live_workers()
            system.start_worker(capacity=2)  # a free worker joins
            await eventually(
                lambda: len(system.live_workers()) == 2, timeout=60, what="the second worker"
            )
            started = time.monotonic()
            reply = await ops.post(f"/api/workers/{drained['id']}/drain", json={"timeout_s": 60})
            assert reply.status_code == 202
            proc = system.workers[0]
            await eventually(lambda: proc.poll() is not None, timeout=15, what="the worker's exit")
            took = time.monotonic() - started
        finally:
            for client in clients:
                await client.close()
        print(f"drain with 2 live calls: the worker exited after {took:.2f} s")
        assert proc.returncode == 0 and took < 10, took

        for call in calls:
            sid = call["session_id"]
            ready = await wait_for_status(api, sid, {"ready"}, timeout=15)
            assert ready["reason"] == "recovered" and ready["worker_id"] != drained["id"]
            moved = [(s["state"], s["reason"]) for s in _states(system, sid)[-3:]]
            assert moved == [
                ("recovering", "worker_draining"),
                ("starting", "picked_up"),
                ("ready", "recovered"),
            ]
            client = await connect_webrtc(api, sid, str(hello_wav))
            try:
                connected = await wait_for_status(api, sid, {"connected"})
                assert connected["reason"] == "client_reconnected"
                await client.wait_for_audio(ECHO_RMS, timeout=20)  # and the echo goes on
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()
            events = _events(system, sid)
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_a_stalled_worker_that_comes_back_lets_its_recovered_call_go(make_system) -> None:
    heartbeat_ttl = 4.0  # the test system's
    system = make_system(workers=2, capacity=2)
    up = time.monotonic()
    token = system.create_user("erin")
    async with api_client(system, token) as api:
        session = await create_session(api, profile="echo")
        sid = session["session_id"]
        ready = await wait_for_status(api, sid, {"ready"})
        stalled = system.worker_process(ready["worker_id"])
        await _past_the_reapers_grace(up, heartbeat_ttl)
        stalled.send_signal(signal.SIGSTOP)  # its connections stay open: a stall, not a death
        try:
            recovered = await eventually(
                lambda: _recovered_elsewhere(system, sid, ready["worker_id"]),
                timeout=heartbeat_ttl + 10,
                what="the call ready on the other worker",
            )
        finally:
            stalled.send_signal(signal.SIGCONT)

        def let_go() -> bool:
            beats = {w["id"]: w for w in system.live_workers()}
            return beats.get(ready["worker_id"], {}).get("active") == 0

        await eventually(let_go, timeout=10, what="the stalled worker letting the call go")
        # It said nothing more for the call: the last word is still the other worker's.
        last = _states(system, sid)[-1]
        assert (last["state"], last["reason"], last["worker_id"]) == (
            "ready",
            "recovered",
            recovered,
        )
        described = (await api.get(f"/api/sessions/{sid}")).json()
        assert (described["status"], described["worker_id"]) == ("ready", recovered)
        ended = (await api.delete(f"/api/sessions/{sid}")).json()
        assert ended["status"] == "ended"


def _recovered_elsewhere(system: System, session_id: str, old: str) -> str | None:
    """The worker that has the call ready again (``recovered``), if not ``old``."""
    last = _states(system, session_id)[-1]
    if (last["state"], last["reason"]) == ("ready", "recovered") and last["worker_id"] != old:
        return str(last["worker_id"])
    return None
