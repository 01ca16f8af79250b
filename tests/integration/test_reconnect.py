"""A call waits for its client: through the real system (API, Redis, a worker process),
WebRTC (aiortc) and WebSocket clients on loopback, the echo bot.

A client whose media goes away without a DELETE leaves the call ``reconnecting``
(``client_lost``); connecting again the usual way (a new SDP offer, a fresh
``ws_url``) makes it ``connected`` again (``client_reconnected``): the same session,
the same event stream, the echo heard again. Nobody back within
``VOICEPOOL_RECONNECT_GRACE``: ``ended`` (``client_left``).

Each test prints what it measured (``-s`` shows it): from the client going to
the ``reconnecting`` event, and from the new connection to ``connected``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from harness.api import api_client, connect_webrtc, create_session, wait_for_status
from harness.doubles.openai_realtime import FakeRealtimeServer, Turn
from harness.sse import SSEEvent, read_events
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import WavAudioTrack, allow_loopback_ice
from harness.ws_client import ProtobufClient

pytestmark = pytest.mark.slow

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
API_KEY = "sk-test-voicepool-secret-0123456789"
AWAY_S = 5.0  # how long the client stays away before it comes back


def _published(system: System, session_id: str) -> list[dict[str, Any]]:
    """The events the worker published on the session's live stream, in order."""
    with system.redis as r:
        entries = r.xrange(f"vp:session:{session_id}:events")
    return [
        {
            "seq": int(f["seq"]),
            "ts": float(f["ts"]),
            "type": f["type"],
            "data": json.loads(f["data"]),
        }
        for _id, f in entries
    ]


async def _state(system: System, session_id: str, state: str, *, after: int = 0) -> dict[str, Any]:
    """The session's ``session.state`` event to ``state`` with a seq above ``after``."""

    def found() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in _published(system, session_id)
                if e["type"] == "session.state" and e["data"]["state"] == state and e["seq"] > after
            ),
            None,
        )

    return await eventually(found, timeout=20, what=f"the session {state}")


def _states(events: list[SSEEvent]) -> list[tuple[str, str]]:
    return [
        (e.data["data"]["state"], e.data["data"]["reason"])
        for e in events
        if e.event == "session.state"
    ]


