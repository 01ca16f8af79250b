"""A session's SQL rows, stored from what Redis holds of it.

A session is created in Redis alone (``LiveSessions.create``): the commit of its rows
was the one SQL write on a start's path, seven aiosqlite thread hops that the answer
waited on (ops/bench/start_trace.py). The persister stores them instead, with the
session's first events, from whichever of its state events it meets first: each one's
ingest entry carries them (``shared.live.ROW_FIELDS``), so entries adopted late from a
crashed persister, or shared out among many, cannot leave a state change without its
row. A request about one live session needs no row: the live hash holds what the row
would (``live_row``). One that reads many from SQL (a list right after a start) stores
those not stored yet itself, from the live hash (``from_live``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.live import ROW_FIELDS
from shared.models import Conversation, User, VoiceSession
from shared.store import Store

SESSIONS: Table = VoiceSession.__table__  # type: ignore[attr-defined]  # SQLModel sets it per table class
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[attr-defined]  # SQLModel sets it per table class
USERS: Table = User.__table__  # type: ignore[attr-defined]  # SQLModel sets it per table class

# A conversation is touched when a session starts in it: never moved back in time.
_TOUCH = (
    update(CONVERSATIONS)
    .where(CONVERSATIONS.c.id == bindparam("cid"), CONVERSATIONS.c.updated_at < bindparam("at"))
    .values(updated_at=bindparam("at"))
)


@dataclass(frozen=True)
class SessionRow:
    """What a session's row is made from (its state follows from its state events)."""

    session_id: str
    conversation_id: str
    user_id: str
    pool: str
    transport: str
    profile: str
    created_at: datetime

    @classmethod
    def from_values(
        cls, session_id: str, conversation_id: str, values: Sequence[Any]
    ) -> SessionRow | None:
        """From ``ROW_FIELDS``' values, in that order; None if one is missing."""
        named = dict(zip(ROW_FIELDS, values, strict=False))
        if not conversation_id or not all(isinstance(named.get(f), str) for f in ROW_FIELDS):
            return None
        try:
            created = datetime.fromtimestamp(float(named["created_ts"]), UTC)
        except ValueError:
            return None
        return cls(
            session_id,
            conversation_id,
            named["owner"],
            named["pool"],
            named["transport"],
            named["profile"],
            created,
        )

    def unsaved(self) -> VoiceSession:
        """The row as the persister will store it, not stored."""
        return VoiceSession(
            id=self.session_id,
            conversation_id=self.conversation_id,
            user_id=self.user_id,
            pool=self.pool,
            transport=self.transport,
            profile=self.profile,
            created_at=self.created_at,
        )


def from_entry(fields: Mapping[str, str]) -> SessionRow | None:
    """The row an ingest entry carries (a state event's; None for any other)."""
    carried = fields.get("row")
    if not carried:
        return None
    values = json.loads(carried)
    if not isinstance(values, list):
        return None
    return SessionRow.from_values(fields["sid"], fields.get("cid", ""), values)


def from_live(session_id: str, live: Mapping[str, str]) -> SessionRow | None:
    """The row a session's live hash holds (None: Redis has no such session)."""
    values = [live.get(field) for field in ROW_FIELDS]
    return SessionRow.from_values(session_id, live.get("conversation_id", ""), values)


def live_row(session_id: str, live: Mapping[str, str]) -> VoiceSession | None:
    """The session's row as its live hash has it now, state and worker included, not
    stored (None: Redis has no such session)."""
    row = from_live(session_id, live)
    if row is None:
        return None
    current = row.unsaved()
    current.state = live.get("state", current.state)
    seq = live.get("state_seq", "")
    current.state_seq = int(seq) if seq.isdigit() else 0
    current.reason = live.get("reason") or None
    current.worker_id = live.get("worker_id") or None
    return current


async def store_missing(db: AsyncSession, rows: Iterable[SessionRow]) -> int:
    """Insert those of ``rows`` not stored yet, with their conversations where they are
    new; returns how many. The caller commits, holding the store's write lock.

    A row whose user is gone (deleted while the session ran) is not stored: its events
    still are. Two writers racing (the persister and a request) both insert nothing
    twice."""
    by_id = {row.session_id: row for row in rows}
    if not by_id:
        return 0
    stored = await stored_ids(db, by_id)
    missing = [row for sid, row in by_id.items() if sid not in stored]
    if not missing:
        return 0
    users = await _ids(db, USERS, {row.user_id for row in missing})
    missing = [row for row in missing if row.user_id in users]
    if not missing:
        return 0
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    known = await _ids(db, CONVERSATIONS, {row.conversation_id for row in missing})
    new = {row.conversation_id: row for row in missing if row.conversation_id not in known}
    if new:
        await db.execute(
            insert(CONVERSATIONS).on_conflict_do_nothing(index_elements=["id"]),
            [
                {"id": cid, "user_id": row.user_id, "created_at": row.created_at,
                 "updated_at": row.created_at}
                for cid, row in new.items()
            ],
        )  # fmt: skip
    await db.execute(
        insert(SESSIONS).on_conflict_do_nothing(index_elements=["id"]),
        [
            {"id": row.session_id, "conversation_id": row.conversation_id,
             "user_id": row.user_id, "pool": row.pool, "transport": row.transport,
             "profile": row.profile, "state": "queued", "state_seq": 0,
             "created_at": row.created_at}
            for row in missing
        ],
    )  # fmt: skip
    return len(missing)


async def touch_conversations(db: AsyncSession, started: Mapping[str, float]) -> None:
    """Conversations in which a session started (id → when): recent again."""
    if started:
        at = [{"cid": cid, "at": datetime.fromtimestamp(ts, UTC)} for cid, ts in started.items()]
        await db.execute(_TOUCH, at)


async def stored_ids(db: AsyncSession, session_ids: Iterable[str]) -> set[str]:
    """Those of the sessions whose rows are stored."""
    return await _ids(db, SESSIONS, session_ids)


async def _ids(db: AsyncSession, table: Table, wanted: Iterable[str]) -> set[str]:
    result = await db.execute(select(table.c.id).where(table.c.id.in_(sorted(set(wanted)))))
    return set(result.scalars())


async def store_now(store: Store, db: AsyncSession, rows: Iterable[SessionRow]) -> None:
    """``store_missing``, committed: for a request that needs rows before the persister
    has stored them."""
    async with store.writing():
        await store_missing(db, rows)
        await db.commit()
