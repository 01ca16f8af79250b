"""Sessions: create, read, end, signal (SDP offer and ICE candidates), and their event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse

from api import limits, metrics
from api.connect import connect_url, owner_connect, room_connect
from api.deps import AppState, Caller, CurrentCaller, CurrentUser, SessionDep, StateDep, is_admin
from api.errors import ApiError, not_found
from api.events import session_event_stream, wait_for_state
from api.schemas import (
    IcePatch,
    RoomConnect,
    SdpAnswer,
    SdpOffer,
    SessionCreate,
    SessionOut,
    WebSocketConnect,
    sdp_offer_problem,
)
from shared import keys
from shared.events import FINAL_STATES, OWNED_STATES, Reason, SessionState
from shared.history import transcript_history
from shared.live import OwnerLimitReached, estimate_wait
from shared.models import Conversation, User, VoiceSession, as_utc, utcnow
from shared.users import new_id

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
log = logging.getLogger(__name__)

START_JOB = "start_session"
END_WAIT_S = 5.0
START_JOB_SLACK_S = 300
CREDENTIAL_CHECK_S = 2.0  # an event stream outlives its credential by at most this


async def _owned_session(
    db: SessionDep, user: User, session_id: str, *, owner_only: bool = False
) -> VoiceSession:
    """The session if the caller owns it (or, to read it, is an admin); else 404."""
    row = await db.get(VoiceSession, session_id) if len(session_id) <= 64 else None
    allowed = row is not None and (row.user_id == user.id or (is_admin(user) and not owner_only))
    if not allowed or row is None:
        raise not_found("session")
    return row


async def _describe(state: StateDep, row: VoiceSession) -> SessionOut:
    live = await state.live.get(row.id)
    status = live.get("state", row.state)
    position = None
    if status == SessionState.QUEUED:
        position = await state.live.queue_position(row.pool, live.get("job_id", row.id))
    return SessionOut(
        session_id=row.id,
        conversation_id=row.conversation_id,
        status=status,
        reason=live.get("reason", row.reason),
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


@router.post("", status_code=202, response_model=SessionOut)
async def create_session(
    body: SessionCreate, user: CurrentUser, db: SessionDep, state: StateDep
) -> SessionOut:
    settings = state.settings
    await limits.hit(state.redis, "sessions", user.id, limit=settings.sessions_per_minute, per_s=60)
    profile = body.profile or settings.default_profile
    if profile not in settings.available_profiles:
        raise ApiError(
            422, "profile_unavailable",
            f"profile {profile!r} is not available here; available: "
            + ", ".join(settings.available_profiles),
        )  # fmt: skip
    if body.transport not in settings.available_transports:
        raise ApiError(
            422, "transport_unavailable",
            f"transport {body.transport!r} is not available here; available: "
            + ", ".join(settings.available_transports),
        )  # fmt: skip
    pool = body.pool or settings.default_pool
    if pool not in settings.pools:
        raise ApiError(422, "unknown_pool", f"no pool {pool!r}; pools: {', '.join(settings.pools)}")

    waiting = await state.redis.zcard(keys.queue(pool))
    if waiting >= settings.max_queue_length:
        metrics.SESSIONS_REFUSED.labels(pool=pool, reason="no_capacity").inc()
        retry = await estimate_wait(state.redis, pool, waiting) or settings.queue_ttl
        raise ApiError(
            503, "no_capacity",
            f"pool {pool!r} has {waiting} sessions waiting; try again later",
            headers={"Retry-After": str(max(int(retry), 1))},
        )  # fmt: skip

    limit = settings.max_sessions_per_user
    if limit and await state.redis.scard(keys.user_live(user.id)) >= limit:
        raise _too_many(pool, limit)

    new_conversation = not body.conversation_id
    if body.conversation_id:
        conversation = await db.get(Conversation, body.conversation_id)
        if conversation is None or conversation.user_id != user.id:
            raise not_found("conversation")
        conversation.updated_at = utcnow()
    else:
        conversation = Conversation(id=new_id(), user_id=user.id)
    row = VoiceSession(
        id=new_id(),
        conversation_id=conversation.id,
        user_id=user.id,
        pool=pool,
        transport=body.transport,
        profile=profile,
    )
    async with state.store.writing():
        db.add(conversation)
        db.add(row)
        await db.commit()  # before Redis: the persister may see this session's events at once

    history = await transcript_history(db, conversation.id, settings.history_max_messages)
    created = time.time()
    try:
        await state.live.create(
            row.id,
            user.id,
            {
                "conversation_id": conversation.id,
                "pool": pool,
                "transport": body.transport,
                "profile": profile,
                "job_id": row.id,
                "created_ts": repr(created),
                "options": body.options.model_dump_json(exclude_none=True) if body.options else "",
                "history": json.dumps(history) if history else "",
            },
            owner_limit=settings.max_sessions_per_user,
        )
        await state.arq.enqueue_job(
            START_JOB,
            row.id,
            _job_id=row.id,
            _queue_name=keys.queue(pool),
            # The reaper expires the session at its queue TTL (after any grace for a
            # Redis outage) and removes the job; arq's own expiry only bounds a leak,
            # and must not drop a job whose session is still waiting.
            _expires=settings.queue_ttl + START_JOB_SLACK_S,
        )
    except OwnerLimitReached as exc:  # lost a race with a concurrent request: leave nothing
        async with state.store.writing():
            await db.delete(row)
            await db.flush()  # the session before its conversation (foreign key)
            if new_conversation:
                await db.delete(conversation)
            await db.commit()
        raise _too_many(pool, exc.limit) from exc
    except Exception as exc:
        row.state, row.reason = SessionState.FAILED, "queue_unavailable"
        async with state.store.writing():
            db.add(row)
            await db.commit()
        raise ApiError(503, "queue_unavailable", "the session queue is unreachable") from exc
    metrics.SESSIONS_REQUESTED.labels(pool=pool, transport=body.transport, profile=profile).inc()
    return await _describe(state, row)


def _too_many(pool: str, limit: int) -> ApiError:
    metrics.SESSIONS_REFUSED.labels(pool=pool, reason="too_many_sessions").inc()
    return ApiError(
        429, "too_many_sessions", f"you already have {limit} live sessions; end one first",
        headers={"Retry-After": "5"},
    )  # fmt: skip


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> SessionOut:
    row = await _owned_session(db, user, session_id)
    described = await _describe(state, row)
    if row.user_id == user.id:  # not for admins looking on: the secrets are the owner's
        # Only what is stored: a read mints no WebSocket token (POST …/connect does).
        described.connect = room_connect(row, await state.live.get(row.id))
    return described


@router.post("/{session_id}/connect", response_model=WebSocketConnect | RoomConnect)
async def connect_session(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> WebSocketConnect | RoomConnect:
    """Owner only: what the client connects with. A WebSocket session gets a fresh token
    (single use, valid ``VOICEPOOL_WS_TOKEN_TTL`` seconds) per call, while it waits for its
    client; a Daily session its room and the owner's meeting token."""
    row = await _owned_session(db, user, session_id, owner_only=True)
    if row.transport == "webrtc":
        raise ApiError(
            409, "no_connect",
            f"a WebRTC session connects by sending its SDP offer to /api/sessions/{row.id}/offer",
        )  # fmt: skip
    live = await state.live.get(row.id)
    current = live.get("state", row.state)
    if current in FINAL_STATES:
        raise ApiError(409, "session_ended", f"the session has already {current}")
    if current in (SessionState.QUEUED, SessionState.STARTING):
        raise ApiError(
            409, "not_ready", "the session is still waiting for a worker; try again",
            headers={"Retry-After": "2"},
        )  # fmt: skip
    connect = await owner_connect(state, row, live)
    if connect is None:  # a WebSocket call takes one client, and it has it
        raise ApiError(409, "already_connected", "the session is no longer waiting for a client")
    if row.transport == "websocket":
        return WebSocketConnect(**connect)
    return RoomConnect(**connect)