def _check_stream(events: list[SSEEvent], session_id: str) -> None:
    """One session's events, each once, with no gap."""
    assert [e.data["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e.data["session_id"] for e in events} == {session_id}


async def _stored_once(api: httpx.AsyncClient, system: System, session: dict[str, Any]) -> None:
    """The store holds exactly what the worker published, once each."""
    published = [(e["seq"], e["type"]) for e in _published(system, session["session_id"])]

    async def stored() -> bool:
        got = await api.get(f"/api/conversations/{session['conversation_id']}")
        return [(e["seq"], e["type"]) for e in got.json()["events"]] == published

    await eventually(stored, what=f"all {len(published)} events stored, once each")


async def test_webrtc_client_comes_back_with_a_new_offer(make_system, hello_wav) -> None:
    allow_loopback_ice()
    system = make_system(workers=1, capacity=2, VOICEPOOL_RECONNECT_GRACE="20")
    async with api_client(system, system.create_user("alice")) as api:
        session = await create_session(api, profile="echo")
        session_id = session["session_id"]
        sse = asyncio.create_task(read_events(api, session["events_url"]))
        first = await connect_webrtc(api, session_id, str(hello_wav))
        try:
            await first.wait_for_audio(ECHO_RMS, timeout=20)
            await wait_for_status(api, session_id, {"connected"})
        finally:
            closed_at = time.time()
            await first.close()  # the page goes away: its peer connection closes, no DELETE

        lost = await _state(system, session_id, "reconnecting")
        assert lost["data"]["reason"] == "client_lost"
        lost_s = lost["ts"] - closed_at
        read = (await api.get(f"/api/sessions/{session_id}")).json()
        assert (read["status"], read["reason"]) == ("reconnecting", "client_lost")

        await asyncio.sleep(AWAY_S)  # the client is away for a while (time, not a condition)
        assert (await api.get(f"/api/sessions/{session_id}")).json()["status"] == "reconnecting"
        offered_at = time.time()
        second = await connect_webrtc(api, session_id, str(hello_wav))  # a new offer, no pc_id
        try:
            back = await _state(system, session_id, "connected", after=lost["seq"])
            assert back["data"]["reason"] == "client_reconnected"
            back_s = back["ts"] - offered_at
            await second.wait_for_audio(ECHO_RMS, timeout=20)  # the same bot plays us back again
            ended = await api.delete(f"/api/sessions/{session_id}")
        finally:
            await second.close()
        assert (ended.json()["status"], ended.json()["reason"]) == ("ended", "client_ended")

        events = await asyncio.wait_for(sse, 10)
        assert _states(events) == [
            ("queued", "created"),
            ("starting", "picked_up"),
            ("ready", "pipeline_ready"),
            ("connected", "client_connected"),
            ("reconnecting", "client_lost"),
            ("connected", "client_reconnected"),
            ("ended", "client_ended"),
        ]
        _check_stream(events, session_id)
        returned = next(
            i
            for i, e in enumerate(events)
            if e.event == "session.state" and e.data["data"]["reason"] == "client_reconnected"
        )
        assert "bot.started_speaking" in [e.event for e in events[returned:]]  # echo again
        await _stored_once(api, system, session)
    print(
        f"\nwebrtc: peer closed → reconnecting {lost_s:.3f} s; new offer → connected {back_s:.3f} s"
    )


async def test_webrtc_client_that_never_comes_back(make_system, hello_wav) -> None:
    allow_loopback_ice()
    system = make_system(workers=1, capacity=1, VOICEPOOL_RECONNECT_GRACE="2")
    async with api_client(system, system.create_user("alice")) as api:
        session = await create_session(api, profile="echo")
        session_id = session["session_id"]
        client = await connect_webrtc(api, session_id, str(hello_wav))
        offer = {"sdp": client.pc.localDescription.sdp, "type": "offer"}
        try:
            await wait_for_status(api, session_id, {"connected"})
        finally:
            closed_at = time.time()
            await client.close()

        lost = await _state(system, session_id, "reconnecting")
        ended = await _state(system, session_id, "ended")
        assert (lost["data"]["reason"], ended["data"]["reason"]) == ("client_lost", "client_left")
        waited_s = ended["ts"] - lost["ts"]
        assert 1.9 <= waited_s <= 5, waited_s  # the grace, 2 s
        late = await api.post(f"/api/sessions/{session_id}/offer", json=offer)
        assert (late.status_code, late.json()["detail"]["code"]) == (409, "session_ended")

        # Its worker slot is free again: the next call is taken at once (capacity 1).
        after = await create_session(api, profile="echo")
        await wait_for_status(api, after["session_id"], {"ready"})
        await api.delete(f"/api/sessions/{after['session_id']}")
    print(
        f"\nwebrtc: closed → reconnecting {lost['ts'] - closed_at:.3f} s; → ended {waited_s:.3f} s"
    )


async def test_webrtc_peer_gone_silent_and_a_reload(make_system, hello_wav) -> None:
    """A peer whose packets stop (a network gone without a word) is lost after a few
    seconds, not ICE consent's 30, and back when its audio is; an offer while the old
    peer looks alive (a reload) replaces it."""
    allow_loopback_ice()
    system = make_system(workers=1, capacity=2, VOICEPOOL_RECONNECT_GRACE="20")
    async with api_client(system, system.create_user("alice")) as api:
        session = await create_session(api, profile="echo")
        session_id = session["session_id"]
        client = await connect_webrtc(api, session_id, str(hello_wav))
        reloaded = None
        try:
            connected = await _state(system, session_id, "connected")
            await client.wait_for_audio(ECHO_RMS, timeout=20)

            sender = client.pc.getSenders()[0]
            silent_at = time.time()
            sender.replaceTrack(None)  # no more packets; the peer connection stays up
            lost = await _state(system, session_id, "reconnecting", after=connected["seq"])
            silent_s = lost["ts"] - silent_at
            assert 2.5 <= silent_s <= 8, silent_s

            resumed_at = time.time()
            sender.replaceTrack(WavAudioTrack(str(hello_wav)))
            back = await _state(system, session_id, "connected", after=lost["seq"])
            assert back["data"]["reason"] == "client_reconnected"
            resumed_s = back["ts"] - resumed_at
            heard = client.received_seconds()
            await client.wait_for_audio(ECHO_RMS, timeout=20, start_s=heard)

            # A reload: a new peer offers while the old one still looks connected.
            offered_at = time.time()
            reloaded = await connect_webrtc(api, session_id, str(hello_wav))
            replaced = await _state(system, session_id, "reconnecting", after=back["seq"])
            again = await _state(system, session_id, "connected", after=replaced["seq"])
            assert (replaced["data"]["reason"], again["data"]["reason"]) == (
                "client_lost", "client_reconnected"
            )  # fmt: skip
            reload_s = again["ts"] - offered_at
            await reloaded.wait_for_audio(ECHO_RMS, timeout=20)
        finally:
            await api.delete(f"/api/sessions/{session_id}")
            await client.close()
            if reloaded is not None:
                await reloaded.close()
    print(
        f"\nwebrtc: packets stop → reconnecting {silent_s:.3f} s; packets again → connected "
        f"{resumed_s:.3f} s; reload offer → connected {reload_s:.3f} s"
    )


async def test_websocket_client_comes_back_with_a_fresh_url(make_system, hello_wav) -> None:
    system = make_system(workers=1, capacity=2, VOICEPOOL_RECONNECT_GRACE="20")
    async with api_client(system, system.create_user("alice")) as api:
        session = await create_session(api, profile="echo", transport="websocket")
        session_id = session["session_id"]
        await wait_for_status(api, session_id, {"ready"})
        connect_url = f"/api/sessions/{session_id}/connect"
        first_url = (await api.post(connect_url)).json()["ws_url"]
        first = await ProtobufClient.connect(first_url, hello_wav)
        try:
            connected = await _state(system, session_id, "connected")
            await eventually(lambda: first.loudest_rms() > ECHO_RMS, timeout=20, what="echo")
        finally:
            closed_at = time.time()
            await first.close()  # the socket closes: no DELETE

        lost = await _state(system, session_id, "reconnecting", after=connected["seq"])
        assert lost["data"]["reason"] == "client_lost"
        lost_s = lost["ts"] - closed_at

        fresh = await api.post(connect_url)  # a new single-use token, for the same call
        assert fresh.status_code == 200, fresh.text
        second_url = fresh.json()["ws_url"]
        assert second_url != first_url
        attached_at = time.time()
        second = await ProtobufClient.connect(second_url, hello_wav)
        try:
            back = await _state(system, session_id, "connected", after=lost["seq"])
            assert back["data"]["reason"] == "client_reconnected"
            back_s = back["ts"] - attached_at
            await eventually(lambda: second.loudest_rms() > ECHO_RMS, timeout=20, what="echo again")
            taken = await api.post(connect_url)  # one client at a time
            assert (taken.status_code, taken.json()["detail"]["code"]) == (409, "already_connected")
            ended = await api.delete(f"/api/sessions/{session_id}")
            assert (ended.json()["status"], ended.json()["reason"]) == ("ended", "client_ended")
            await asyncio.wait_for(second.closed.wait(), 10)  # the worker closed our socket
        finally:
            await second.close()

        states = [
            (e["data"]["state"], e["data"]["reason"])
            for e in _published(system, session_id)
            if e["type"] == "session.state"
        ]
        assert states[3:] == [
            ("connected", "client_connected"),
            ("reconnecting", "client_lost"),
            ("connected", "client_reconnected"),
            ("ended", "client_ended"),
        ]
        await _stored_once(api, system, session)
    print(
        f"\nwebsocket: closed → reconnecting {lost_s:.3f} s; new socket → connected {back_s:.3f} s"
    )


async def test_the_assistant_does_not_talk_to_an_empty_line(make_system, hello_wav) -> None:
    """The caller goes mid-greeting: the model's answer is cancelled, nothing is asked of it
    while the caller is away, and the return is not greeted again; the next turn is
    answered as usual."""
    allow_loopback_ice()
    greeting = "Hello there, this greeting is long enough to be cut off well before its end."
    async with FakeRealtimeServer(greeting=greeting) as fake:
        system = make_system(
            workers=1, capacity=2, OPENAI_API_KEY=API_KEY, VOICEPOOL_OPENAI_BASE_URL=fake.base_url,
            VOICEPOOL_RECONNECT_GRACE="20",
        )  # fmt: skip
        async with api_client(system, system.create_user("alice")) as api:
            session = await create_session(api, profile="assistant")
            session_id = session["session_id"]
            first = await connect_webrtc(api, session_id, None)  # says nothing
            try:
                await eventually(
                    lambda: any(e["type"] == "response.output_audio.delta" for e in fake.sent),
                    timeout=20,
                    what="the greeting under way",
                )
            finally:
                await first.close()
            lost = await _state(system, session_id, "reconnecting")
            await fake.wait_for(lambda e: e["type"] == "response.cancel")
            asked = fake.count("response.create")
            assert asked == 1  # the greeting's

            await asyncio.sleep(AWAY_S)  # the caller is away (time, not a condition)
            second = await connect_webrtc(api, session_id, str(hello_wav))
            try:
                back = await _state(system, session_id, "connected", after=lost["seq"])
                assert back["data"]["reason"] == "client_reconnected"

                def said() -> list[str]:
                    events = _published(system, session_id)
                    return [
                        e["data"]["text"] for e in events if e["type"] == "assistant.transcript"
                    ]

                await eventually(
                    lambda: Turn.answer in said(), timeout=30, what="the caller's turn answered"
                )
            finally:
                await api.delete(f"/api/sessions/{session_id}")
                await second.close()

        # One greeting, cut short; then the answer to the caller's turn (server VAD answers
        # it: the worker asked the model for nothing more).
        assert fake.count("response.create") == asked
        texts = said()
        assert len(texts) == 2 and texts[1] == Turn.answer, texts
        assert greeting.startswith(texts[0].strip()) and len(texts[0]) < len(greeting), texts
        transcripts = [
            e for e in _published(system, session_id) if e["type"] == "assistant.transcript"
        ]
        assert transcripts[0]["data"]["interrupted"] is True
        assert transcripts[0]["seq"] < back["seq"]
