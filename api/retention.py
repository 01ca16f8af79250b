"""Retention: conversations nobody touched for ``VOICEPOOL_RETENTION_DAYS`` are deleted,
with their sessions and events (and their lines in the transcript search).

A conversation with a session not yet in a final state is kept, however old: a call
may be going on in it. Deletes go in batches, each its own transaction under the
store's write lock, so the persister's writes go on in between; any number of API
processes may sweep side by side (a row deleted twice is deleted once).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlmodel import col

from shared.lifecycle import FINAL_STATES
from shared.models import Conversation, EventRecord, VoiceSession, utcnow
from shared.store import Store

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 3600.0
"""Retention is counted in days: an hour late costs nothing."""
BATCH = 200
"""Conversations deleted per transaction (the write lock is held for one batch)."""


async def sweep(store: Store, days: float) -> int:
    """Delete the conversations last updated more than ``days`` ago that have no live
    session; returns how many."""
    cutoff = utcnow() - timedelta(days=days)
    live = select(col(VoiceSession.conversation_id)).where(
        col(VoiceSession.state).not_in([str(s) for s in FINAL_STATES])
    )
    deleted = 0
    while True:
        async with store.writing(), store.session() as db:
            ids: list[str] = list(
                (
                    await db.execute(
                        select(col(Conversation.id))
                        .where(col(Conversation.updated_at) < cutoff)
                        .where(col(Conversation.id).not_in(live))
                        .limit(BATCH)
                    )
                ).scalars()
            )
            if not ids:
                return deleted
            # Children first (foreign keys); SQLite's trigger drops their search lines.
            await db.execute(delete(EventRecord).where(col(EventRecord.conversation_id).in_(ids)))
            await db.execute(delete(VoiceSession).where(col(VoiceSession.conversation_id).in_(ids)))
            await db.execute(delete(Conversation).where(col(Conversation.id).in_(ids)))
            await db.commit()
        deleted += len(ids)


async def run(store: Store, days: float) -> None:
    """Sweep now and every hour, for as long as the API runs."""
    while True:
        try:
            deleted = await sweep(store, days)
            if deleted:
                log.info("retention: deleted %d conversations older than %g days", deleted, days)
        except Exception as exc:  # the next sweep tries again
            log.warning("retention sweep failed: %s", exc)
        await asyncio.sleep(SWEEP_EVERY_S)
