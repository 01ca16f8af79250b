"""Session transports: how a client's media reaches the session's pipeline.

Each transport is set up when the worker takes the session (``prepare``
returns what the ``ready`` event tells the client), waits for its client,
then builds Pipecat's transport for the pipeline. Signalling that must pass
through the API (SDP offers, ICE candidates) arrives via ``handle_signal``.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipecat.transports.base_transport import BaseTransport, TransportParams

from shared.lifecycle import Reason
from worker.options import WorkerOptions


class SignalError(Exception):
    """A control message the session refuses; ``code`` goes back to the API client."""

    def __init__(self, code: str, message: str, status: int = 409):
        super().__init__(message)
        self.code = code
        self.status = status


class TransportError(Exception):
    """Setting the transport up failed for a reason the session's owner should see
    (``reason`` becomes the failed state's reason, the message its ``message``)."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


class ClientPresence(Protocol):
    """Told when the client's media comes back or goes away (the session's runner)."""

    def client_back(self) -> None:
        """The client's media flows: first connected, or back after ``client_lost``."""

    def client_lost(self) -> None:
        """The client's media is gone without an explicit end (closed, failed, silent)."""


class SessionTransport(Protocol):
    kind: str
    pipeline_before_client: bool
    """True when the pipeline runs before a client arrives (a Daily bot joins its room
    first; a WebSocket session is warm when its client connects); the session then
    applies its connect timeout to the running pipeline."""
    announces_clients: bool
    """True when the transport tells ``presence`` of every client's arrival, the first
    too, because Pipecat's ``on_client_connected`` is not one (it fires when the
    pipeline starts)."""

    async def prepare(self) -> dict[str, Any]:
        """Set up before ready; returns what the client needs to connect (never secrets
        meant for someone else)."""

    def owner_params(self) -> dict[str, Any]:
        """What only the session's owner may see to connect (a room URL and meeting token,
        the WebSocket listener's URL); kept out of events, handed out by the API."""

    async def wait_for_client(self) -> None:
        """Return once a client is there to connect the pipeline to."""

    def build(
        self, params: TransportParams, presence: ClientPresence | None = None
    ) -> BaseTransport:
        """Pipecat's transport for the pipeline (after ``wait_for_client``). Its
        ``on_client_connected`` / ``on_client_disconnected`` events say when the client's
        media comes and goes; what they cannot say (a peer replaced by a new offer, a
        client that went silent, a WebSocket attached again) the transport tells
        ``presence``."""

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        """An offer, ICE candidates, … relayed from the API."""

    async def aclose(self, *, handing_off: bool = False) -> None:
        """Release what ``prepare`` took (peer connections, rooms, ports). ``handing_off``:
        another worker takes the call over, so what it shares with the client (a Daily
        room) stays."""

    # Optional: ``current_speaker() -> dict | None`` for transports with several people
    # (Daily); user events are then attributed to that participant.


def build_transport(
    kind: str, session_id: str, options: WorkerOptions, meta: dict[str, str] | None = None
) -> SessionTransport:
    """The session's transport; ``meta`` is its live record (a call moved from another
    worker finds there what its client already connects to; a WebSocket one, the key
    its tokens are signed with)."""
    if kind == "webrtc":
        from worker.transports.smallwebrtc import SmallWebRTCSessionTransport

        return SmallWebRTCSessionTransport(session_id, options)
    if kind == "websocket":
        from worker.transports.websocket import WebSocketSessionTransport

        return WebSocketSessionTransport(session_id, options, meta or {})
    if kind == "daily":
        from worker.transports.daily import DailySessionTransport

        return DailySessionTransport(session_id, options, meta or {})
    raise ValueError(f"unknown transport {kind!r}")
