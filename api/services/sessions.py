"""Sessions apart from HTTP: ownership, admission and start, reading, ending, signalling."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from collections.abc import Awaitable
from typing import Any, cast

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import limits, metrics
from api.connect import (
    connect_url,
    owner_connect,
    owner_connect_when_ready,
    peer_connect,
    room_connect,
    websocket_connect,
)
from api.deps import AppState
from api.errors import (
    ApiError,
    already_connected,
    not_found,
    not_offered,
    not_ready,
    refused,
    session_ended,
    too_many,
)
from api.events import wait_for_state, wait_for_state_event
from api.schemas import IcePatch, SdpOffer, SessionCreate, SessionOut, sdp_offer_problem
from api.services import ownership
from shared import control, keys, queue, seats, ws_tokens
from shared.fleet import PROFILES, PROTOCOL, live_beats
from shared.history import transcript_history
from shared.ids import new_id
from shared.lifecycle import (
    CLIENT_MAY_CONNECT,
    FINAL_STATES,
    OWNED_STATES,
    OWNER_CONNECT,
    WAITING_STATES,
    Reason,
    SessionState,
)
from shared.live import (
    AdmissionPolicy,
    AdmissionRefused,
    Created,
    OwnerLimitReached,
    RateLimit,
    RateLimited,
    SeatOffer,
)
from shared.models import Conversation, User, VoiceSession, as_utc
from shared.settings import Settings

END_WAIT_S = 5.0
REFUSALS_REMEMBERED_S = 5.0
"""How long after a refusal creates for the same pool (or user) look at admission first."""
REFUSALS_KEPT = 1024  # past this many remembered, the expired ones are forgotten
SESSIONS_PER_S = 60  # the window of VOICEPOOL_SESSIONS_PER_MINUTE


# --- whose -------------------------------------------------------------------------------


async def owned(
    state: AppState, db: AsyncSession, user: User, session_id: str, *, owner_only: bool = False
) -> VoiceSession:
    """The session if the caller owns it (or, to read it, is an admin); else 404."""
    return await ownership.owned_session(state, db, session_id, user, admins=not owner_only)


async def owned_briefly(state: AppState, user: User, session_id: str) -> VoiceSession:
    """The caller's own session, read in a short database session: signalling waits
    for the session to be ready and must hold no pooled connection meanwhile."""
    async with state.store.session() as db:
        return await owned(state, db, user, session_id, owner_only=True)


# --- reading -----------------------------------------------------------------------------


async def describe(
    state: AppState, row: VoiceSession, live: dict[str, str] | None = None
) -> SessionOut:
    """The session's state for its reader, from ``live`` (its live hash as the caller read it
    just now) or, without it, from a read here."""
    if live is None:
        live = await state.live.get(row.id)
    status = live.get("state", row.state)
    position = None
    if status == SessionState.QUEUED:
        position = await queue.position(state.redis, row.pool, live.get("job_id", row.id))
    return SessionOut(
        session_id=row.id,
        conversation_id=row.conversation_id,
        status=SessionState(status),
        reason=live.get("reason", row.reason),
        state_seq=_state_seq(live, row),
        pool=row.pool,
        transport=row.transport,
        profile=row.profile,
        worker_id=live.get("worker_id") or row.worker_id,
        queue_position=position,
        created_at=as_utc(row.created_at),
        events_url=f"/api/sessions/{row.id}/events",
        offer_url=f"/api/sessions/{row.id}/offer",
        connect_url=connect_url(row),
    )


def _state_seq(live: dict[str, str], row: VoiceSession) -> int | None:
    """The seq of the state event behind ``status``: the live hash's while Redis has the
    session (None if it does not say), else the stored row's (the persister's)."""
    if live:
        value = live.get("state_seq", "")
        return int(value) if value.isdigit() else None
    return row.state_seq or None


async def connect(state: AppState, row: VoiceSession) -> dict[str, Any]:
    """What the owner of a session connects with: a WebSocket token minted afresh (single
    use, while the session waits for its client), a Daily room, or a WebRTC session's
    offer URL and ICE servers (a TURN credential minted afresh; the offer may be sent
    while the session is still queued: it waits for ``ready``)."""
    live = await state.live.get(row.id)
    current = live.get("state", row.state)
    if current in FINAL_STATES:
        raise session_ended(current)
    if row.transport == "webrtc":
        return peer_connect(state, row)
    if current not in CLIENT_MAY_CONNECT:  # waiting for a worker, or starting on one
        raise not_ready()
    found = owner_connect(state, row, live)
    if found is None:  # a WebSocket call takes one client, and it has it
        raise already_connected()
    return found


# --- creating ----------------------------------------------------------------------------


async def create(
    state: AppState, db: AsyncSession, user: User, request: SessionCreate
) -> VoiceSession:
    """A new queued session (and, without ``conversation_id``, a new conversation): live
    in Redis with its start job queued, its rows to be stored by the persister
    (``api.session_rows``); or an error, and nothing made."""
    row, _, _ = await _create(state, db, user, request)
    return row


async def _create(
    state: AppState,
    db: AsyncSession,
    user: User,
    request: SessionCreate,
    *,
    look: bool = False,
) -> tuple[VoiceSession, str, Created]:
    """``create``, the key the session's WebSocket tokens are signed with ('' for another
    transport): made here, with the session, so that its creator can mint them without
    reading it back; and what its create step said (its ``queued`` event's id, for its
    creator to wait on from there; or that it was seated, ``ready`` already).

    Nothing is written to SQL: the session's rows travel with its state events, and the
    persister stores them (a request about the session reads it from Redis while it is
    live: ``ownership.current_session``). The only SQL is a read of the conversation a session
    continues, which must be the caller's.

    Admission is decided where the session goes live, atomically (``LiveSessions.create``).
    A look at it first (``_admit``) is a Redis round trip of its own, one more on top of
    the three a start waits on one after another (this step; a worker's claim, which
    takes the session too; the API's wake on ``ready``), each ~0.4 ms on a quiet machine
    (ops/bench/start_trace.py): it is taken only where a refusal came lately. A session
    refused without it left nothing behind, and is created once more, looking first
    (``look``): so a pool that refuses spills to its fallback as before."""
    ws_key = ws_tokens.new_key() if request.transport == "websocket" else ""
    profile, pool, looked, rate = await _admit(state, user, request, look=look)
    conversation_id, history = await _conversation(state, db, user, request)
    row = VoiceSession(
        id=new_id(),
        conversation_id=conversation_id,
        user_id=user.id,
        pool=pool,
        transport=request.transport,
        profile=profile,
    )
    try:
        created = await _go_live(state, row, request, history, ws_key, rate)
    except RateLimited as limited:
        raise limits.rate_limited(limited.limit, SESSIONS_PER_S) from None
    except (OwnerLimitReached, AdmissionRefused) as refusal:
        _refused_lately(state, user, row.pool, refusal)
        if not looked:  # refused unseen: as if it had looked (a fallback, the refusal's reason)
            return await _create(state, db, user, request, look=True)
        if isinstance(refusal, OwnerLimitReached):  # lost a race
            raise _too_many(pool, refusal.limit) from refusal
        raise await _refused(state, pool, refusal, (row.profile, row.transport)) from refusal
    except Exception as exc:
        raise ApiError(503, "queue_unavailable", "the session queue is unreachable") from exc
    metrics.SESSIONS_REQUESTED.labels(pool=pool, transport=row.transport, profile=profile).inc()
    if created.seated is not None:
        metrics.SESSIONS_SEATED.labels(pool=pool).inc()
    return row, ws_key, created


async def _admit(
    state: AppState, user: User, request: SessionCreate, *, look: bool
) -> tuple[str, str, bool, RateLimit | None]:
    """The session's profile and pool, once the request may start one at all; whether
    admission was looked at (with ``look``, or after a refusal lately: see ``_create``);
    and the rate limit for the create step to count, if it has not been counted here. A
    second attempt (``look``) is not counted again."""
    settings = state.settings
    limit = settings.sessions_per_minute
    rate = None
    if not look and limit > 0:
        key = limits.window_key("sessions", user.id, SESSIONS_PER_S)
        rate = RateLimit(key, limit, SESSIONS_PER_S + 1)
    profile = request.profile or settings.default_profile
    if profile not in PROFILES:  # which workers run it, admission says (a pool's own)
        raise not_offered("profile", profile, list(PROFILES))
    if request.transport not in settings.available_transports:
        raise not_offered("transport", request.transport, settings.available_transports)
    pool = request.pool or settings.default_pool
    if pool not in settings.pools:
        raise ApiError(422, "unknown_pool", f"no pool {pool!r}; pools: {', '.join(settings.pools)}")

    if not (look or _refusing(state, user, pool)):
        return profile, pool, False, rate
    if rate is not None:  # counted before the look, which may refuse it
        await limits.hit(state.redis, "sessions", user.id, limit=limit, per_s=SESSIONS_PER_S)
    try:  # a first look, before the session goes live; _go_live decides, atomically
        pool = await _admitting_pool(state, user, pool, (profile, request.transport))
    except OwnerLimitReached as exc:
        _refused_lately(state, user, pool, exc)
        raise _too_many(pool, exc.limit) from None
    return profile, pool, True, None


def _refusing(state: AppState, user: User, pool: str) -> bool:
    """Whether the pool or the user's session limit refused a session lately."""
    since = time.monotonic() - REFUSALS_REMEMBERED_S
    lately = state.refused_lately
    return (
        lately.get(f"pool:{pool}", -math.inf) > since
        or lately.get(f"user:{user.id}", -math.inf) > since
    )


def _refused_lately(
    state: AppState, user: User, pool: str, refusal: AdmissionRefused | OwnerLimitReached
) -> None:
    key = f"user:{user.id}" if isinstance(refusal, OwnerLimitReached) else f"pool:{pool}"
    lately = state.refused_lately
    lately[key] = now = time.monotonic()
    if len(lately) > REFUSALS_KEPT:  # users come and go: forget the refusals that are past
        for stale in [k for k, at in lately.items() if at < now - REFUSALS_REMEMBERED_S]:
            del lately[stale]


async def _conversation(
    state: AppState, db: AsyncSession, user: User, request: SessionCreate
) -> tuple[str, list[dict[str, str]]]:
    """The session's conversation (a new one's id, or the caller's own) and what was said
    in it so far; the read ends here (the persister touches the conversation when the
    session's first event is stored)."""
    if not request.conversation_id:
        return new_id(), []  # no query on the common path
    conversation = await ownership.fetch(db, Conversation, request.conversation_id)
    if conversation is None:  # begun by a session so new that it is not stored yet
        conversation = await ownership.owned_conversation(
            state, db, request.conversation_id, user, admins=False
        )
    elif conversation.user_id != user.id:
        raise not_found("conversation")
    history = await transcript_history(db, conversation.id, state.settings.history_max_messages)
    await db.commit()  # ends the read
    return conversation.id, history


async def _go_live(
    state: AppState,
    row: VoiceSession,
    request: SessionCreate,
    history: list[dict[str, str]],
    ws_key: str,
    rate: RateLimit | None,
) -> Created:
    """The session's live record (with the conversation so far) and its start job, in one
    step, counted against ``rate``."""
    settings = state.settings
    expires_s = settings.queue_ttl + queue.START_JOB_SLACK_S
    return await state.live.create(
        row.id,
        row.user_id,
        {
            "conversation_id": row.conversation_id,
            "pool": row.pool,
            "transport": row.transport,
            "profile": row.profile,
            "job_id": row.id,
            "protocol": str(PROTOCOL),  # a worker takes it as it claims the job only if its own
            "created_ts": repr(row.created_at.timestamp()),
            "options": request.options.model_dump_json(exclude_none=True)
            if request.options
            else "",
            "history": json.dumps(history) if history else "",
            **({ws_tokens.KEY_FIELD: ws_key} if ws_key else {}),
        },
        owner_limit=settings.max_sessions_per_user,
        admission=admission(settings),
        job=queue.new_start_job(state.arq, row.id, row.pool, expires_s=expires_s),
        rate=rate,
        seat=SeatOffer(PROTOCOL, seats.SEATED_TTL_MS) if request.transport == "websocket" else None,
    )


async def _admitting_pool(state: AppState, user: User, pool: str, needs: tuple[str, str]) -> str:
    """``pool``, or its fallback (VOICEPOOL_POOL_FALLBACKS) when ``pool`` can't take the
    session and the fallback can: a Jetson pool whose board is down spills to the server.
    Raises the requested pool's refusal when neither can."""
    settings = state.settings
    policy, limit = admission(settings), settings.max_sessions_per_user
    try:
        await state.live.admit(pool, user.id, policy, owner_limit=limit, needs=needs)
        return pool
    except AdmissionRefused as refusal:
        _refused_lately(state, user, pool, refusal)
        fallback = settings.pool_fallbacks[pool].pool if pool in settings.pool_fallbacks else None
        if fallback is not None:
            with contextlib.suppress(AdmissionRefused):
                await state.live.admit(fallback, user.id, policy, owner_limit=limit, needs=needs)
                metrics.SESSIONS_SPILLED.labels(pool=pool, to=fallback, reason=refusal.code).inc()
                return fallback
        raise await _refused(state, pool, refusal, needs) from None


def admission(settings: Settings) -> AdmissionPolicy:
    return AdmissionPolicy(
        max_waiting=settings.max_queue_length,
        queue_ttl=settings.queue_ttl,
        workers_required=not settings.admit_without_workers,
    )


async def _refused(
    state: AppState, pool: str, refusal: AdmissionRefused, needs: tuple[str, str]
) -> ApiError:
    metrics.SESSIONS_REFUSED.labels(pool=pool, reason=refusal.code).inc()
    profile, transport = needs
    lacking = "profile"
    if refusal.code == "no_profile":  # no worker serves both: say which one is missing
        beats = [
            b for b in await live_beats(state.redis) if b.pool == pool and b.protocol == PROTOCOL
        ]
        if any(profile in b.profiles for b in beats):
            lacking = "transport"
    return refused(pool, refusal, state.settings.queue_ttl, profile, transport, lacking)


def _too_many(pool: str, limit: int) -> ApiError:
    metrics.SESSIONS_REFUSED.labels(pool=pool, reason="too_many_sessions").inc()
    message = f"you already have {limit} live sessions; end one first"
    return too_many("too_many_sessions", message, 5)


async def start(
    state: AppState, db: AsyncSession, user: User, request: SessionCreate
) -> tuple[VoiceSession, dict[str, Any] | None]:
    """Create a session and wait (up to ``VOICEPOOL_READY_WAIT``) until it is ready: the
    session and what its owner connects with (None for WebRTC, which sends an offer)."""
    created, ws_key, step = await _create(state, db, user, request)
    session_id = created.id
    await db.close()  # hold no pooled connection while waiting for a worker
    if step.seated is not None:  # ready on a worker already: its listener is in its hash
        listener = json.loads(step.seated.get(OWNER_CONNECT) or "{}")
        seated = websocket_connect(state, created, listener, ws_key)
        if seated is not None:
            return created, seated
    targets = {*CLIENT_MAY_CONNECT, *FINAL_STATES}
    current, seen = await wait_for_state_event(
        state,
        session_id,
        targets,
        timeout=state.settings.ready_wait,
        since=(SessionState.QUEUED, step.event_id),
    )
    if current in FINAL_STATES:
        raise await _failure(state, session_id, str(current))
    if current not in CLIENT_MAY_CONNECT:
        # Nobody will connect to what the client gave up on: do not leave it queued.
        with contextlib.suppress(ApiError):
            await end(state, created)
        # 409 as for an early SDP offer: the server is fine, no worker was free in time.
        raise not_ready(
            "no worker could start the session in time; try again", session_id=session_id
        )
    # The row as created: what changed since (its state, its worker) is read from Redis.
    found = await owner_connect_when_ready(state, created, seen, ws_key)
    if found is None and created.transport != "webrtc":  # the session moved on meanwhile
        raise already_connected()
    return created, found


async def _failure(state: AppState, session_id: str, status: str) -> ApiError:
    """The session's final state as an error: its reason is the code, its message the text."""
    live = await state.live.get(session_id)
    reason = live.get("reason") or "session_ended"
    message = f"the session is {status} ({reason})"
    entries = await state.redis.xrevrange(keys.session_events(session_id), count=1)
    if entries:
        data = json.loads(entries[0][1].get("data", "{}"))
        message = data.get("message") or message
    return ApiError(503, reason, message, session_id=session_id)


# --- ending ------------------------------------------------------------------------------


async def end(state: AppState, row: VoiceSession, live: dict[str, str] | None = None) -> None:
    """End the session (reason ``client_ended``): a queued one is cancelled and its job
    removed, a running one is asked to end by its worker (waited for, bounded). Ending
    an ended session changes nothing. ``live``: its live hash as the caller read it just
    now (``ownership.read_session``); without it, read here."""
    if live is None:
        live = await state.live.get(row.id)
    current = live.get("state")
    if current in WAITING_STATES:  # no worker runs it: end it here
        if await queue.end_waiting(state.live, row.id, Reason.CLIENT_ENDED, current):
            return
        live = await state.live.get(row.id)
        current = live.get("state")
    if current in OWNED_STATES and live.get("worker_id"):
        try:
            end = control.End(
                session_id=row.id, payload=control.EndBody(reason=Reason.CLIENT_ENDED)
            )
            await state.signals.request(live["worker_id"], end)
        except ApiError as exc:
            if exc.code != "unknown_session":  # it finished on its own meanwhile
                raise
        await wait_for_state(state, row.id, FINAL_STATES, timeout=END_WAIT_S)


# --- signalling --------------------------------------------------------------------------


ALIVE_RECHECK_S = 0.25


async def owning_worker(state: AppState, row: VoiceSession) -> str:
    """Wait (bounded) until the session is ready on a live worker and return its id.

    A worker whose liveness key for the session is gone (killed, and not judged lost yet)
    would never answer: the call is about to move, so this waits until it is ready again
    on another worker (``recovered``) rather than send to the one that is gone."""
    deadline = time.monotonic() + state.settings.ready_wait
    while True:
        remaining = max(deadline - time.monotonic(), 0.0)
        current = await wait_for_state(
            state, row.id, {*CLIENT_MAY_CONNECT, *FINAL_STATES}, timeout=remaining
        )
        if current in FINAL_STATES:
            raise session_ended(current)
        if current not in CLIENT_MAY_CONNECT:
            raise not_ready()
        worker_id = (await state.live.get(row.id)).get("worker_id")
        if not worker_id:
            raise ApiError(409, "session_ended", "the session has no worker")
        alive = await cast("Awaitable[str | None]", state.redis.get(keys.session_alive(row.id)))
        if alive == worker_id:
            return worker_id
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise not_ready()
        await asyncio.sleep(min(ALIVE_RECHECK_S, remaining))


async def relay_offer(
    state: AppState, user: User, session_id: str, offer: SdpOffer
) -> dict[str, Any]:
    """The worker's SDP answer to the caller's offer; waits for ``ready`` if needed.

    An offer that is not SDP gets 400 ``invalid_offer`` and changes nothing; a user
    may have ``VOICEPOOL_MAX_SIGNALS_PER_USER`` offers and ICE patches in flight.
    """
    row = await owned_briefly(state, user, session_id)
    problem = sdp_offer_problem(offer.sdp)
    if problem is not None:
        raise ApiError(400, "invalid_offer", problem)
    async with state.signalling.hold(user.id, limit=state.settings.max_signals_per_user):
        worker_id = await owning_worker(state, row)
        body = control.OfferBody.model_validate(offer.model_dump(exclude_none=True))
        answer: dict[str, Any] = await state.signals.request(
            worker_id,
            control.Offer(session_id=row.id, payload=body),
            moved=functools.partial(_left_worker, state, row.id, worker_id),
        )
        return answer


async def _left_worker(state: AppState, session_id: str, worker_id: str) -> bool:
    """Whether the call is no longer running on ``worker_id`` (moved, moving or over)."""
    live = await state.live.get(session_id)
    return live.get("worker_id") != worker_id or live.get("state") not in OWNED_STATES


async def relay_ice(state: AppState, user: User, session_id: str, patch: IcePatch) -> None:
    """Pass trickled ICE candidates to the session's worker.

    Candidates are best effort: ones that arrive after their peer connection or
    session has gone (a browser still trickling as the call ends) are dropped
    rather than reported as errors.
    """
    row = await owned_briefly(state, user, session_id)
    try:
        async with state.signalling.hold(user.id, limit=state.settings.max_signals_per_user):
            worker_id = await owning_worker(state, row)
            body = control.IceBody.model_validate(patch.model_dump())
            await state.signals.request(worker_id, control.Ice(session_id=row.id, payload=body))
    except ApiError as exc:
        if exc.code not in ("session_ended", "unknown_session", "unknown_peer"):
            raise


# --- finding a live call again -----------------------------------------------------------


async def live_sessions(state: AppState, db: AsyncSession, user: User) -> list[SessionOut]:
    """The caller's own sessions not in a final state, newest first: from the user's live
    set, so an administrator gets only their own too. A Daily session carries its room
    (``connect``), as ``GET /api/sessions/{id}`` shows it to its owner."""
    ids = await ownership.store_callers_live(state, db, user)  # one made just now included
    if not ids:
        return []
    rows = await db.exec(
        select(VoiceSession).where(
            col(VoiceSession.id).in_(sorted(ids)), col(VoiceSession.user_id) == user.id
        )
    )
    listed: list[SessionOut] = []
    for row in rows.all():
        described = await describe(state, row)
        if described.status in FINAL_STATES:  # ended since the set was read
            continue
        if row.transport == "daily":
            described.connect = room_connect(row, await state.live.get(row.id))
        listed.append(described)
    return sorted(listed, key=lambda s: (s.created_at, s.session_id), reverse=True)


async def resume(
    state: AppState, db: AsyncSession, user: User, session_id: str, transport: str | None
) -> tuple[VoiceSession, dict[str, Any] | None]:
    """The caller's own live session, to connect to again, as ``start`` answers for a new
    one: waits (up to ``VOICEPOOL_READY_WAIT``) while it is queued, starting or moving to
    another worker, until a client may connect. Another user's session is 404 (an
    administrator's look included), one that has ended 409 ``session_ended``; a session
    still without a worker after the wait is 409 ``not_ready`` and left as it is."""
    row = await owned(state, db, user, session_id, owner_only=True)
    await db.close()  # hold no pooled connection while waiting for a worker
    if transport is not None and transport != row.transport:
        message = f"session {row.id} uses the {row.transport} transport, not {transport}"
        raise ApiError(422, "invalid_request", message)
    current, seen = await wait_for_state_event(
        state, row.id, {*CLIENT_MAY_CONNECT, *FINAL_STATES}, timeout=state.settings.ready_wait
    )
    if current is None or current in FINAL_STATES:  # None: Redis no longer has it
        raise session_ended(current or SessionState.ENDED)
    if current not in CLIENT_MAY_CONNECT:
        raise not_ready("no worker has the session ready yet; try again", session_id=row.id)
    found = await owner_connect_when_ready(state, row, seen)
    if found is None and row.transport != "webrtc":  # a WebSocket call has its client
        raise already_connected()
    return row, found
