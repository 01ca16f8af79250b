"""SmallWebRTC: the browser talks WebRTC straight to this worker.

The SDP offer reaches the worker through the API (relayed over Redis) and is
answered by Pipecat's ``SmallWebRTCRequestHandler``, one per session, in
single-connection mode: a second peer is refused, a known ``pc_id`` renegotiates.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import HTTPException
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    ConnectionMode,
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from worker.options import WorkerOptions
from worker.transports import SignalError


class SmallWebRTCSessionTransport:
    kind = "webrtc"
    pipeline_before_client = False  # the SDP offer is the client's arrival

    def __init__(self, session_id: str, options: WorkerOptions):
        self.session_id = session_id
        self._handler = SmallWebRTCRequestHandler(
            ice_servers=[IceServer(urls=url) for url in options.ice_servers],
            connection_mode=ConnectionMode.SINGLE,
        )
        self._connection: SmallWebRTCConnection | None = None
        self._arrived = asyncio.Event()

    async def prepare(self) -> dict[str, Any]:
        return {"offer_url": f"/api/sessions/{self.session_id}/offer"}

    def owner_params(self) -> dict[str, Any]:
        return {}  # the offer URL is public; the API authenticates the offer itself

    async def wait_for_client(self) -> None:
        await self._arrived.wait()

    def build(self, params: TransportParams) -> BaseTransport:
        assert self._connection is not None, "no peer yet"
        return SmallWebRTCTransport(webrtc_connection=self._connection, params=params)

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        if kind == "offer":
            return await self._offer(payload)
        if kind == "ice":
            await self._ice(payload)
            return {}
        raise SignalError("bad_signal", f"a WebRTC session takes no {kind!r} message", 400)

    async def _offer(self, payload: dict[str, Any]) -> dict[str, Any]:
        request = SmallWebRTCRequest(
            sdp=payload["sdp"],
            type=payload["type"],
            pc_id=payload.get("pc_id"),
            restart_pc=payload.get("restart_pc"),
        )
        try:
            answer = await self._handler.handle_web_request(request, self._on_peer)
        except HTTPException as exc:  # single-connection rule of the request handler
            raise SignalError("already_connected", str(exc.detail)) from exc
        except Exception as exc:
            raise SignalError(
                "invalid_offer", f"the SDP offer was not accepted: {exc}", 400
            ) from exc
        if answer is None:  # typed as possible; Pipecat 1.14 raises instead
            raise SignalError("invalid_offer", "the SDP offer got no answer", 400)
        return dict(answer)

    async def _ice(self, payload: dict[str, Any]) -> None:
        candidates = [
            IceCandidate(
                candidate=c.get("candidate", ""),
                sdp_mid=c.get("sdp_mid", c.get("sdpMid", "")),
                sdp_mline_index=c.get("sdp_mline_index", c.get("sdpMLineIndex", 0)),
            )
            for c in payload.get("candidates", [])
        ]
        try:
            await self._handler.handle_patch_request(
                SmallWebRTCPatchRequest(pc_id=payload["pc_id"], candidates=candidates)
            )
        except HTTPException as exc:
            raise SignalError("unknown_peer", str(exc.detail), 404) from exc

    async def _on_peer(self, connection: SmallWebRTCConnection) -> None:
        self._connection = connection
        self._arrived.set()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._handler.close()  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCRequestHandler.close is unannotated