@router.delete("/{session_id}", response_model=SessionOut)
async def end_session(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> SessionOut:
    """End a session (reason ``client_ended``). Ending an ended session changes nothing."""
    row = await _owned_session(db, user, session_id)
    live = await state.live.get(row.id)
    current = live.get("state")
    if current == SessionState.QUEUED:
        cancelled, _ = await state.live.transition(
            row.id, SessionState.CANCELLED, Reason.CLIENT_ENDED,
            allowed_from={SessionState.QUEUED},
        )  # fmt: skip
        if cancelled:
            job_id = live.get("job_id", row.id)
            await state.redis.zrem(keys.queue(row.pool), job_id)
            await state.redis.delete(f"arq:job:{job_id}")
            return await _describe(state, row)
        live = await state.live.get(row.id)
        current = live.get("state")
    if current in OWNED_STATES and live.get("worker_id"):
        try:
            await state.signals.request(
                live["worker_id"], "end", session_id=row.id,
                payload={"reason": Reason.CLIENT_ENDED},
            )  # fmt: skip
        except ApiError as exc:
            if exc.code != "unknown_session":  # it finished on its own meanwhile
                raise
        await wait_for_state(state, row.id, FINAL_STATES, timeout=END_WAIT_S)
    return await _describe(state, row)


async def _signalled_session(state: StateDep, user: User, session_id: str) -> VoiceSession:
    """The caller's own session, read in a short database session: signalling waits
    for the session to be ready and must hold no pooled connection meanwhile."""
    async with state.store.session() as db:
        return await _owned_session(db, user, session_id, owner_only=True)


async def _owning_worker(state: StateDep, row: VoiceSession) -> str:
    """Wait (bounded) until the session is ready and return the id of its worker."""
    current = await wait_for_state(
        state,
        row.id,
        {SessionState.READY, SessionState.CONNECTED, *FINAL_STATES},
        timeout=state.settings.ready_wait,
    )
    if current in FINAL_STATES:
        raise ApiError(409, "session_ended", f"the session has already {current}")
    if current not in (SessionState.READY, SessionState.CONNECTED):
        # 409, not 503: the server is fine, this session is just not there yet.
        raise ApiError(
            409, "not_ready", "the session is still waiting for a worker; try again",
            headers={"Retry-After": "2"},
        )  # fmt: skip
    worker_id = (await state.live.get(row.id)).get("worker_id")
    if not worker_id:
        raise ApiError(409, "session_ended", "the session has no worker")
    return worker_id


@router.post("/{session_id}/offer", response_model=SdpAnswer)
async def send_offer(
    session_id: str, body: SdpOffer, user: CurrentUser, state: StateDep
) -> SdpAnswer:
    """Relay a WebRTC SDP offer to the session's worker; waits for ``ready`` if needed.

    An offer that is not SDP gets 400 ``invalid_offer`` and changes nothing; a user
    may have ``VOICEPOOL_MAX_SIGNALS_PER_USER`` offers and ICE patches in flight.
    """
    row = await _signalled_session(state, user, session_id)
    problem = sdp_offer_problem(body.sdp)
    if problem is not None:
        raise ApiError(400, "invalid_offer", problem)
    async with state.signalling.hold(user.id, limit=state.settings.max_signals_per_user):
        worker_id = await _owning_worker(state, row)
        answer = await state.signals.request(
            worker_id, "offer", session_id=row.id, payload=body.model_dump(exclude_none=True)
        )
    return SdpAnswer(**answer)


@router.patch("/{session_id}/offer", status_code=204)
async def add_ice_candidates(
    session_id: str, body: IcePatch, user: CurrentUser, state: StateDep
) -> Response:
    """Relay trickled ICE candidates to the session's worker.

    Candidates are best effort: ones that arrive after their peer connection or
    session has gone (a browser still trickling as the call ends) are dropped
    with 204 rather than reported as errors.
    """
    row = await _signalled_session(state, user, session_id)
    try:
        async with state.signalling.hold(user.id, limit=state.settings.max_signals_per_user):
            worker_id = await _owning_worker(state, row)
            await state.signals.request(
                worker_id, "ice", session_id=row.id, payload=body.model_dump()
            )
    except ApiError as exc:
        if exc.code not in ("session_ended", "unknown_session", "unknown_peer"):
            raise
    return Response(status_code=204)


async def _while_valid(
    source: AsyncIterator[bytes], caller: Caller, state: AppState
) -> AsyncIterator[bytes]:
    """``source`` until it ends or the caller's credential stops holding: a revoked,
    signed-out or expired credential must not keep receiving a call's events.

    A task checks every ``CREDENTIAL_CHECK_S``, so nothing is added per event (an
    API process sends tens of thousands a second). When the credential fails while
    the stream waits for events, the wait is cancelled (that cancellation is ours
    to absorb); while the client is being written to, the stream stops after it.
    """
    consumer: asyncio.Task[object] | None = None
    waiting = stopped = False
    cancels_before = 0

    async def watch() -> None:
        nonlocal stopped, cancels_before
        while True:
            await asyncio.sleep(CREDENTIAL_CHECK_S)
            try:
                valid = await caller.still_valid(state)
            except Exception as exc:  # Redis or the database away: the stream waits too
                log.warning("could not re-check an event stream's credential: %s", exc)
                continue
            if not valid:
                stopped = True
                if waiting and consumer is not None:
                    cancels_before = consumer.cancelling()
                    consumer.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        while not stopped:
            consumer = asyncio.current_task()
            waiting = True
            try:
                item = await anext(source)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # Ours alone (the client going away cancels too): end the stream quietly.
                if stopped and consumer is not None and consumer.uncancel() <= cancels_before:
                    return
                raise
            finally:
                waiting = False
            if stopped:
                return
            yield item
    finally:
        watcher.cancel()
        await source.aclose()


@router.get("/{session_id}/events")
async def stream_events(
    session_id: str,
    caller: CurrentCaller,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None, Query(description="Resume after this event id (as Last-Event-ID).")
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events: ``id`` is the stream entry id, ``event`` the type, ``data`` JSON.

    The stream replays from the start (or after ``Last-Event-ID``) and closes
    after the session's final state, or within ``CREDENTIAL_CHECK_S`` of the
    caller's credential being revoked, signed out or expiring.
    """
    user = caller.user
    # A short database session: the stream may stay open for the whole call.
    async with state.store.session() as db:
        row = await _owned_session(db, user, session_id)
    start = last_event_id or after or "0-0"
    if not _valid_stream_id(start):
        raise ApiError(422, "invalid_event_id", "Last-Event-ID must be a stream id like 1-0")
    lease = await state.streams.take(user.id, limit=state.settings.max_streams_per_user)
    metrics.SSE_CLIENTS.inc()

    async def events():  # type: ignore[no-untyped-def]
        try:
            stream = _while_valid(session_event_stream(state, row, start), caller, state)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    yield event
        finally:  # runs when the client goes away too (the generator is cancelled)
            metrics.SSE_CLIENTS.dec()
            state.streams.release(lease)

    return EventSourceResponse(events(), ping=15, send_timeout=30)


def _valid_stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit()) and len(value) <= 40
