"""The session contract: its states, why it changes state, and which changes there are.

Everything that moves a session from one state to another names one of the
``MOVES`` below (``pick_up``, ``mark_ready``, ``connect``, ``lose_client``,
``recover``, ``hand_off``, ``finish``, ``cancel``, ``expire``); nobody passes their own set of
states to move from. ``shared/live.py`` applies a move atomically in Redis (a
Lua compare-and-set that also writes the event announcing it), taking what it
needs to know from the move, never from names of its own. A new state is an
enum member and the rows that reach and leave it.

Two rules the table encodes:
- A worker owns a session from ``pick_up`` until it leaves ``OWNED_STATES``;
  the moves it makes (``owner="expect"``) and its events are refused once the
  session has moved on to another owner, so a worker that comes back from a
  stall cannot speak for a call that was recovered elsewhere.
- A final state is a sink: no move leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class SessionState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    READY = "ready"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # the client's media is gone; the call waits for it
    RECOVERING = "recovering"  # its worker is gone or draining; another one takes it
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
OWNED_STATES = frozenset(
    {SessionState.STARTING, SessionState.READY, SessionState.CONNECTED, SessionState.RECONNECTING}
)
"""A worker owns the session: its pipeline runs there and the worker keeps it alive."""
WAITING_STATES = frozenset({SessionState.QUEUED, SessionState.RECOVERING})
"""The session has a start job in its pool's queue."""
CLIENT_MAY_CONNECT = frozenset(
    {SessionState.READY, SessionState.CONNECTED, SessionState.RECONNECTING}
)
"""A client may connect (or connect again): a worker runs the pipeline and listens."""


class Reason(StrEnum):
    """Why a session changed state. Stable codes: clients and dashboards key on them."""

    CREATED = "created"
    PICKED_UP = "picked_up"
    PIPELINE_READY = "pipeline_ready"
    RECOVERED = "recovered"  # ready again on another worker, the conversation so far kept
    CLIENT_CONNECTED = "client_connected"
    CLIENT_RECONNECTED = "client_reconnected"
    CLIENT_LOST = "client_lost"  # media gone without an end: waiting for the client
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
    QUEUE_UNAVAILABLE = "queue_unavailable"  # the start job could not be queued
    POOL_FALLBACK = "pool_fallback"  # still queued, moved to its pool's fallback pool


FAILURES = frozenset(
    {
        Reason.WORKER_LOST,
        Reason.PIPELINE_ERROR,
        Reason.MODEL_UNAVAILABLE,
        Reason.MODEL_ERROR,
        Reason.MODEL_DISCONNECTED,
        Reason.MODEL_PROTOCOL_ERROR,
        Reason.DAILY_UNAVAILABLE,
        Reason.QUEUE_UNAVAILABLE,
    }
)
"""Reasons that end a running session as ``failed``; any other end is ``ended``."""

GRACEFUL_ENDS = frozenset({Reason.MAX_DURATION, Reason.WORKER_DRAINING})
"""Ends that let the bot finish what it is saying (bounded); every other end is at once."""


def final_state(reason: Reason | str) -> SessionState:
    """Where ``finish(reason)`` takes a running session."""
    return SessionState.FAILED if reason in FAILURES else SessionState.ENDED


Owner = Literal["set", "expect", ""]
Alive = Literal["set", "drop", ""]


@dataclass(frozen=True)
class Move:
    """One row of the table: where to, from where, and what it does to ownership."""

    to: SessionState | None
    """None: decided by the reason (``final_state``)."""
    sources: frozenset[SessionState]
    owner: Owner = ""
    """``set``: the caller becomes the owner (and its publisher count starts afresh);
    ``expect``: only the current owner may make this move; ``""``: anyone may."""
    alive: Alive = ""
    """``set``: start the owner's liveness key; ``drop``: remove it. A final state drops it."""


def _states(*states: SessionState) -> frozenset[SessionState]:
    return frozenset(states)


MoveName = Literal[
    "pick_up",
    "mark_ready",
    "connect",
    "lose_client",
    "recover",
    "hand_off",
    "finish",
    "finish_own",
    "cancel",
    "expire",
]

S = SessionState
MOVES: dict[MoveName, Move] = {
    "pick_up": Move(S.STARTING, WAITING_STATES, owner="set", alive="set"),
    "mark_ready": Move(S.READY, _states(S.STARTING), owner="expect"),
    "connect": Move(S.CONNECTED, _states(S.READY, S.RECONNECTING), owner="expect"),
    "lose_client": Move(S.RECONNECTING, _states(S.CONNECTED), owner="expect"),
    "recover": Move(S.RECOVERING, OWNED_STATES, alive="drop"),
    "hand_off": Move(S.RECOVERING, OWNED_STATES, owner="expect", alive="drop"),
    "finish": Move(None, OWNED_STATES | {S.RECOVERING}),
    "finish_own": Move(None, OWNED_STATES, owner="expect"),
    "cancel": Move(S.CANCELLED, _states(S.QUEUED)),
    "expire": Move(S.EXPIRED, _states(S.QUEUED)),
}
"""Every move there is. ``finish`` is anyone's (the reaper, a revocation); ``finish_own``
is the owning worker ending its own call. ``recover`` is anyone's (the reaper, for a worker
that is gone); ``hand_off`` is the owning worker giving its call up to another (a drain)."""


def target(move: Move, reason: Reason | str) -> SessionState:
    return move.to if move.to is not None else final_state(reason)


def allowed() -> dict[SessionState, frozenset[SessionState]]:
    """Each state and the states a move can take it to (derived from ``MOVES``)."""
    reachable: dict[SessionState, set[SessionState]] = {state: set() for state in SessionState}
    for move in MOVES.values():
        targets = {move.to} if move.to is not None else {S.ENDED, S.FAILED}
        for source in move.sources:
            reachable[source] |= targets
    return {state: frozenset(to) for state, to in reachable.items()}


# --- the session's Redis hash ------------------------------------------------------------

OWNER_CONNECT = "owner_connect"
"""The hash field where the owning worker keeps what the owner connects with (api/connect.py)."""


class SessionRecord(BaseModel):
    """A session's live record (its Redis hash, ``keys.session``), as written by
    ``LiveSessions.create`` and the moves; fields a version does not know are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    state: SessionState
    reason: str = ""
    owner: str = ""
    conversation_id: str = ""
    pool: str = ""
    transport: str = ""
    profile: str = ""
    job_id: str = ""
    worker_id: str = ""
    created_ts: float = 0.0
    seq: int = 0
    state_seq: int = 0
    requeues: int = 0
    recoveries: int = 0
    """Times the session went ``recovering`` (its start job then is ``<id>.r<n>``)."""
    losses: int = 0
    """Of those, times because its worker was lost (``VOICEPOOL_MAX_RECOVERIES`` bounds them)."""
    live_since: float = 0.0
    """When the session was first ready (kept across recoveries: its limits count from it)."""
    options: str = ""
    history: str = ""

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> SessionRecord | None:
        """The record, or None for a session Redis no longer has."""
        return cls.model_validate(fields) if fields.get("state") else None
