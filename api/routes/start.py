"""``POST /api/start``: start a session the way Pipecat's client SDK does (``startBotAndConnect``).

The request has the shape Pipecat Cloud's and the Pipecat runner's ``/start``
take; the answer is what the client passes straight on to its transport's
``connect()`` (see ``api.connect.start_response``). The session is created as
by ``POST /api/sessions``, then the call waits (up to ``VOICEPOOL_READY_WAIT``)
until it is ready, so the connection parameters exist when the client gets them.

Pipecat's SmallWebRTCTransport, given only a ``sessionId``, posts its offer to
``…/sessions/{sessionId}/api/offer`` next to the start endpoint, with the start
request's headers; the two routes at the end serve that path.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import ConfigDict, Field

from api.connect import owner_connect, start_response
from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import ApiError
from api.events import wait_for_state
from api.routes.sessions import add_ice_candidates, create_session, end_session, send_offer
from api.schemas import AssistantOptions, IcePatch, SdpAnswer, SdpOffer, SessionCreate, Strict
from shared import keys
from shared.events import FINAL_STATES, SessionState
from shared.models import VoiceSession

router = APIRouter(prefix="/api", tags=["start"])


class StartBody(Strict):
    """The session's choices (Pipecat's free-form ``body``; here, what a session takes)."""

    profile: str | None = Field(None, max_length=32)
    conversation_id: str | None = Field(None, max_length=32)
    pool: str | None = Field(None, max_length=64)
    options: AssistantOptions | None = None


class StartRequest(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    transport: Literal["webrtc", "websocket", "daily"] | None = Field(
        None, description="Default: `daily` with `createDailyRoom`, else `webrtc`."
    )
    create_daily_room: bool | None = Field(
        None, alias="createDailyRoom", description="Pipecat Cloud's way to ask for Daily."
    )
    enable_default_ice_servers: bool | None = Field(
        None,
        alias="enableDefaultIceServers",
        description="Accepted for compatibility; `iceConfig` always carries this server's "
        "own ICE servers (VOICEPOOL_ICE_SERVERS), never a public default.",
    )
    body: StartBody | None = None


async def _failure(state: StateDep, session_id: str, status: str) -> ApiError:
    """The session's final state as an error: its reason is the code, its message the text."""
    live = await state.live.get(session_id)
    reason = live.get("reason") or "session_ended"
    message = f"the session is {status} ({reason})"
    entries = await state.redis.xrevrange(keys.session_events(session_id), count=1)
    if entries:
        data = json.loads(entries[0][1].get("data", "{}"))
        message = data.get("message") or message
    return ApiError(503, reason, message, session_id=session_id)


@router.post(
    "/start",
    responses={200: {"description": "What the Pipecat client's transport connects with."}},
)
async def start(
    body: StartRequest, response: Response, user: CurrentUser, db: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Create a session, wait until it is ready, and answer with its connection parameters
    (`sessionId` also in the `X-Session-Id` header; `Location` is the session)."""
    transport = body.transport or ("daily" if body.create_daily_room else "webrtc")
    if body.create_daily_room and transport != "daily":
        raise ApiError(422, "invalid_request", f"createDailyRoom asks for Daily, not {transport}")
    choices = body.body or StartBody()
    created = await create_session(
        SessionCreate(
            transport=transport,
            profile=choices.profile,
            conversation_id=choices.conversation_id,
            pool=choices.pool,
            options=choices.options,
        ),
        user,
        db,
        state,
    )
    session_id = created.session_id
    await db.close()  # hold no pooled connection while waiting for a worker
    response.headers["X-Session-Id"] = session_id
    response.headers["Location"] = f"/api/sessions/{session_id}"
    current = await wait_for_state(
        state,
        session_id,
        {SessionState.READY, SessionState.CONNECTED, *FINAL_STATES},
        timeout=state.settings.ready_wait,
    )
    if current in FINAL_STATES:
        raise await _failure(state, session_id, str(current))
    if current not in (SessionState.READY, SessionState.CONNECTED):
        # Nobody will connect to what the client gave up on: do not leave it queued.
        with contextlib.suppress(ApiError):
            await end_session(session_id, user, db, state)
        # 409 as for an early SDP offer: the server is fine, no worker was free in time.
        raise ApiError(
            409, "not_ready", "no worker could start the session in time; try again",
            headers={"Retry-After": "2", "X-Session-Id": session_id}, session_id=session_id,
        )  # fmt: skip
    row = await db.get(VoiceSession, session_id)
    assert row is not None
    connect = await owner_connect(state, row, await state.live.get(session_id))
    if connect is None and transport != "webrtc":  # the session moved on meanwhile
        raise ApiError(409, "already_connected", "the session is no longer waiting for a client")
    return start_response(state, row, connect)


@router.post(
    "/sessions/{session_id}/api/offer",
    response_model=SdpAnswer,
    summary="Send SDP offer (the path Pipecat's client derives from /api/start)",
)
async def pipecat_offer(
    session_id: str, body: SdpOffer, user: CurrentUser, state: StateDep
) -> SdpAnswer:
    return await send_offer(session_id, body, user, state)


@router.patch(
    "/sessions/{session_id}/api/offer",
    status_code=204,
    summary="Add ICE candidates (the path Pipecat's client derives from /api/start)",
)
async def pipecat_ice(
    session_id: str, body: IcePatch, user: CurrentUser, state: StateDep
) -> Response:
    return await add_ice_candidates(session_id, body, user, state)
