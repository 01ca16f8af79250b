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
from shared import ice, keys, ws_tokens
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


async def owner_connect(
    state: AppState, row: VoiceSession, live: dict[str, str], *, token: str | None = None
) -> dict[str, Any] | None:
    """Connection parameters for the session's owner, or None while there are none.

    A WebSocket token is minted per call (single use, ``VOICEPOOL_WS_TOKEN_TTL``; or
    ``token``, minted already), only while the session waits for its client, and a TURN
    credential for a WebRTC one: call this only for an explicit request to connect, never
    for a read. A Daily room takes people while it lives.
    """
    if row.transport == "webrtc":
        return peer_connect(state, row)
    stored = json.loads(live.get(OWNER_CONNECT) or "{}")
    if row.transport == "websocket":
        # One client at a time: none while one is connected, another after it is lost.
        waiting = (SessionState.READY, SessionState.RECONNECTING)
        if live.get("state") not in waiting or not stored.get("ws_url"):
            return None
        ttl = state.settings.ws_token_ttl
        token = token or await ws_tokens.mint(state.redis, row.id, ttl)
        return {"ws_url": _with_token(stored["ws_url"], token), "expires_in_s": ttl}
    return room_connect(row, live)


async def owner_connect_when_ready(state: AppState, row: VoiceSession) -> dict[str, Any] | None:
    """``owner_connect`` for a caller that has just seen the session ready: for a WebSocket
    session, its live hash is read and its token minted in one round trip instead of two
    (the token is withdrawn if the session moved on meanwhile); the answer waits on it.
    A WebRTC session's parameters need no read at all."""
    if row.transport == "webrtc":
        return peer_connect(state, row)
    if row.transport != "websocket":
        return await owner_connect(state, row, await state.live.get(row.id))
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.session(row.id))
        token = ws_tokens.mint_in(pipe, row.id, state.settings.ws_token_ttl)
        live, _ = await pipe.execute()
    found = await owner_connect(state, row, live, token=token)
    if found is None:
        await ws_tokens.revoke(state.redis, token)
    return found


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
