"""A whole echo session through the real system: API, Redis, worker processes, WebRTC."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.api import api_client, connect_webrtc
from harness.sse import is_final_state, read_events
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import allow_loopback_ice

pytestmark = pytest.mark.slow

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0


async def _stored_events(
    api: httpx.AsyncClient, conversation_id: str, count: int
) -> list[dict] | None:
    """The conversation's stored events, once there are ``count`` of them."""
    events = (await api.get(f"/api/conversations/{conversation_id}")).json()["events"]
    return events if len(events) >= count else None


def _published_types(system: System, session_id: str) -> list[str]:
    """The types of the events the worker has published on the session's live stream."""
    with system.redis as r:
        return [fields["type"] for _id, fields in r.xrange(f"vp:session:{session_id}:events")]


async def test_echo_session_end_to_end(make_system, hello_wav) -> None:
    allow_loopback_ice()
    system = make_system(workers=2, capacity=2)
    token = system.create_user("alice")
    async with api_client(system, token) as api:
        created = await api.post("/api/sessions", json={"transport": "webrtc", "profile": "echo"})
        assert created.status_code == 202, created.text
        body = created.json()
        session_id, conversation_id = body["session_id"], body["conversation_id"]
        assert body["status"] in ("queued", "starting", "ready")
        assert body["events_url"] == f"/api/sessions/{session_id}/events"

        sse = asyncio.create_task(read_events(api, body["events_url"]))
        client = await connect_webrtc(api, session_id, str(hello_wav))
        try:
            await client.wait_for_audio(ECHO_RMS, timeout=20)  # the bot played our words back
            await eventually(
                lambda: "bot.stopped_speaking" in _published_types(system, session_id),
                what="a bot.stopped_speaking event",
            )
            assert client.received_rms() > 50
        finally:
            ended = await api.delete(f"/api/sessions/{session_id}")
            await client.close()
        assert ended.status_code == 200
        assert (ended.json()["status"], ended.json()["reason"]) == ("ended", "client_ended")

        events = await asyncio.wait_for(sse, 10)
        states = [e.data["data"]["state"] for e in events if e.event == "session.state"]
        assert states == ["queued", "starting", "ready", "connected", "ended"]
        assert is_final_state(events[-1])
        types = [e.event for e in events]
        for kind in (
            "user.turn_started",
            "user.turn_stopped",
            "bot.started_speaking",
            "bot.stopped_speaking",
        ):
            assert kind in types, types
        assert types.index("user.turn_stopped") < types.index("bot.started_speaking")
        assert [e.data["seq"] for e in events] == list(range(1, len(events) + 1))

        # Resuming after any event id replays exactly what followed it.
        middle = events[2]
        resumed = await read_events(api, body["events_url"], last_event_id=middle.id)
        assert [e.id for e in resumed] == [e.id for e in events[3:]]

        # The store holds exactly what the worker published (the live stream), once each.
        with system.redis as r:
            published = r.xrange(f"vp:session:{session_id}:events")
        # The persister stores asynchronously.
        stored = await eventually(
            lambda: _stored_events(api, conversation_id, len(published)),
            what=f"the persister storing all {len(published)} events",
        )
        assert [(e["seq"], e["type"]) for e in stored] == [
            (int(f["seq"]), f["type"]) for _id, f in published
        ]
        assert len({e["seq"] for e in stored}) == len(stored)

        session = (await api.get(f"/api/sessions/{session_id}")).json()
        assert session["status"] == "ended"
        markdown = (await api.get(f"/api/conversations/{conversation_id}/export?format=md")).text
        assert "User spoke for" in markdown and "Bot spoke for" in markdown

    # Metrics moved: the API counted the session, the worker its duration.
    api_metrics = system.metrics(f"{system.api_url}/metrics")
    ended_key = (
        'voicepool_sessions_ended_total{pool="server",profile="echo",reason="client_ended",'
        'state="ended",transport="webrtc"}'
    )
    assert api_metrics[ended_key] >= 1
    assert api_metrics['voicepool_dispatch_seconds_count{pool="server"}'] >= 1
    worker_id = session["worker_id"]
    port = system.metrics_ports[system.worker_process(worker_id).pid]
    worker_metrics = system.metrics(f"http://127.0.0.1:{port}/metrics")
    duration_key = (
        'voicepool_worker_session_duration_seconds_count{pool="server",reason="client_ended"}'
    )
    assert worker_metrics[duration_key] == 1
    assert worker_metrics['voicepool_worker_capacity_sessions{pool="server"}'] == 2
    # ... and that was a worker on uvloop, as `voicepool worker` runs where it is installed.
    index = system.workers.index(system.worker_process(worker_id))
    assert "(event loop: uvloop)" in (system.tmp / f"worker{index}.log").read_text()

    exported = system.run_cli("export", conversation_id, "--format", "json")
    assert f'"conversation_id": "{conversation_id}"' in exported
