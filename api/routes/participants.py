"""More people in a Daily session: the owner invites users by name, each gets a meeting token.

An invitation is the invited user's id in a Redis set beside the session
(``vp:session:{id}:invites``), living as long as the session can. Tokens are
minted by the worker that owns the room (it holds the room and Daily's key in
one place) through a ``participant`` control message, and expire after
``VOICEPOOL_DAILY_TOKEN_TTL``: a token only has to get someone in.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import ApiError, not_found
from api.routes.sessions import _owning_worker
from api.schemas import Strict
from shared import keys
from shared.events import FINAL_STATES
from shared.models import User, VoiceSession
from shared.users import get_user_by_name

router = APIRouter(prefix="/api/sessions", tags=["participants"])


class InviteIn(Strict):
    user: str = Field(min_length=1, max_length=64, description="Name of the user to invite.")


class InviteOut(BaseModel):
    session_id: str
    user: str


class ParticipantToken(BaseModel):
    room_url: str
    token: str = Field(description="Daily meeting token for this caller; expires at `expires_at`.")
    expires_at: int = Field(description="Unix time after which the token no longer lets one in.")
    user: str


async def _session(db: SessionDep, session_id: str) -> VoiceSession | None:
    return await db.get(VoiceSession, session_id) if len(session_id) <= 64 else None


def _room_only(row: VoiceSession) -> None:
    if row.transport != "daily":
        raise ApiError(409, "not_a_room", "only a Daily session has a room others can join")


async def _own_room(db: SessionDep, user: User, session_id: str, state: StateDep) -> VoiceSession:
    """The caller's own live Daily session (others' answer 404, as if they did not exist)."""
    row = await _session(db, session_id)
    if row is None or row.user_id != user.id:
        raise not_found("session")
    _room_only(row)
    status = (await state.live.get(row.id)).get("state", row.state)
    if status in FINAL_STATES:
        raise ApiError(409, "session_ended", f"the session has already {status}")
    return row


@router.post("/{session_id}/invites", status_code=201, response_model=InviteOut)
async def invite(
    session_id: str, body: InviteIn, user: CurrentUser, db: SessionDep, state: StateDep
) -> InviteOut:
    """Owner only: let the named user get meeting tokens for this session's room."""
    row = await _own_room(db, user, session_id, state)
    invitee = await get_user_by_name(db, body.user)
    if invitee is None:
        raise ApiError(404, "user_not_found", f"no user {body.user!r}")
    key = keys.session_invites(row.id)
    lifetime = state.settings.queue_ttl + state.settings.max_session_duration
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(key, invitee.id)
        pipe.expire(key, int(lifetime) + 60)
        await pipe.execute()
    return InviteOut(session_id=row.id, user=invitee.name)


@router.delete("/{session_id}/invites/{name}", status_code=204)
async def uninvite(
    session_id: str, name: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> Response:
    """Owner only: no more tokens for this user (one already handed out keeps working
    until it expires)."""
    row = await _own_room(db, user, session_id, state)
    invitee = await get_user_by_name(db, name)
    if invitee is not None:
        await state.redis.srem(keys.session_invites(row.id), invitee.id)
    return Response(status_code=204)


@router.post("/{session_id}/participants", response_model=ParticipantToken)
async def participant_token(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> ParticipantToken:
    """A fresh, expiring meeting token for the session's room: for its owner, or for a user
    the owner invited. Anyone else gets 404."""
    row = await _session(db, session_id)
    allowed = row is not None and (
        row.user_id == user.id
        or bool(await state.redis.sismember(keys.session_invites(row.id), user.id))
    )
    if row is None or not allowed:
        raise not_found("session")
    _room_only(row)
    worker_id = await _owning_worker(state, row)
    result = await state.signals.request(
        worker_id,
        "participant",
        session_id=row.id,
        payload={"user_name": user.name, "user_id": user.id},
    )
    return ParticipantToken(**result, user=user.name)
