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

from api.deps import CurrentUser, OwnersSession, SessionDep, StateDep
from api.schemas import Strict
from api.services import participants

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


@router.post("/{session_id}/invites", status_code=201, response_model=InviteOut)
async def invite(row: OwnersSession, body: InviteIn, db: SessionDep, state: StateDep) -> InviteOut:
    """Owner only: let the named user get meeting tokens for this session's room."""
    invitee = await participants.invite(state, db, row, body.user)
    return InviteOut(session_id=row.id, user=invitee.name)


@router.delete("/{session_id}/invites/{name}", status_code=204)
async def uninvite(row: OwnersSession, name: str, db: SessionDep, state: StateDep) -> Response:
    """Owner only: no more tokens for this user (one already handed out keeps working
    until it expires)."""
    await participants.uninvite(state, db, row, name)
    return Response(status_code=204)


@router.post("/{session_id}/participants", response_model=ParticipantToken)
async def participant_token(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> ParticipantToken:
    """A fresh, expiring meeting token for the session's room: for its owner, or for a user
    the owner invited. Anyone else gets 404."""
    minted = await participants.token(state, db, user, session_id)
    return ParticipantToken(**minted, user=user.name)
