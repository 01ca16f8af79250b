"""More people in a Daily session: invitations (a Redis set beside the session) and
meeting tokens, minted by the worker that owns the room."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import AppState
from api.errors import ApiError, not_found, session_ended
from api.services import ownership, sessions
from shared import control, keys
from shared.lifecycle import FINAL_STATES
from shared.models import User, VoiceSession
from shared.users import get_user_by_name


def _room_only(row: VoiceSession) -> None:
    if row.transport != "daily":
        raise ApiError(409, "not_a_room", "only a Daily session has a room others can join")


async def _live_room(state: AppState, row: VoiceSession) -> VoiceSession:
    """The owner's session, if it is a live Daily session."""
    _room_only(row)
    status = (await state.live.get(row.id)).get("state", row.state)
    if status in FINAL_STATES:
        raise session_ended(status)
    return row


async def invite(state: AppState, db: AsyncSession, row: VoiceSession, name: str) -> User:
    """Let the named user get meeting tokens for the owner's room; the invited user."""
    await _live_room(state, row)
    invitee = await get_user_by_name(db, name)
    if invitee is None:
        raise ApiError(404, "user_not_found", f"no user {name!r}")
    key = keys.session_invites(row.id)
    lifetime = state.settings.queue_ttl + state.settings.max_session_duration
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(key, invitee.id)
        pipe.expire(key, int(lifetime) + 60)
        await pipe.execute()
    return invitee


async def uninvite(state: AppState, db: AsyncSession, row: VoiceSession, name: str) -> None:
    """No more tokens for the named user (one already handed out keeps working until it
    expires); naming nobody invited changes nothing."""
    await _live_room(state, row)
    invitee = await get_user_by_name(db, name)
    if invitee is not None:
        await cast("Awaitable[int]", state.redis.srem(keys.session_invites(row.id), invitee.id))


async def token(state: AppState, db: AsyncSession, user: User, session_id: str) -> dict[str, Any]:
    """A fresh meeting token for the room, for its owner or a user the owner invited
    (anyone else: 404): ``room_url``, ``token``, ``expires_at``."""
    row = await ownership.current_session(state, db, session_id)
    allowed = row is not None and (
        row.user_id == user.id
        or bool(
            await cast(
                "Awaitable[int]", state.redis.sismember(keys.session_invites(row.id), user.id)
            )
        )
    )
    if row is None or not allowed:
        raise not_found("session")
    _room_only(row)
    worker_id = await sessions.owning_worker(state, row)
    body = control.ParticipantBody(user_name=user.name, user_id=user.id)
    grant: dict[str, Any] = await state.signals.request(
        worker_id, control.Participant(session_id=row.id, payload=body)
    )
    return grant
