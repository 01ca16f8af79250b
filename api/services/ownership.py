"""Whose rows are whose: the one check behind every "yours, or 404"."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from sqlmodel.ext.asyncio.session import AsyncSession

from api import session_rows
from api.errors import not_found
from shared import keys
from shared.ids import MAX_ID_LENGTH
from shared.models import Conversation, User, VoiceSession

if TYPE_CHECKING:
    from api.deps import AppState


def is_admin(user: User) -> bool:
    return user.role == "admin"


def may_see(user: User, owner_id: str, *, admins: bool) -> bool:
    return owner_id == user.id or (admins and is_admin(user))


class Owned(Protocol):
    user_id: str


Row = TypeVar("Row", bound=Owned)


async def fetch(db: AsyncSession, model: type[Row], row_id: str) -> Row | None:
    """The row with this id, or None."""
    return await db.get(model, row_id) if len(row_id) <= MAX_ID_LENGTH else None


async def owned(
    db: AsyncSession, model: type[Row], row_id: str, user: User, *, what: str, admins: bool = True
) -> Row:
    """The row if ``user`` owns it (or, with ``admins``, is an admin); else 404
    ``{what}_not_found``, the same whether it does not exist or belongs to someone else."""
    row = await fetch(db, model, row_id)
    if row is None or not may_see(user, row.user_id, admins=admins):
        raise not_found(what)
    return row


# A session's rows are stored by the persister, a moment after it is created
# (api/session_rows.py). While Redis holds a session, its live hash says whose it is and
# what state it is in, so a request about it reads that and no SQL at all: a start's
# DELETE or read right after it neither stores the row itself nor queues behind the
# persister on the store's write lock (they were a tenth of the API's samples over a
# run of sequential starts, py-spy). A session Redis no longer holds is read from its row.


@dataclass(frozen=True)
class SessionAsRead:
    """A session as a request read it: its row, and its live hash as read then (``{}``:
    Redis holds it no longer, and the row is the stored one). What the request does next
    may use the hash instead of reading it again, until it changes the session."""

    row: VoiceSession
    live: dict[str, str]


async def read_session(state: AppState, db: AsyncSession, session_id: str) -> SessionAsRead | None:
    """The session as it is now, or None: while it is live, as its live hash says (a row
    not stored, or not necessarily); after, its stored row."""
    if len(session_id) > MAX_ID_LENGTH:
        return None
    live = await state.live.get(session_id)
    row = session_rows.live_row(session_id, live)
    if row is None:
        row = await fetch(db, VoiceSession, session_id)
    return SessionAsRead(row, live) if row is not None else None


async def current_session(
    state: AppState, db: AsyncSession, session_id: str
) -> VoiceSession | None:
    """``read_session``'s row."""
    found = await read_session(state, db, session_id)
    return found.row if found is not None else None


async def owned_session_as_read(
    state: AppState, db: AsyncSession, session_id: str, user: User, *, admins: bool = True
) -> SessionAsRead:
    """``owned`` for a session, which may be live and not stored yet."""
    found = await read_session(state, db, session_id)
    if found is None or not may_see(user, found.row.user_id, admins=admins):
        raise not_found("session")
    return found


async def owned_session(
    state: AppState, db: AsyncSession, session_id: str, user: User, *, admins: bool = True
) -> VoiceSession:
    """``owned_session_as_read``'s row."""
    return (await owned_session_as_read(state, db, session_id, user, admins=admins)).row


async def owned_conversation(
    state: AppState, db: AsyncSession, conversation_id: str, user: User, *, admins: bool = True
) -> Conversation:
    """``owned`` for a conversation, with the caller's live sessions stored first: one
    begun so lately that it is not stored yet is found, with all its sessions."""
    await store_callers_live(state, db, user)
    return await owned(db, Conversation, conversation_id, user, what="conversation", admins=admins)


async def store_callers_live(state: AppState, db: AsyncSession, user: User) -> set[str]:
    """The caller's live sessions' rows, stored now where the persister has not yet: what
    a caller made, a caller reads back (a list right after a start includes it). One set
    read and one query when all are stored. Returns the live sessions' ids."""
    live = await cast("Awaitable[set[str]]", state.redis.smembers(keys.user_live(user.id)))
    if not live:
        return live
    missing = live - await session_rows.stored_ids(db, live)
    rows = []
    for session_id in sorted(missing):
        row = session_rows.from_live(session_id, await state.live.get(session_id))
        if row is not None and row.user_id == user.id:
            rows.append(row)
    if rows:
        await session_rows.store_now(state.store, db, rows)
    return live
