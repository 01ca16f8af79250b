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
from shared import ws_tokens
from shared.lifecycle import CLIENT_MAY_CONNECT, OWNER_CONNECT, SessionState
from shared.models import VoiceSession


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'token': token})}"


def connect_url(row: VoiceSession) -> str | None:
    """Where the owner asks for connection parameters; None for WebRTC (it sends an offer)."""
    return None if row.transport == "webrtc" else f"/api/sessions/{row.id}/connect"


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


async def owner_connect(
    state: AppState, row: VoiceSession, live: dict[str, str]
) -> dict[str, Any] | None:
    """Connection parameters for the session's owner, or None while there are none.

    A WebSocket token is minted per call (single use, ``VOICEPOOL_WS_TOKEN_TTL``), only
    while the session waits for its client: call this only for an explicit request to
    connect, never for a read. A Daily room takes people while it lives.
    """
    stored = json.loads(live.get(OWNER_CONNECT) or "{}")
    if row.transport == "websocket":
        # One client at a time: none while one is connected, another after it is lost.
        waiting = (SessionState.READY, SessionState.RECONNECTING)
        if live.get("state") not in waiting or not stored.get("ws_url"):
            return None
        ttl = state.settings.ws_token_ttl
        token = await ws_tokens.mint(state.redis, row.id, ttl)
        return {"ws_url": _with_token(stored["ws_url"], token), "expires_in_s": ttl}
    return room_connect(row, live)


def start_response(
    state: AppState, row: VoiceSession, connect: dict[str, Any] | None
) -> dict[str, Any]:
    """``POST /api/start``'s body: what Pipecat's client passes on to its transport's
    ``connect()`` (``startBotAndConnect``), in the Pipecat Cloud / runner shape.

    - ``webrtc``: ``sessionId`` (+ ``iceConfig``): SmallWebRTCTransport then posts its
      offer to ``<start endpoint without /start>/sessions/{sessionId}/api/offer`` with
      the headers of the start request; that route exists (api/routes/start.py).
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
    if state.settings.ice_servers:
        body["iceConfig"] = {"iceServers": [{"urls": url} for url in state.settings.ice_servers]}
    return body
