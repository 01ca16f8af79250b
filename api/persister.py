"""The persister: ingest stream → SQL, exactly once per event.

DESIGN decision 4. Workers XADD every event to the ingest stream. This task
reads it with a consumer group, stores a batch in one transaction (a new
session's rows, from the first of its state events met: ``api.session_rows``;
inserts keyed by (session_id, seq) so a replayed entry is a no-op; and the
session rows' state following their state events), and only then XACKs. Entries a
crashed persister read but never acknowledged are adopted with XAUTOCLAIM.
The stream is trimmed below the oldest entry not yet acknowledged, so
trimming can never drop an event that is not stored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from sqlalchemy import Table, bindparam, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from api import metrics, session_rows
from shared import keys
from shared.events import Event, EventType
from shared.lifecycle import FINAL_STATES, Reason, SessionState
from shared.models import Conversation, EventRecord, VoiceSession, as_utc
from shared.store import Store

# The tables, not the ORM classes: the persister's statements are plain inserts and
# updates, and going through the ORM's bulk machinery was about a fifth of the API's
# CPU in a burst of starts (py-spy, ops/bench/anchor.py).
EVENTS: Table = EventRecord.__table__  # type: ignore[attr-defined]  # SQLModel sets it per table class
SESSIONS: Table = VoiceSession.__table__  # type: ignore[attr-defined]  # SQLModel sets it per table class

log = logging.getLogger(__name__)

# One statement for every state event, so SQLAlchemy builds and compiles it once: building
# a statement per event with only the columns it sets was most of the persister's CPU,
# itself a quarter of the API's per session (py-spy). A NULL leaves a column as it was.
_STATE_UPDATE = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("sid"), SESSIONS.c.state_seq < bindparam("seq"))
    .values(
        state=bindparam("new_state"),
        reason=bindparam("new_reason"),
        state_seq=bindparam("seq"),
        ready_at=func.coalesce(
            bindparam("ready", type_=SESSIONS.c.ready_at.type), SESSIONS.c.ready_at
        ),
        connected_at=func.coalesce(
            SESSIONS.c.connected_at, bindparam("connected", type_=SESSIONS.c.connected_at.type)
        ),
        ended_at=func.coalesce(
            bindparam("ended", type_=SESSIONS.c.ended_at.type), SESSIONS.c.ended_at
        ),
        worker_id=func.coalesce(
            bindparam("worker", type_=SESSIONS.c.worker_id.type), SESSIONS.c.worker_id
        ),
        pool=func.coalesce(bindparam("new_pool", type_=SESSIONS.c.pool.type), SESSIONS.c.pool),
    )
    .returning(SESSIONS.c.pool, SESSIONS.c.created_at, SESSIONS.c.transport, SESSIONS.c.profile)
)

READ_BLOCK_MS = 1000
# After the first new entries, how long more may gather before the batch is written: a
# session's start publishes ~5 events within ~20 ms, and writing each as it came was a
# transaction per event, on the API's loop and aiosqlite's thread, while the API was
# answering that same start (ops/bench/start_trace.py). Events are durable in Redis
# meanwhile; the store lags by at most this much more.
GATHER_S = 0.05
CLAIM_EVERY_S = 5.0
TRIM_EVERY_S = 1.0
TITLE_LENGTH = 80

Entry = tuple[str, dict[str, str]]


class Persister:
    def __init__(
        self,
        redis: aioredis.Redis,
        store: Store,
        *,
        consumer: str | None = None,
        batch_size: int = 500,
        claim_idle_ms: int = 15000,
    ):
        self.redis = redis
        self.store = store
        self.consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.stored = 0
        self._retry_own = False  # a batch failed: what this consumer read is pending again
        self._last_claim = 0.0
        self._last_trim = 0.0
        self._insert = pg_insert if store.engine.dialect.name == "postgresql" else sqlite_insert

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                keys.INGEST_STREAM, keys.PERSISTER_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        grouped = False
        while True:
            try:
                if not grouped:  # at start, and after a Redis that restarted empty
                    await self.ensure_group()
                    grouped = True
                await self.step(gather_s=GATHER_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database away: retry, never lose entries
                log.warning("persister: %s; retrying", exc)
                self._retry_own = True
                grouped = grouped and "NOGROUP" not in str(exc)
                await asyncio.sleep(1.0)

    async def step(self, block_ms: int = READ_BLOCK_MS, gather_s: float = 0.0) -> int:
        """Store one batch: adopted entries first, then new ones, with what follows the first
        within ``gather_s`` (up to a full batch). Returns entries handled."""
        entries: list[Entry] = []
        now = time.monotonic()
        if self._retry_own:
            # Entries this consumer read but could not store come back first, a batch a
            # step (not one batch per CLAIM_EVERY_S, as adopting another's would: 12,000
            # held back by a full disk took 30 s to store that way, 2 s this way).
            entries, self._retry_own = await self.own_pending()
        elif now - self._last_claim >= CLAIM_EVERY_S:
            self._last_claim = now
            entries = await self.claim_abandoned()
        if not entries:
            entries = await self.read_new(self.batch_size, block_ms)
            if entries and len(entries) < self.batch_size and gather_s > 0:
                await asyncio.sleep(gather_s)
                entries += await self.read_new(self.batch_size - len(entries), None)
        if entries:
            started = time.perf_counter()
            await self.store_entries(entries)
            await self.acknowledge([entry_id for entry_id, _ in entries])
            metrics.PERSIST_BATCH_SECONDS.observe(time.perf_counter() - started)
        if time.monotonic() - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = time.monotonic()
            await self.trim()
        return len(entries)

    async def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """Entries no consumer of the group has read yet (waiting up to ``block_ms`` for the
        first; None: not at all)."""
        reply = await self.redis.xreadgroup(
            keys.PERSISTER_GROUP,
            self.consumer,
            {keys.INGEST_STREAM: ">"},
            count=count,
            block=block_ms,
        )
        return [e for _stream, batch in reply or () for e in batch]

    async def own_pending(self) -> tuple[list[Entry], bool]:
        """Entries delivered to this consumer and not acknowledged, oldest first, and
        whether there may be more."""
        reply = await self.redis.xreadgroup(
            keys.PERSISTER_GROUP, self.consumer, {keys.INGEST_STREAM: "0"}, count=self.batch_size
        )
        entries = [e for _stream, batch in reply or () for e in batch]
        gone = [entry_id for entry_id, fields in entries if not fields]  # trimmed meanwhile
        if gone:
            await self.acknowledge(gone)
        return [(entry_id, fields) for entry_id, fields in entries if fields], bool(entries)

    async def claim_abandoned(self, min_idle_ms: int | None = None) -> list[Entry]:
        """Adopt entries another (crashed) consumer read but never acknowledged."""
        idle = self.claim_idle_ms if min_idle_ms is None else min_idle_ms
        _next, claimed, *_ = await self.redis.xautoclaim(
            keys.INGEST_STREAM,
            keys.PERSISTER_GROUP,
            self.consumer,
            min_idle_time=idle,
            start_id="0-0",
            count=self.batch_size,
        )
        return [(entry_id, fields) for entry_id, fields in claimed if fields]

    async def store_entries(self, entries: Sequence[Entry]) -> None:
        events = [Event.from_stream_fields(fields) for _id, fields in entries]
        rows = [
            {
                "session_id": e.session_id,
                "conversation_id": e.conversation_id,
                "seq": e.seq,
                "ts": e.ts,
                "type": e.type,
                "data": e.data,
                "stream_id": e.stream_id,
            }
            for e in events
        ]
        carried = [row for _id, fields in entries if (row := session_rows.from_entry(fields))]
        started = {
            e.conversation_id: e.ts
            for e in events
            if _is_state(e) and e.data.get("previous") is None
        }
        async with self.store.writing(), self.store.session() as db:
            # A new session's rows first: its state events update them.
            await session_rows.store_missing(db, carried)
            await session_rows.touch_conversations(db, started)
            # One statement, many parameter sets: SQLAlchemy batches them into
            # multi-row INSERTs itself ("insertmanyvalues"), much cheaper than
            # compiling one giant VALUES clause per batch. RETURNING counts only
            # the rows that were new.
            statement = (
                self._insert(EVENTS)
                .on_conflict_do_nothing(index_elements=["session_id", "seq"])
                .returning(EVENTS.c.id)
            )
            result = await db.execute(statement, rows)
            inserted = len(result.all())
            changes = [await self._apply_state(db, e) for e in events if _is_state(e)]
            for event in events:
                if event.type == EventType.USER_TRANSCRIPT and event.data.get("text"):
                    await self._title_from(db, event)
            await db.commit()
        self.stored += inserted
        metrics.PERSISTED_EVENTS.inc(inserted)
        for event, labels in changes:
            if labels is not None:
                _count_transition(event, labels)

    async def _apply_state(
        self, db: AsyncSession, event: Event
    ) -> tuple[Event, dict[str, str] | None]:
        """Move the session row to the event's state unless a later event already did."""
        state = event.data.get("state")
        when = datetime.fromtimestamp(event.ts, UTC)
        # Ready again on another worker (recovered) is the same call: it keeps its start.
        moved = _moved(event)
        result = await db.execute(
            _STATE_UPDATE,
            {
                "sid": event.session_id,
                "seq": event.seq,
                "new_state": state,
                "new_reason": event.data.get("reason"),
                "ready": when if state == SessionState.READY and not moved else None,
                # the first connect: a call's talk time starts
                "connected": when if state == SessionState.CONNECTED else None,
                "ended": when if state in FINAL_STATES else None,
                # moved to a fallback pool, or taken up by a worker of one
                "worker": event.data.get("worker_id") or None,
                "new_pool": event.data.get("pool") or None,
            },
        )
        row = result.first()
        if row is None:
            return event, None
        since_request = max(event.ts - as_utc(row[1]).timestamp(), 0.0)
        if state == SessionState.STARTING and not moved:
            metrics.QUEUE_WAIT_SECONDS.labels(pool=row[0]).observe(since_request)
        elif state == SessionState.READY and not moved:
            metrics.DISPATCH_SECONDS.labels(pool=row[0]).observe(since_request)
        return event, {"pool": row[0], "transport": row[2], "profile": row[3]}

    async def _title_from(self, db: AsyncSession, event: Event) -> None:
        """A conversation without a title takes its first user words as one."""
        text = " ".join(str(event.data["text"]).split())
        title = text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1].rstrip() + "…"
        await db.exec(
            update(Conversation)
            .where(col(Conversation.id) == event.conversation_id)
            .where(col(Conversation.title).is_(None))
            .values(title=title)
        )

    async def acknowledge(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self.redis.xack(keys.INGEST_STREAM, keys.PERSISTER_GROUP, *entry_ids)

    async def trim(self) -> None:
        """Drop stored entries: everything below the oldest one not yet acknowledged."""
        groups = await self.redis.xinfo_groups(keys.INGEST_STREAM)
        group = next((g for g in groups if g["name"] == keys.PERSISTER_GROUP), None)
        if group is None:
            return
        if group["pending"]:
            summary = await self.redis.xpending(keys.INGEST_STREAM, keys.PERSISTER_GROUP)
            floor = summary["min"]
        else:
            floor = group["last-delivered-id"]
        if floor and floor != "0-0":
            await self.redis.xtrim(keys.INGEST_STREAM, minid=floor, approximate=False)
        lag = group.get("lag")
        metrics.PERSISTER_PENDING.set(group["pending"] + (lag or 0))


def _is_state(event: Event) -> bool:
    return event.type == EventType.SESSION_STATE


def _moved(event: Event) -> bool:
    """Whether a state event is part of a call moving to another worker (recovering, and
    taken up and ready again there), not of a session starting."""
    return (
        event.data.get("previous") == SessionState.RECOVERING
        or event.data.get("reason") == Reason.RECOVERED
    )


def _count_transition(event: Event, labels: dict[str, str]) -> None:
    """Count a session reaching ready (the first time), going recovering, or reaching a
    final state (once: only a row that moved)."""
    state = event.data.get("state")
    if state == SessionState.RECOVERING:
        metrics.SESSIONS_RECOVERING.labels(**labels, reason=event.data.get("reason", "")).inc()
    elif state == SessionState.READY and not _moved(event):
        metrics.SESSIONS_STARTED.labels(**labels).inc()
    elif state in FINAL_STATES:
        metrics.SESSIONS_ENDED.labels(
            **labels, state=state, reason=event.data.get("reason", "")
        ).inc()
