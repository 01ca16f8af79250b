"""Request and response bodies. Unknown fields are refused, not ignored."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.ice import IceServer
from shared.lifecycle import SessionState


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssistantOptions(Strict):
    """Per-session choices for the assistant profile (the rest is the operator's)."""

    voice: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,32}$")
    turn_detection: Literal["semantic_vad", "server_vad", "local"] | None = None
    noise_reduction: Literal["near_field", "far_field", "off"] | None = None


class SessionCreate(Strict):
    transport: Literal["webrtc", "websocket", "daily"] = Field(
        "webrtc",
        description="How media flows: SmallWebRTC straight to the worker (`webrtc`), protobuf "
        "frames over a WebSocket to the worker (`websocket`), or a Daily room (`daily`, "
        "with DAILY_API_KEY).",
    )
    profile: str | None = Field(
        None,
        max_length=32,
        description="Bot profile; default `assistant` with an OpenAI key, else `echo`.",
    )
    conversation_id: str | None = Field(
        None, max_length=32, description="Continue this conversation instead of starting one."
    )
    pool: str | None = Field(None, max_length=64, description="Worker pool; default from settings.")
    options: AssistantOptions | None = Field(None, description="Assistant profile choices.")


class SessionOut(BaseModel):
    session_id: str
    conversation_id: str
    status: SessionState
    reason: str | None = None
    state_seq: int | None = Field(
        None,
        description="`seq` of the `session.state` event that set `status` (None if unknown): "
        "a client merging this with streamed events keeps whichever is later. States "
        "cycle (connected → reconnecting → connected), so compare seqs, not states.",
    )
    pool: str
    transport: str
    profile: str
    worker_id: str | None = None
    queue_position: int | None = None
    created_at: datetime
    events_url: str
    offer_url: str
    connect_url: str | None = Field(
        None,
        description="`POST` here for connection parameters (websocket: a single-use token; "
        "daily: the room; webrtc: `offer_url` and ICE servers with a fresh TURN credential).",
    )
    connect: dict[str, Any] | None = Field(
        None,
        description="For the session's owner. Daily, while the room can be joined: `room_url` "
        "and `token`. WebSocket, only in the answer to `POST /api/sessions?wait=ready`: "
        "`ws_url` with a single-use token (else ask `connect_url`). WebRTC, in that answer: "
        "`offer_url` and `ice_servers`. Never in events.",
    )


class WebSocketConnect(BaseModel):
    ws_url: str = Field(description="The worker's WebSocket URL with a single-use token.")
    expires_in_s: float = Field(description="The token opens no connection after this.")


class RoomConnect(BaseModel):
    room_url: str
    token: str = Field(description="The owner's Daily meeting token.")


class PeerConnect(BaseModel):
    offer_url: str = Field(description="`POST` the SDP offer here (it waits for `ready`).")
    ice_servers: list[IceServer] = Field(
        description="`RTCConfiguration.iceServers` for the peer connection: STUN, and TURN "
        "with a credential minted for this request (valid `VOICEPOOL_TURN_TTL`)."
    )


class SdpOffer(Strict):
    sdp: str = Field(max_length=64 * 1024)
    type: Literal["offer"]
    pc_id: str | None = Field(None, max_length=128)
    restart_pc: bool | None = None
    request_data: dict[str, Any] | None = Field(None, alias="requestData")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_SDP_LINE = re.compile(r"^[a-z]=\S")


def sdp_offer_problem(sdp: str) -> str | None:
    """Why ``sdp`` is not an SDP offer voicepool can answer (RFC 8866), or None.

    Checked before a worker sees it: aiortc answers almost any text, and a peer
    built from garbage would hold a session slot until the idle timeout.
    """
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        return "an SDP offer starts with the line v=0"
    bad = next((line for line in lines if not _SDP_LINE.match(line)), None)
    if bad is not None:
        return f"not an SDP line: {bad[:40]!r}"
    kinds = {line[0] for line in lines}
    if not {"o", "s", "t"} <= kinds:
        return "an SDP offer needs its o=, s= and t= lines"
    if not any(line.startswith("m=audio ") for line in lines):
        return "the offer has no audio (m=audio) section"
    return None


class SdpAnswer(BaseModel):
    sdp: str
    type: Literal["answer"]
    pc_id: str


class IceCandidateIn(Strict):
    candidate: str = Field("", max_length=1024)
    sdp_mid: str | None = Field(None, max_length=64)
    sdp_mline_index: int | None = Field(None, ge=0, le=64)


class IcePatch(Strict):
    pc_id: str = Field(max_length=128)
    candidates: list[IceCandidateIn] = Field(max_length=64)


class EventOut(BaseModel):
    session_id: str
    seq: int
    ts: float
    type: str
    data: dict[str, Any]


class ConversationSummary(BaseModel):
    conversation_id: str
    title: str | None = Field(description="Its first words (None until someone spoke).")
    created_at: datetime
    updated_at: datetime
    session_count: int
    connected_sessions: int = Field(
        0, description="Sessions a client connected to (0: attempts that never got going)."
    )
    duration_s: float = Field(description="Talk time: connected, summed over its sessions.")
    profile: str | None = Field(None, description="The profile of its latest session.")
    live: bool = Field(False, description="One of its sessions is live now.")
    match: str | None = Field(None, description="With ?q=: its latest line that matched.")


class SessionBrief(BaseModel):
    session_id: str
    state: str
    reason: str | None
    profile: str
    transport: str
    created_at: datetime
    ended_at: datetime | None


class ConversationDetail(ConversationSummary):
    sessions: list[SessionBrief]
    events: list[EventOut]
