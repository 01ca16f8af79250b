"""WebSocket sessions, POST /api/start and transport choices.

The end-to-end tests run the real system (API, Redis, worker processes) and a
client that speaks what Pipecat's clients speak on a WebSocket: protobuf
frames, encoded and decoded with Pipecat's own ``ProtobufFrameSerializer``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidMessage, InvalidStatus

from harness.api import api_client, wait_for_status
from harness.waiting import eventually
from harness.webrtc_client import WebRTCTestClient, allow_loopback_ice
from harness.ws_client import ProtobufClient, talk
from shared import ws_tokens
from shared.http_server import MAX_HEAD_BYTES
from shared.lifecycle import FINAL_STATES

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
FRAME_MS = 20


async def _refused(url: str) -> bool:
    """True if the listener turns the handshake away (HTTP 403 instead of 101)."""
    try:
        websocket = await websockets.connect(url, open_timeout=5)
    except InvalidStatus as exc:
        return exc.response.status_code == 403
    await websocket.close()
    return False


async def _ready(api: httpx.AsyncClient, transport: str) -> dict[str, Any]:
    created = await api.post("/api/sessions", json={"transport": transport, "profile": "echo"})
    assert created.status_code == 202, created.text
    return await wait_for_status(api, created.json()["session_id"], {"ready"})


async def _connect(api: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    connect = await api.post(f"/api/sessions/{session_id}/connect")
    assert connect.status_code == 200, connect.text
    return connect.json()


def _hash(system: Any, session_id: str) -> dict[str, str]:
    with system.redis as r:
        return dict(r.hgetall(f"vp:session:{session_id}"))


def _token(ws_url: str) -> str:
    return parse_qs(urlsplit(ws_url).query)["token"][0]


async def _events(system: Any, session_id: str) -> list[dict[str, Any]]:
    with system.redis as r:
        entries = r.xrange(f"vp:session:{session_id}:events")
    return [{"type": f["type"], "data": json.loads(f["data"])} for _id, f in entries]


async def _final(api: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    return await wait_for_status(api, session_id, {"ended", "failed", "expired", "cancelled"})


async def _stored(api: httpx.AsyncClient, conversation_id: str, types: set[str]) -> list[dict]:
    """The stored events, once these types and the session's final state are among them
    (the persister stores asynchronously, in batches gathered over up to 50 ms)."""

    async def stored() -> list[dict]:
        events = (await api.get(f"/api/conversations/{conversation_id}")).json()["events"]
        assert types <= {e["type"] for e in events}, [e["type"] for e in events]
        states = [e["data"]["state"] for e in events if e["type"] == "session.state"]
        assert states and states[-1] in FINAL_STATES, states
        return events

    return await eventually(stored, what=f"stored events of types {sorted(types)}")


# --- end to end, through the real system ------------------------------------------------


@pytest.mark.slow
async def test_websocket_echo_session_end_to_end(make_system, hello_wav) -> None:
    system = make_system(workers=2, capacity=2)
    async with api_client(system, system.create_user("alice")) as api:
        session = await _ready(api, "websocket")
        session_id = session["session_id"]
        connect = await _connect(api, session_id)
        ws_url = connect["ws_url"]
        token = ws_url.split("token=", 1)[1]
        assert ws_url.startswith("ws://127.0.0.1:") and "/ws?token=" in ws_url
        assert connect["expires_in_s"] == 60

        client = await ProtobufClient.connect(ws_url, hello_wav)
        try:
            # Offered by the client (websockets does by default), declined: audio frames
            # don't compress, so deflate would only cost CPU on both ends.
            handshake = client.ws.response
            assert handshake is not None and "Sec-WebSocket-Extensions" not in handshake.headers
            await eventually(
                lambda: client.got_message("bot-ready"), timeout=20, what="RTVI bot-ready"
            )
            await wait_for_status(api, session_id, {"connected"})
            # The bot plays our words back: loud audio arrives, after the user's turn.
            await eventually(
                lambda: client.loudest_rms() > ECHO_RMS, timeout=20, what="echoed speech"
            )
            assert client.audio[-1][1] == 24000  # what Pipecat's JS client plays

            async def bot_stopped() -> bool:
                return any(
                    e["type"] == "bot.stopped_speaking" for e in await _events(system, session_id)
                )

            await eventually(bot_stopped, what="a bot.stopped_speaking event")
        finally:
            await client.close()  # the client leaves: the call waits for it, then ends

        ended = await _final(api, session_id)  # after VOICEPOOL_RECONNECT_GRACE
        assert (ended["status"], ended["reason"]) == ("ended", "client_left")
        assert ended["connect"] is None

        wanted = {"user.turn_started", "user.turn_stopped", "bot.started_speaking",
                  "bot.stopped_speaking"}  # fmt: skip
        stored = await _stored(api, session["conversation_id"], wanted)
        types = [e["type"] for e in stored]
        assert wanted <= set(types), types
        assert types.index("user.turn_stopped") < types.index("bot.started_speaking")
        states = [e["data"]["state"] for e in stored if e["type"] == "session.state"]
        assert states == ["queued", "starting", "ready", "connected", "reconnecting", "ended"]
        ready = next(
            e for e in stored if e["type"] == "session.state" and e["data"]["state"] == "ready"
        )
        assert ready["data"]["transport"] == "websocket"

        # The token is the owner's alone: not in an event, not in any log.
        everything = json.dumps(stored) + json.dumps(await _events(system, session_id))
        assert token not in everything and "token=" not in everything
        system.stop()
        for log in system.tmp.glob("*.log"):
            assert token not in log.read_text(errors="replace"), log.name


@pytest.mark.slow
async def test_one_request_from_create_to_connect(make_system, hello_wav) -> None:
    system = make_system(workers=1, capacity=2)
    async with api_client(system, system.create_user("alice")) as api:
        created = await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["status"] == "ready" and session["worker_id"]
        client = await ProtobufClient.connect(session["connect"]["ws_url"], hello_wav)
        try:
            await eventually(lambda: client.got_message("bot-ready"), what="RTVI bot-ready")
        finally:
            await client.close()
        # WebRTC connects by its offer: ready, with where it goes and the ICE servers (none
        # configured here).
        rtc = await api.post("/api/sessions?wait=ready", json={"transport": "webrtc"})
        assert rtc.status_code == 201 and rtc.json()["status"] == "ready"
        assert rtc.json()["connect"] == {"offer_url": rtc.json()["offer_url"], "ice_servers": []}
        for ended in (session, rtc.json()):
            assert (await api.delete(f"/api/sessions/{ended['session_id']}")).status_code == 200
        refused = await api.post("/api/sessions?wait=soon", json={"transport": "webrtc"})
        assert refused.status_code == 422


async def _talk(ws_url: str, wav: Any) -> None:
    await talk(ws_url, wav, ECHO_RMS)


@pytest.mark.slow
async def test_a_websocket_session_takes_a_pipeline_built_ahead_and_one_is_built_again(
    make_system, hello_wav
) -> None:
    system = make_system(workers=1, capacity=2)
    port = system.metrics_ports[system.workers[0].pid]

    def metric(name: str) -> float:
        return system.metrics(f"http://127.0.0.1:{port}/metrics").get(name, 0)

    warm_now = 'voicepool_worker_warm_pipelines{pool="server"}'
    started_warm = 'voicepool_worker_session_starts_total{pipeline="warm",pool="server"}'
    started_built = 'voicepool_worker_session_starts_total{pipeline="built",pool="server"}'
    async with api_client(system, system.create_user("alice")) as api:
        for call in (1, 2):  # the second takes the one built after the first was taken
            await eventually(lambda: metric(warm_now) == 1, what="a pipeline built ahead")
            created = await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
            assert created.status_code == 201, created.text
            session = created.json()
            assert metric(started_warm) == call and metric(started_built) == 0
            await _talk(session["connect"]["ws_url"], hello_wav)
            # Its events are the session's as a built pipeline's are; its slot comes back.
            assert (await api.delete(f"/api/sessions/{session['session_id']}")).status_code == 200
            wanted = {"user.turn_stopped", "bot.started_speaking", "bot.stopped_speaking"}
            stored = await _stored(api, session["conversation_id"], wanted)
            states = [e["data"]["state"] for e in stored if e["type"] == "session.state"]
            assert states[:4] == ["queued", "starting", "ready", "connected"], states
        # A WebRTC session builds its own, as before.
        rtc = await api.post("/api/sessions?wait=ready", json={"transport": "webrtc"})
        assert rtc.status_code == 201, rtc.text
        assert metric(started_built) == 1 and metric(started_warm) == 2
        await api.delete(f"/api/sessions/{rtc.json()['session_id']}")
    # Each request's access line once (written after its answer, in uvicorn's shape), and
    # each WebSocket client's connection once, the listener's own line (not uvicorn's).
    api_log = (system.tmp / "api.log").read_text()
    assert api_log.count('"POST /api/sessions?wait=ready HTTP/1.1" 201') == 3
    worker_log = (system.tmp / "worker0.log").read_text()
    assert worker_log.count("WebSocket client connected") == 2 and "[accepted]" not in worker_log


@pytest.mark.slow
async def test_a_call_where_nobody_speaks_ends_after_the_idle_timeout(
    make_system, hello_wav
) -> None:
    system = make_system(workers=1, capacity=1, VOICEPOOL_IDLE_TIMEOUT="4")
    async with api_client(system, system.create_user("alice")) as api:
        # Speech, then silence: the echo keeps the call busy, then nothing does.
        talking = (
            await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
        ).json()
        client = await ProtobufClient.connect(talking["connect"]["ws_url"], hello_wav)
        try:
            await eventually(lambda: client.loudest_rms() > ECHO_RMS, timeout=20, what="echo")
            spoke = time.monotonic()
            ended = await wait_for_status(api, talking["session_id"], {"ended"}, timeout=20)
            assert ended["reason"] == "idle_timeout"
            assert time.monotonic() - spoke >= 3  # counted from the last speech, not the start
        finally:
            await client.close()
        # The slot came back: the next call starts.
        again = await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
        assert again.status_code == 201, again.text
        await api.delete(f"/api/sessions/{again.json()['session_id']}")


@pytest.mark.slow
async def test_a_warm_websocket_session_nobody_connects_to_ends_and_frees_its_slot(
    make_system,
) -> None:
    system = make_system(workers=1, capacity=1, VOICEPOOL_CONNECT_TIMEOUT="3")
    async with api_client(system, system.create_user("alice")) as api:
        created = await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
        session_id = created.json()["session_id"]
        # Its pipeline already runs, but nobody is there: ready, not connected.
        assert (await api.get(f"/api/sessions/{session_id}")).json()["status"] == "ready"
        ended = await wait_for_status(api, session_id, {"ended"}, timeout=20)
        assert ended["reason"] == "connect_timeout"
        again = await api.post("/api/sessions?wait=ready", json={"transport": "websocket"})
        assert again.status_code == 201, again.text
        await api.delete(f"/api/sessions/{again.json()['session_id']}")


@pytest.mark.slow
async def test_websocket_tokens_are_single_use(make_system) -> None:
    system = make_system(workers=1, capacity=2)
    alice, bob = system.create_user("alice"), system.create_user("bob")
    async with api_client(system, alice) as api, api_client(system, bob) as bob_api:
        session = await _ready(api, "websocket")
        session_id = session["session_id"]
        connect_url = f"/api/sessions/{session_id}/connect"
        assert session["connect_url"] == connect_url and session["connect"] is None

        # Reading the session gives no credential: only POST …/connect mints a token.
        for _ in range(5):
            read = (await api.get(f"/api/sessions/{session_id}")).json()
            assert read["status"] == "ready" and read["connect"] is None

        # Someone else cannot get a token (the session is a 404 to them anyway).
        assert (await bob_api.get(f"/api/sessions/{session_id}")).status_code == 404
        assert (await bob_api.post(connect_url)).status_code == 404

        first = (await _connect(api, session_id))["ws_url"]
        spare = (await _connect(api, session_id))["ws_url"]
        assert _token(first) != _token(spare)  # one request, one token
        base = first.split("?", 1)[0]
        assert await _refused(base)  # no token
        assert await _refused(f"{base}?token=forged-{'x' * 30}")
        assert await _refused(f"{base}?token={'y' * 500}")
        # A handshake whose head runs past the bound is a bad request, even with a token
        # that would do (shared/http_server.py); the session's client connects below.
        padded = {f"X-Pad-{n}": "a" * MAX_HEAD_BYTES for n in range(64)}  # past one read
        with pytest.raises((InvalidStatus, InvalidMessage, ConnectionError)) as too_large:
            await websockets.connect(spare, open_timeout=5, additional_headers=padded)
        if isinstance(too_large.value, InvalidStatus):  # else closed before it could read
            assert too_large.value.response.status_code == 400
        # The session's own name and expiry, signed with another key or for another
        # listener, or expired: what a client could forge or keep.
        key = _hash(system, session_id)["ws_key"]
        events = await _events(system, session_id)
        listener = next(
            e["data"]["ws_listener"] for e in events if e["data"].get("state") == "ready"
        )
        for forged in (
            ws_tokens.mint(ws_tokens.new_key(), session_id, listener, 60),
            ws_tokens.mint(key, session_id, ws_tokens.new_listener(), 60),
            ws_tokens.mint(key, session_id, listener, -1),
        ):
            assert await _refused(f"{base}?token={forged}")
        # Neither the key nor a token is in what the session's events show.
        shown = json.dumps(events)
        assert key not in shown and _token(first) not in shown and _token(spare) not in shown

        client = await ProtobufClient.connect(first)
        try:
            await wait_for_status(api, session_id, {"connected"})
            assert await _refused(first)  # reused
            assert await _refused(spare)  # valid, but the session has its client
            assert (await api.get(f"/api/sessions/{session_id}")).json()["connect"] is None
            taken = await api.post(connect_url)
            assert (taken.status_code, taken.json()["detail"]["code"]) == (
                409, "already_connected"
            )  # fmt: skip

            ended = await api.delete(f"/api/sessions/{session_id}")
            assert (ended.json()["status"], ended.json()["reason"]) == ("ended", "client_ended")
            await asyncio.wait_for(client.closed.wait(), 10)  # the worker closed our socket
            late = await api.post(connect_url)
            assert (late.status_code, late.json()["detail"]["code"]) == (409, "session_ended")
            # The record stays a while for replay; the key that signs its tokens does not.
            await eventually(
                lambda: ("ws_key" not in _hash(system, session_id)) or None,
                what="the session's token key dropped",
            )
        finally:
            await client.close()


@pytest.mark.slow
async def test_start_for_each_transport(make_system, hello_wav) -> None:
    allow_loopback_ice()
    system = make_system(workers=2, capacity=2, VOICEPOOL_ICE_SERVERS="stun:127.0.0.1:3478")
    async with api_client(system, system.create_user("alice")) as api:
        # SmallWebRTC (the default), as Pipecat's client receives it: a sessionId and the
        # ICE servers; the client then derives its offer URL from the start URL.
        started = await api.post("/api/start", json={"body": {"profile": "echo"}})
        assert started.status_code == 200, started.text
        body = started.json()
        session_id = body["sessionId"]
        stun = {"urls": ["stun:127.0.0.1:3478"]}
        assert body == {"sessionId": session_id, "iceConfig": {"iceServers": [stun]}}
        assert started.headers["X-Session-Id"] == session_id
        assert (await api.get(f"/api/sessions/{session_id}")).json()["status"] == "ready"
        offer_url = str(started.url).replace("/start", f"/sessions/{session_id}/api/offer")

        async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
            answer = await api.post(offer_url, json={**offer, "pc_id": None, "restart_pc": False})
            assert answer.status_code == 200, answer.text
            return answer.json()

        peer = WebRTCTestClient(str(hello_wav))
        try:
            await peer.connect(send_offer)
            await peer.wait_connected()
            candidates: dict[str, Any] = {"pc_id": peer.pc_id, "candidates": []}
            assert (await api.patch(offer_url, json=candidates)).status_code == 204
            await wait_for_status(api, session_id, {"connected"})
        finally:
            await api.delete(f"/api/sessions/{session_id}")
            await peer.close()

        # WebSocket: only what Pipecat's WebSocketTransport accepts, the token in the URL.
        started = await api.post("/api/start", json={"transport": "websocket"})
        assert started.status_code == 200, started.text
        assert list(started.json()) == ["wsUrl"]
        session_id = started.headers["X-Session-Id"]
        assert started.headers["Location"] == f"/api/sessions/{session_id}"
        client = await ProtobufClient.connect(started.json()["wsUrl"], hello_wav)
        try:
            await eventually(
                lambda: client.got_message("bot-ready"), timeout=20, what="RTVI bot-ready"
            )
            await wait_for_status(api, session_id, {"connected"})
        finally:
            await client.close()
        assert (await _final(api, session_id))["reason"] == "client_left"

        # Daily is not configured here.
        refused = await api.post("/api/start", json={"createDailyRoom": True})
        assert refused.status_code == 422
        assert refused.json()["detail"]["code"] == "transport_unavailable"


# --- quick checks, in process -------------------------------------------------------------


async def test_transport_choices(api) -> None:
    alice = api.auth(await api.token("alice"))
    config = (await api.client.get("/api/config", headers=alice)).json()
    assert config["transports"] == ["webrtc", "websocket"]

    created = await api.client.post(
        "/api/sessions", json={"transport": "websocket", "profile": "echo"}, headers=alice
    )
    assert created.status_code == 202, created.text
    assert created.json()["transport"] == "websocket"
    assert created.json()["connect"] is None  # not ready: nothing to connect to yet

    for path, body in [
        ("/api/sessions", {"transport": "daily"}),
        ("/api/start", {"transport": "daily"}),
        ("/api/start", {"createDailyRoom": True}),
    ]:
        response = await api.client.post(path, json=body, headers=alice)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["detail"]["code"] == "transport_unavailable"

    for body in [
        {"transport": "webrtc", "createDailyRoom": True},
        {"dailyRoomProperties": {"exp": 1}},
        {"body": {"initial_prompt": "be a pirate"}},
    ]:
        response = await api.client.post("/api/start", json=body, headers=alice)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"]["code"] == "invalid_request"


async def test_rooms_only_for_daily_sessions(api) -> None:
    alice = api.auth(await api.token("alice"))
    bob = api.auth(await api.token("bob"))
    created = await api.client.post("/api/sessions", json={"profile": "echo"}, headers=alice)
    session_id = created.json()["session_id"]

    invite = await api.client.post(
        f"/api/sessions/{session_id}/invites", json={"user": "bob"}, headers=alice
    )
    assert invite.status_code == 409 and invite.json()["detail"]["code"] == "not_a_room"
    for who, status in [(bob, 404), (alice, 409)]:
        response = await api.client.post(f"/api/sessions/{session_id}/participants", headers=who)
        assert response.status_code == status, response.text


async def test_connect_route_refusals(api) -> None:
    """POST /api/sessions/{id}/connect: owner only, and only while there is something to
    connect to. No worker runs here, so the sessions stay queued."""
    alice_token = await api.token("alice")
    alice = api.auth(alice_token)
    bob = api.auth(await api.token("bob"))
    admin = api.auth(await api.token("root", role="admin"))

    async def refused(session_id: str, who: dict[str, str]) -> tuple[int, str]:
        response = await api.client.post(f"/api/sessions/{session_id}/connect", headers=who)
        return response.status_code, response.json()["detail"]["code"]

    rtc = (await api.client.post("/api/sessions", json={}, headers=alice)).json()
    # WebRTC connects by SDP offer, which may go while the session is queued: its ICE
    # servers (no TURN here, so none) are there at once; to nobody else.
    peer = await api.client.post(rtc["connect_url"], headers=alice)
    assert peer.json() == {"offer_url": rtc["offer_url"], "ice_servers": []}, peer.text
    assert await refused(rtc["session_id"], bob) == (404, "session_not_found")

    ws = await api.client.post("/api/sessions", json={"transport": "websocket"}, headers=alice)
    session_id = ws.json()["session_id"]
    assert ws.json()["connect_url"] == f"/api/sessions/{session_id}/connect"
    early = await api.client.post(f"/api/sessions/{session_id}/connect", headers=alice)
    assert (early.status_code, early.json()["detail"]["code"]) == (409, "not_ready")
    assert int(early.headers["Retry-After"]) >= 1
    for other in (bob, admin):  # an admin may read the session, not take the call
        assert await refused(session_id, other) == (404, "session_not_found")
    assert await refused("no-such-session", alice) == (404, "session_not_found")

    # Tokens are minted by the connect route alone, never by reads or refusals.
    for _ in range(3):
        assert (await api.client.get(f"/api/sessions/{session_id}", headers=alice)).json()[
            "connect"
        ] is None
    assert [k async for k in api.state.redis.scan_iter("vp:wstoken:*")] == []

    # It is a POST: signed in with the cookie, it needs the CSRF token like any change.
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://voicepool.test") as web:
        signed_in = await web.post("/api/auth/login", json={"token": alice_token})
        csrf = signed_in.json()["csrf_token"]
        forged = await web.post(f"/api/sessions/{session_id}/connect")
        assert (forged.status_code, forged.json()["detail"]["code"]) == (403, "csrf_failed")
        checked = await web.post(
            f"/api/sessions/{session_id}/connect", headers={"X-CSRF-Token": csrf}
        )
        assert (checked.status_code, checked.json()["detail"]["code"]) == (409, "not_ready")

    await api.client.delete(f"/api/sessions/{session_id}", headers=alice)
    assert await refused(session_id, alice) == (409, "session_ended")
