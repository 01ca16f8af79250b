"""SmallWebRTC: the browser talks WebRTC straight to this worker.

The SDP offer reaches the worker through the API (relayed over Redis). The
session owns one ``SmallWebRTCConnection`` for its whole life, and the
pipeline's transport holds it: the first offer initializes it; a later one
from the same peer (its ``pc_id``) renegotiates it, and any other (a reload, a
new network, the client's own reconnect) puts a new peer connection in place of
the old one under the same connection object (``renegotiate(restart_pc=True)``),
so the running pipeline gets the new peer's media and the call goes on.

The client is lost when its peer connection closes or fails, when a new offer
replaces it, or when a connected peer sends no audio for ``SILENT_PEER_S`` (a
network that vanished without a word: ICE consent would notice only after ~30 s);
it is back when a new peer connects, or the silent one's audio comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from aiortc import MediaStreamTrack, RTCIceTransportPolicy, RTCPeerConnection
from aiortc.sdp import candidate_from_sdp
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from shared import ice
from worker.options import WorkerOptions
from worker.transports import ClientPresence, SignalError

log = logging.getLogger(__name__)

SILENT_PEER_S = 3.0  # a connected peer whose audio stops this long is lost (kept for its return)
WATCH_INTERVAL_S = 0.5
AUDIO_RECEIVER = 0  # SmallWebRTC maps the first transceiver to the microphone
RELEASE_CHUNKS = 200  # 10 ms chunks of bot audio let go when its peer goes: far more than queued


class SessionConnection(SmallWebRTCConnection):
    """The session's one connection; it remembers the bot's audio track, so that audio
    written for a peer that went can be let go.

    Pipecat's output waits until each chunk of the bot's audio is taken by the peer
    connection's sender; a closed or replaced peer connection takes nothing more, so
    the write in flight would wait until the output gives up on the transport (after
    10 s: a pipeline error, the end of the call the client is about to come back to).
    """

    audio_out: MediaStreamTrack | None = None

    def __init__(self, ice_servers: list[IceServer], *, relay_only: bool = False) -> None:
        self.relay_only = relay_only  # before Pipecat's __init__, which makes the first pc
        super().__init__(ice_servers=ice_servers)

    def _initialize(self) -> None:
        super()._initialize()  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection._initialize is unannotated
        if self.relay_only:
            # Pipecat builds the RTCConfiguration itself and offers no ICE policy; aiortc
            # reads it when it creates the ICE gatherer (at the offer), after this.
            # Guarded by tests/unit/test_upstream_hooks.py::test_ice_policy.
            configuration = vars(self.pc)["_RTCPeerConnection__configuration"]
            vars(self.pc)["_RTCPeerConnection__configuration"] = dataclasses.replace(
                configuration, iceTransportPolicy=RTCIceTransportPolicy.RELAY
            )

    def replace_audio_track(self, track: MediaStreamTrack) -> None:
        self.audio_out = track  # a new one for each peer (on its "connected")
        super().replace_audio_track(track)  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection.replace_audio_track is unannotated

    async def release_audio(self) -> None:
        """Take what is queued on the gone peer's audio track, as its sender would have."""
        track, self.audio_out = self.audio_out, None
        if track is None:
            return
        with contextlib.suppress(Exception):
            for _ in range(RELEASE_CHUNKS):
                await track.recv()  # queued chunks first; then silence, paced as it goes


