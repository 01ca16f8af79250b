"""``POST /api/start``: start a session the way Pipecat's client SDK does (``startBotAndConnect``).

The request has the shape Pipecat Cloud's and the Pipecat runner's ``/start``
take; the answer is what the client passes straight on to its transport's
``connect()`` (see ``api.connect.start_response``). The session is created as
by ``POST /api/sessions``, then the call waits (up to ``VOICEPOOL_READY_WAIT``)
until it is ready, so the connection parameters exist when the client gets them.

With ``sessionId`` it creates nothing: it answers the same way for the caller's
own live session, so a client that lost its connection (a reload, a network
change, a call moved to another worker) connects to the same call again.

Pipecat's SmallWebRTCTransport, given only a ``sessionId``, posts its offer to
``…/sessions/{sessionId}/api/offer`` next to the start endpoint, with the start
request's headers; the two routes at the end serve that path.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import ConfigDict, Field

from api.connect import start_response
from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import ApiError
from api.schemas import AssistantOptions, IcePatch, SdpAnswer, SdpOffer, SessionCreate, Strict
from api.services import sessions

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
    session_id: str | None = Field(
        None,
        alias="sessionId",
        max_length=64,
        description="Resume this live session of yours instead of creating one (after a "
        "reload, a lost connection, a call moved to another worker): the answer is the same, "
        "for that session. `body` is not used: the session keeps its own choices.",
    )


@router.post(
    "/start",
    responses={200: {"description": "What the Pipecat client's transport connects with."}},
)
async def start(
    body: StartRequest, response: Response, user: CurrentUser, db: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Create a session, wait until it is ready, and answer with its connection parameters
    (`sessionId` also in the `X-Session-Id` header; `Location` is the session).

    With `sessionId`: the caller's own live session instead, once a client may connect
    to it (waited for while it moves to another worker); `404` if it is not theirs,
    `409 session_ended` if it has ended."""
    transport = body.transport or ("daily" if body.create_daily_room else "webrtc")
    if body.create_daily_room and transport != "daily":
        raise ApiError(422, "invalid_request", f"createDailyRoom asks for Daily, not {transport}")
    if body.session_id is not None:
        asked = transport if body.transport or body.create_daily_room else None
        row, connect = await sessions.resume(state, db, user, body.session_id, asked)
    else:
        choices = body.body or StartBody()
        request = SessionCreate(
            transport=transport,
            profile=choices.profile,
            conversation_id=choices.conversation_id,
            pool=choices.pool,
            options=choices.options,
        )
        row, connect = await sessions.start(state, db, user, request)
    response.headers["X-Session-Id"] = row.id
    response.headers["Location"] = f"/api/sessions/{row.id}"
    return start_response(state, row, connect)


@router.post(
    "/sessions/{session_id}/api/offer",
    response_model=SdpAnswer,
    summary="Send SDP offer (the path Pipecat's client derives from /api/start)",
)
async def pipecat_offer(
    session_id: str, body: SdpOffer, user: CurrentUser, state: StateDep
) -> SdpAnswer:
    return SdpAnswer(**await sessions.relay_offer(state, user, session_id, body))


@router.patch(
    "/sessions/{session_id}/api/offer",
    status_code=204,
    summary="Add ICE candidates (the path Pipecat's client derives from /api/start)",
)
async def pipecat_ice(
    session_id: str, body: IcePatch, user: CurrentUser, state: StateDep
) -> Response:
    await sessions.relay_ice(state, user, session_id, body)
    return Response(status_code=204)
