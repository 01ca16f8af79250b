"""The event and session-state schema shared by workers, the API and the store.

Every event belongs to one session and carries a per-session ``seq`` that
Redis assigns atomically when the event is published, so (session_id, seq)
identifies it everywhere: in the live stream, in the ingest stream and in SQL.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class SessionState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    READY = "ready"
    CONNECTED = "connected"
    ENDED = "ended"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {SessionState.ENDED, SessionState.FAILED, SessionState.EXPIRED, SessionState.CANCELLED}
)
LIVE_STATES = frozenset(SessionState) - FINAL_STATES
# States in which a worker owns the session (and keeps its heartbeat alive).
OWNED_STATES = frozenset({SessionState.STARTING, SessionState.READY, SessionState.CONNECTED})


class Reason(StrEnum):
    """Why a session changed state. Stable codes: clients and dashboards key on them."""

    CREATED = "created"
    PICKED_UP = "picked_up"
    PIPELINE_READY = "pipeline_ready"
    CLIENT_CONNECTED = "client_connected"
    CLIENT_ENDED = "client_ended"
    CLIENT_LEFT = "client_left"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    WORKER_LOST = "worker_lost"
    NO_CAPACITY = "no_capacity"
    PIPELINE_ERROR = "pipeline_error"
    WORKER_DRAINING = "worker_draining"
    WORKER_SHUTDOWN = "worker_shutdown"
    CONNECT_TIMEOUT = "connect_timeout"
    MODEL_UNAVAILABLE = "model_unavailable"  # could not connect to the model
    MODEL_ERROR = "model_error"  # the model sent an error event
    MODEL_DISCONNECTED = "model_disconnected"  # the model closed the connection
    MODEL_PROTOCOL_ERROR = "model_protocol_error"  # the model sent something unreadable
    DAILY_UNAVAILABLE = "daily_unavailable"  # Daily's REST API refused or failed
    REVOKED = "revoked"  # the owner's access was revoked (voicepool users revoke)


class EventType(StrEnum):
    SESSION_STATE = "session.state"
    SESSION_QUEUE = "session.queue"  # place in the queue and estimated wait, while queued
    SESSION_GAP = "session.gap"  # events a worker had to drop while Redis was away
    USER_TURN_STARTED = "user.turn_started"
    USER_TURN_STOPPED = "user.turn_stopped"
    BOT_STARTED_SPEAKING = "bot.started_speaking"
    BOT_STOPPED_SPEAKING = "bot.stopped_speaking"
    USER_TRANSCRIPT = "user.transcript"
    ASSISTANT_TRANSCRIPT = "assistant.transcript"
    TOOL_STARTED = "tool.started"
    TOOL_PROGRESS = "tool.progress"
    TOOL_COMPLETED = "tool.completed"
    TOOL_FAILED = "tool.failed"
    METRICS_USAGE = "metrics.usage"
    METRICS_LATENCY = "metrics.latency"
    ERROR = "error"


class Event(BaseModel):
    """One thing that happened in a session, as stored and as sent to browsers."""

    session_id: str
    conversation_id: str
    seq: int
    ts: float = Field(description="Unix time, seconds, when the event happened.")
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    stream_id: str | None = Field(
        None, description="Entry id in the session's live stream (the SSE event id)."
    )

    @classmethod
    def from_stream_fields(cls, fields: dict[str, str], stream_id: str | None = None) -> Event:
        """Decode a Redis stream entry written by ``shared.live.LiveSessions``."""
        return cls(
            session_id=fields["sid"],
            conversation_id=fields["cid"],
            seq=int(fields["seq"]),
            ts=float(fields["ts"]),
            type=fields["type"],
            data=json.loads(fields["data"]),
            stream_id=stream_id or fields.get("live_id"),
        )
