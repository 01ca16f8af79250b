"""talk time and transcript search

Sessions record when a client first connected (talk time counts from there, not from
``ready``), filled in for sessions stored before from their ``connected`` events.
Transcript lines become searchable: SQLite keeps an FTS5 index fed by a trigger on
``events``; PostgreSQL a GIN index over the lines' text. Both use the simple tokenizer
(no language's stemming: a deployment's users may speak several).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:10:00
"""

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TRANSCRIPT_TYPES = "('user.transcript', 'assistant.transcript')"


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True))
    _backfill_connected_at()

    if op.get_bind().dialect.name == "sqlite":
        # rowid = the event's id; conversation_id narrows a search to the caller's own.
        op.execute(
            "CREATE VIRTUAL TABLE transcript_search USING fts5("
            "text, conversation_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2')"
        )
        op.execute(
            "CREATE TRIGGER transcript_search_insert AFTER INSERT ON events "
            f"WHEN new.type IN {TRANSCRIPT_TYPES} BEGIN "
            "INSERT INTO transcript_search (rowid, text, conversation_id) "
            "VALUES (new.id, json_extract(new.data, '$.text'), new.conversation_id); END"
        )
        op.execute(  # retention deletes events: their lines leave the index with them
            "CREATE TRIGGER transcript_search_delete AFTER DELETE ON events "
            f"WHEN old.type IN {TRANSCRIPT_TYPES} BEGIN "
            "DELETE FROM transcript_search WHERE rowid = old.id; END"
        )
        op.execute(
            "INSERT INTO transcript_search (rowid, text, conversation_id) "
            "SELECT id, json_extract(data, '$.text'), conversation_id FROM events "
            f"WHERE type IN {TRANSCRIPT_TYPES}"
        )
    else:
        op.execute(
            "CREATE INDEX ix_events_transcript_search ON events "
            "USING gin (to_tsvector('simple', data ->> 'text')) "
            f"WHERE type IN {TRANSCRIPT_TYPES}"
        )


def _backfill_connected_at() -> None:
    bind = op.get_bind()
    sessions = sa.table(
        "sessions", sa.column("id"), sa.column("connected_at", sa.DateTime(timezone=True))
    )
    states = bind.execute(
        sa.text(
            "SELECT session_id, ts, data FROM events WHERE type = 'session.state' "
            "AND CAST(data AS TEXT) LIKE '%connected%' ORDER BY session_id, seq"
        )  # the LIKE only narrows; the state is read from the JSON
    )
    first: dict[str, float] = {}
    for session_id, ts, data in states.tuples():
        value = data if isinstance(data, dict) else json.loads(str(data))
        if value.get("state") == "connected" and str(session_id) not in first:
            first[str(session_id)] = float(ts)
    for session_id, ts in first.items():
        bind.execute(
            sessions.update()
            .where(sessions.c.id == session_id)
            .values(connected_at=datetime.fromtimestamp(ts, UTC))
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS transcript_search_insert")
        op.execute("DROP TRIGGER IF EXISTS transcript_search_delete")
        op.execute("DROP TABLE IF EXISTS transcript_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_events_transcript_search")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("connected_at")
