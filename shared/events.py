"""The event schema shared by workers, the API and the store (session states: lifecycle.py).

Every event belongs to one session and carries a per-session ``seq`` that
Redis assigns atomically when the event is published, so (session_id, seq)
identifies it everywhere: in the live stream, in the ingest stream and in SQL.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


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
    MODEL_RECONNECTING = "model.reconnecting"  # the model's socket dropped; trying again
    MODEL_RECONNECTED = "model.reconnected"  # a new model session has the conversation
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