class SmallWebRTCSessionTransport:
    kind = "webrtc"
    pipeline_before_client = False  # the SDP offer is the client's arrival
    announces_clients = False

    def __init__(self, session_id: str, options: WorkerOptions):
        self.session_id = session_id
        self.options = options
        self._connection: SessionConnection | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Event()
        self._offers = asyncio.Lock()  # one SDP exchange at a time
        self._presence: ClientPresence | None = None
        self._mic_on = True  # the peer says (track-status) whether its microphone is on
        self._watchdog: asyncio.Task[None] | None = None

    def _ice_servers(self) -> list[IceServer]:
        """The worker's own ICE servers for this session: a TURN credential made now, in the
        worker's name, valid for the whole call (``VOICEPOOL_TURN_TTL``)."""
        o = self.options
        who = f"worker-{o.worker_id}"
        return [
            IceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in ice.ice_servers(o.ice_servers, o.turn_urls, o.turn_secret, o.turn_ttl, who)
        ]

    async def prepare(self) -> dict[str, Any]:
        return {"offer_url": f"/api/sessions/{self.session_id}/offer"}

    def owner_params(self) -> dict[str, Any]:
        return {}  # the offer URL is public; the API authenticates the offer itself

    async def wait_for_client(self) -> None:
        await self._arrived.wait()

    def build(
        self, params: TransportParams, presence: ClientPresence | None = None
    ) -> BaseTransport:
        assert self._connection is not None, "no peer yet"
        self._presence = presence
        if presence is not None and self.options.reconnect_grace > 0:
            self._watchdog = asyncio.create_task(self._watch(), name=f"webrtc-{self.session_id}")
        return SmallWebRTCTransport(webrtc_connection=self._connection, params=params)

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        if kind == "offer":
            return await self._offer(payload)
        if kind == "ice":
            await self._ice(payload)
            return {}
        raise SignalError("bad_signal", f"a WebRTC session takes no {kind!r} message", 400)

    async def _offer(self, payload: dict[str, Any]) -> dict[str, Any]:
        sdp, type_ = payload["sdp"], payload.get("type") or "offer"
        async with self._offers:
            connection = self._connection
            try:
                if connection is None:
                    connection = SessionConnection(
                        self._ice_servers(), relay_only=self.options.ice_policy == "relay"
                    )
                    try:
                        await connection.initialize(sdp=sdp, type=type_)
                    except Exception:
                        with contextlib.suppress(Exception):  # its peer connection, unused
                            await connection.disconnect()  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection.disconnect is unannotated
                        raise
                    self._watch_connection(connection)
                    self._connection = connection
                    self._arrived.set()
                else:
                    # The same peer renegotiating keeps its peer connection; anything else
                    # (no pc_id, another one, a restart asked for, a peer that is gone) is a
                    # new peer in place of the old: the pipeline keeps running, and gets it.
                    same_peer = (
                        payload.get("pc_id") == connection.pc_id
                        and not payload.get("restart_pc")
                        and connection.pc.connectionState not in ("closed", "failed")
                    )
                    if not same_peer:
                        log.info("session %s: a new peer replaces the old", self.session_id)
                    await connection.renegotiate(sdp=sdp, type=type_, restart_pc=not same_peer)
            except Exception as exc:
                raise SignalError(
                    "invalid_offer", f"the SDP offer was not accepted: {exc}", 400
                ) from exc
            answer = connection.get_answer()  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection.get_answer is unannotated
        if answer is None:  # typed as possible; Pipecat 1.14 answers or raises
            raise SignalError("invalid_offer", "the SDP offer got no answer", 400)
        return dict(answer)

    def _watch_connection(self, connection: SessionConnection) -> None:
        async def _replaced(_connection: SmallWebRTCConnection) -> None:
            # Fired by renegotiate(restart_pc=True) as the old peer connection goes (Pipecat's
            # transport turns only "closed" into on_client_disconnected).
            self._mic_on = True
            self._release(connection)
            if self._presence is not None:
                self._presence.client_lost()

        async def _closed(_connection: SmallWebRTCConnection) -> None:
            self._release(connection)  # Pipecat's transport tells the session

        async def _track_status(
            _connection: SmallWebRTCConnection, receiver: int, enabled: bool
        ) -> None:
            if receiver == AUDIO_RECEIVER:
                self._mic_on = enabled

        connection.add_event_handler("disconnected", _replaced)
        connection.add_event_handler("closed", _closed)
        connection.add_event_handler("track-status", _track_status)

    def _release(self, connection: SessionConnection) -> None:
        task = asyncio.create_task(connection.release_audio())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _ice(self, payload: dict[str, Any]) -> None:
        connection = self._connection
        if connection is None:
            raise SignalError("unknown_peer", "no peer connection yet", 404)
        if payload.get("pc_id") != connection.pc_id:
            return  # trickled for a peer connection that was replaced: nothing to add it to
        for c in payload.get("candidates", []):
            candidate = None  # an empty candidate: the end of candidates (RFC 8840)
            if c.get("candidate"):
                candidate = candidate_from_sdp(c["candidate"])
                candidate.sdpMid = c.get("sdp_mid", c.get("sdpMid"))
                candidate.sdpMLineIndex = c.get("sdp_mline_index", c.get("sdpMLineIndex"))
            await connection.add_ice_candidate(candidate)  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection.add_ice_candidate is unannotated

    # --- a peer that went silent --------------------------------------------------------

    async def _watch(self) -> None:
        """Tell ``presence`` of a connected peer whose audio stopped (lost) and came back.

        Browsers and aiortc send audio packets all the time, silence included, unless the
        microphone is switched off (which the peer says with track-status): packets that
        stop mean the network went. The peer connection is kept: its audio may come back,
        or a new offer replaces it.
        """
        loop = asyncio.get_running_loop()
        pc: RTCPeerConnection | None = None
        count, heard, tick, silent = -1, loop.time(), loop.time(), False
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = loop.time()
            # A loop that was itself held up (a busy CPU) has not read the packets either.
            stalled, tick = now - tick > 3 * WATCH_INTERVAL_S, now
            connection = self._connection
            current = connection.pc if connection is not None else None
            if current is not pc:  # a new peer: Pipecat's events tell when it connects
                pc, count, heard, silent = current, -1, now, False
            if pc is None or pc.connectionState != "connected":
                heard = now
                continue
            packets = await _audio_packets(pc)
            if packets != count or stalled or not self._mic_on:
                count, heard = packets, now
                if silent and self._presence is not None:
                    silent = False
                    log.info("session %s: the peer's audio is back", self.session_id)
                    self._presence.client_back()
            elif not silent and now - heard >= SILENT_PEER_S and self._presence is not None:
                silent = True
                log.info(
                    "session %s: no audio from the peer for %.1f s", self.session_id, SILENT_PEER_S
                )
                self._presence.client_lost()

    async def aclose(self, *, handing_off: bool = False) -> None:
        for task in [self._watchdog, *self._releases]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.disconnect()  # type: ignore[no-untyped-call]  # pipecat: SmallWebRTCConnection.disconnect is unannotated


async def _audio_packets(pc: RTCPeerConnection) -> int:
    """Audio packets received on ``pc`` so far (aiortc's inbound-rtp statistics)."""
    transceivers = pc.getTransceivers()
    if len(transceivers) <= AUDIO_RECEIVER:
        return 0
    report = await transceivers[AUDIO_RECEIVER].receiver.getStats()
    return sum(
        getattr(stats, "packetsReceived", 0)
        for stats in report.values()
        if getattr(stats, "type", "") == "inbound-rtp"
    )
