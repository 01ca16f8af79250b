"""What a session's owner connects with: handed out by the API, never put in events.

Events are stored for good, exported and shown to admins; a single-use token in
one would let whoever reads it first take the call, and a meeting token would
let anyone join the room. So the worker keeps them in the session's Redis hash
(``owner_connect``), and the API gives them to the owner only: in
``POST /api/sessions/{id}/connect`` and ``POST /api/start``, which mint a
WebSocket token, and, for a Daily room (stored, not minted), in
``GET /api/sessions/{id}`` too (``connect``). A read never mints a credential.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from api.deps import AppState
from shared import ice, ws_tokens
from shared.lifecycle import CLIENT_MAY_CONNECT, OWNER_CONNECT, SessionState
from shared.models import VoiceSession


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'token': token})}"


def connect_url(row: VoiceSession) -> str:
    """Where the owner asks for connection parameters (for WebRTC: its ICE servers)."""
    return f"/api/sessions/{row.id}/connect"


def room_connect(row: VoiceSession, live: dict[str, str]) -> dict[str, Any] | None:
    """A Daily session's room and owner's token while people can join, else None.

    Stored by the worker, so reading it creates nothing: ``GET /api/sessions/{id}``
    may show it.
    """
    stored = json.loads(live.get(OWNER_CONNECT) or "{}")
    if (
        row.transport == "daily"
        and live.get("state") in CLIENT_MAY_CONNECT
        and stored.get("room_url")
    ):
        return {"room_url": stored["room_url"], "token": stored["token"]}
    return None


def peer_connect(state: AppState, row: VoiceSession) -> dict[str, Any]:
    """A WebRTC session's owner: where the offer goes, and ICE servers with a fresh TURN
    credential (if TURN is set up) in the owner's name."""
    return {
        "offer_url": f"/api/sessions/{row.id}/offer",
        "ice_servers": [s.model_dump() for s in ice.for_user(state.settings, row.user_id)],
    }


def owner_connect(
    state: AppState, row: VoiceSession, live: dict[str, str]
) -> dict[str, Any] | None:
    """Connection parameters for the session's owner, or None while there are none.

    A WebSocket token is minted per call (single use, ``VOICEPOOL_WS_TOKEN_TTL``), only
    while the session waits for its client, and a TURN credential for a WebRTC one: call
    this only for an explicit request to connect, never for a read. A Daily room takes
    people while it lives.
    """
    if row.transport == "webrtc":
        return peer_connect(state, row)
    stored = json.loads(live.get(OWNER_CONNECT) or "{}")
    if row.transport == "websocket":
        # One client at a time: none while one is connected, another after it is lost.
        waiting = (SessionState.READY, SessionState.RECONNECTING)
        if live.get("state") not in waiting:
            return None
        return websocket_connect(state, row, stored, live.get(ws_tokens.KEY_FIELD, ""))
    return room_connect(row, live)


def websocket_connect(
    state: AppState, row: VoiceSession, listener: dict[str, Any], key: str
) -> dict[str, Any] | None:
    """A WebSocket session's URL with a fresh token, signed with the session's ``key`` for
    the ``listener`` (its ``ws_url`` and ``ws_listener``) that has it; None without them."""
    if not (key and listener.get("ws_url") and listener.get("ws_listener")):
        return None
    ttl = state.settings.ws_token_ttl
    token = ws_tokens.mint(key, row.id, listener["ws_listener"], ttl)
    return {"ws_url": _with_token(listener["ws_url"], token), "expires_in_s": ttl}


async def owner_connect_when_ready(
    state: AppState, row: VoiceSession, ready: dict[str, Any], ws_key: str = ""
) -> dict[str, Any] | None:
    """``owner_connect`` for a caller that has just seen the session ready, with the data of
    the ``ready`` event it saw (``{}`` if none). A WebSocket session whose key the caller
    holds (it made the session) needs no read: its listener is in the event. A WebRTC
    session's parameters need no read at all."""
    if row.transport == "webrtc":
        return peer_connect(state, row)
    if row.transport == "websocket" and ws_key and ready.get("state") == SessionState.READY:
        found = websocket_connect(state, row, ready, ws_key)
        if found is not None:
            return found
    return owner_connect(state, row, await state.live.get(row.id))


def start_response(
    state: AppState, row: VoiceSession, connect: dict[str, Any] | None
) -> dict[str, Any]:
    """``POST /api/start``'s body: what Pipecat's client passes on to its transport's
    ``connect()`` (``startBotAndConnect``), in the Pipecat Cloud / runner shape.

    - ``webrtc``: ``sessionId`` (+ ``iceConfig``, a TURN credential included):
      SmallWebRTCTransport then posts its offer to ``<start endpoint without
      /start>/sessions/{sessionId}/api/offer`` with the headers of the start request;
      that route exists (api/routes/start.py).
    - ``websocket``: ``wsUrl`` only, token included: WebSocketTransport refuses any key
      but ``wsUrl``/``token`` (pipecat-client-web-transports), so ``sessionId`` goes in
      the ``X-Session-Id`` header instead.
    - ``daily``: ``dailyRoom``, ``dailyToken``, ``sessionId``, as Pipecat Cloud answers.
    """
    if row.transport == "websocket":
        return {"wsUrl": (connect or {}).get("ws_url")}
    if row.transport == "daily":
        return {
            "dailyRoom": (connect or {}).get("room_url"),
            "dailyToken": (connect or {}).get("token"),
            "sessionId": row.id,
        }
    body: dict[str, Any] = {"sessionId": row.id}
    servers = (connect or peer_connect(state, row))["ice_servers"]
    if servers:  # RTCIceServer's shape: no null fields
        body["iceConfig"] = {"iceServers": [{k: v for k, v in s.items() if v} for s in servers]}
    return body
