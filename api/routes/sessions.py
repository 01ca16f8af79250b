"""Sessions: create, read, end, signal (SDP offer and ICE candidates), and their event stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse

from api import metrics
from api.connect import room_connect
from api.deps import (
    AppState,
    Caller,
    CurrentCaller,
    CurrentUser,
    OwnedSessionAsRead,
    OwnersSession,
    SessionDep,
    StateDep,
)
from api.errors import ApiError
from api.events import session_event_stream
from api.schemas import (
    IcePatch,
    PeerConnect,
    RoomConnect,
    SdpAnswer,
    SdpOffer,
    SessionCreate,
    SessionOut,
    WebSocketConnect,
)
from api.services import sessions

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
log = logging.getLogger(__name__)

CREDENTIAL_CHECK_S = 2.0  # an event stream outlives its credential by at most this


@router.post(
    "",
    status_code=202,
    response_model=SessionOut,
    responses={201: {"description": "With `wait=ready`: ready, `connect` filled in."}},
)
async def create_session(
    body: SessionCreate,
    user: CurrentUser,
    db: SessionDep,
    state: StateDep,
    response: Response,
    wait: Annotated[
        Literal["ready"] | None,
        Query(
            description="`ready`: answer once the session is ready (up to "
            "`VOICEPOOL_READY_WAIT`), with what the client connects with in `connect` "
            "(websocket: `ws_url`; daily: the room; webrtc: nothing, send the offer), so "
            "no event stream or `connect_url` call is needed before connecting. A session "
            "no worker took in time is ended: `409 not_ready`."
        ),
    ] = None,
) -> SessionOut:
    """Create a session: `202` queued (watch `events_url`), or with `wait=ready`, `201`
    ready to connect to."""
    if wait is None:
        return await sessions.describe(state, await sessions.create(state, db, user, body))
    row, connect = await sessions.start(state, db, user, body)
    described = await sessions.describe(state, row)
    described.connect = connect
    response.status_code = 201
    return described


@router.get("", response_model=list[SessionOut])
async def list_live_sessions(
    user: CurrentUser,
    db: SessionDep,
    state: StateDep,
    live: Annotated[
        bool, Query(description="Must be `true`: only live sessions are listed.")
    ] = False,
) -> list[SessionOut]:
    """The caller's own live sessions (not yet in a final state), newest first: to find
    a call again, after a page reload say. An administrator gets only their own too.

    ``live=true`` is required (``422 invalid_request`` without it): ended sessions
    are listed with their conversations, ``GET /api/conversations``.
    """
    if not live:
        message = "only live sessions are listed here: add ?live=true (ended ones are in "
        raise ApiError(422, "invalid_request", message + "/api/conversations)")
    return await sessions.live_sessions(state, db, user)


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(found: OwnedSessionAsRead, user: CurrentUser, state: StateDep) -> SessionOut:
    row, live = found.row, found.live  # one read of the live hash answers it all
    described = await sessions.describe(state, row, live)
    if row.user_id == user.id:  # not for admins looking on: the secrets are the owner's
        # Only what is stored: a read mints no WebSocket token (POST …/connect does).
        described.connect = room_connect(row, live)
    return described


@router.post("/{session_id}/connect", response_model=WebSocketConnect | RoomConnect | PeerConnect)
async def connect_session(
    row: OwnersSession, state: StateDep
) -> WebSocketConnect | RoomConnect | PeerConnect:
    """Owner only: what the client connects with. A WebSocket session gets a fresh token
    (single use, valid ``VOICEPOOL_WS_TOKEN_TTL`` seconds) per call, while it waits for its
    client; a Daily session its room and the owner's meeting token; a WebRTC session where
    its offer goes and its ICE servers (a TURN credential minted per call)."""
    connect = await sessions.connect(state, row)
    if row.transport == "websocket":
        return WebSocketConnect(**connect)
    if row.transport == "webrtc":
        return PeerConnect(**connect)
    return RoomConnect(**connect)


@router.delete("/{session_id}", response_model=SessionOut)
async def end_session(found: OwnedSessionAsRead, state: StateDep) -> SessionOut:
    """End a session (reason ``client_ended``). Ending an ended session changes nothing."""
    await sessions.end(state, found.row, found.live)
    return await sessions.describe(state, found.row)  # read again: it has ended since


@router.post("/{session_id}/offer", response_model=SdpAnswer)
async def send_offer(
    session_id: str, body: SdpOffer, user: CurrentUser, state: StateDep
) -> SdpAnswer:
    """Relay a WebRTC SDP offer to the session's worker; waits for ``ready`` if needed.

    An offer that is not SDP gets 400 ``invalid_offer`` and changes nothing; a user
    may have ``VOICEPOOL_MAX_SIGNALS_PER_USER`` offers and ICE patches in flight.
    """
    return SdpAnswer(**await sessions.relay_offer(state, user, session_id, body))


@router.patch("/{session_id}/offer", status_code=204)
async def add_ice_candidates(
    session_id: str, body: IcePatch, user: CurrentUser, state: StateDep
) -> Response:
    """Relay trickled ICE candidates to the session's worker.

    Candidates are best effort: ones that arrive after their peer connection or
    session has gone (a browser still trickling as the call ends) are dropped
    with 204 rather than reported as errors.
    """
    await sessions.relay_ice(state, user, session_id, body)
    return Response(status_code=204)


async def _while_valid(
    source: AsyncGenerator[bytes, None], caller: Caller, state: AppState
) -> AsyncGenerator[bytes, None]:
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
        row = await sessions.owned(state, db, user, session_id)
    start = last_event_id or after or "0-0"
    if not _valid_stream_id(start):
        raise ApiError(422, "invalid_event_id", "Last-Event-ID must be a stream id like 1-0")
    lease = await state.streams.take(user.id, limit=state.settings.max_streams_per_user)
    metrics.SSE_CLIENTS.inc()

    async def events() -> AsyncGenerator[bytes, None]:
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
