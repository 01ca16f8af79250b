"""SQL tables: users and their tokens, conversations, sessions and their events.

A conversation is what a user sees in History; it holds one or more sessions
(a session is one live call). Events are stored per session with the seq
Redis assigned, unique together, so replaying the ingest stream is a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ts_column(nullable: bool = False) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(unique=True, index=True, max_length=64)
    role: str = Field(default="user", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class ApiToken(SQLModel, table=True):
    """A bearer token, stored only as a salted hash; ``id`` is its public prefix."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    salt: str = Field(max_length=64)
    hash: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    expires_at: datetime | None = Field(default=None, sa_column=_ts_column(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts_column(nullable=True))


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    title: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class VoiceSession(SQLModel, table=True):
    """One live call. Its state here follows the state events the persister stores."""

    __tablename__ = "sessions"

    id: str = Field(primary_key=True, max_length=32)
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    pool: str = Field(max_length=64)
    transport: str = Field(max_length=32)
    profile: str = Field(max_length=32)
    state: str = Field(default="queued", max_length=16)
    state_seq: int = Field(default=0, description="seq of the event that set state")
    reason: str | None = Field(default=None, max_length=64)
    worker_id: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    ready_at: datetime | None = Field(default=None, sa_column=_ts_column(nullable=True))
    connected_at: datetime | None = Field(
        default=None,
        sa_column=_ts_column(nullable=True),
        description="When a client first connected (None: nobody ever did)",
    )
    ended_at: datetime | None = Field(default=None, sa_column=_ts_column(nullable=True))


class EventRecord(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_events_session_seq"),
        Index("ix_events_conversation_ts", "conversation_id", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(max_length=32)
    conversation_id: str = Field(max_length=32)
    seq: int
    ts: float
    type: str = Field(max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    stream_id: str | None = Field(default=None, max_length=32)
