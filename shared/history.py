"""Reading a conversation back: its sessions, its events, and exports (JSON, Markdown).

Used by the API's history routes and by ``voicepool export``.
"""

from __future__ import annotations

import contextlib
import heapq
import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.models import Conversation, EventRecord, VoiceSession, as_utc

TRANSCRIPT_EVENTS = ("user.transcript", "assistant.transcript")
TRANSCRIPT_TYPES = "(" + ", ".join(f"'{t}'" for t in TRANSCRIPT_EVENTS) + ")"  # in SQL


async def conversation_sessions(db: AsyncSession, conversation_id: str) -> list[VoiceSession]:
    return list(
        (
            await db.exec(
                select(VoiceSession)
                .where(VoiceSession.conversation_id == conversation_id)
                .order_by(col(VoiceSession.created_at))
            )
        ).all()
    )


async def conversation_events(db: AsyncSession, conversation_id: str) -> list[EventRecord]:
    """A conversation's events: each session's in ``seq`` order, sessions interleaved by time.

    ``seq`` is the order a session's events were written in, the order its live
    stream had. ``ts`` is when the event happened, which a write retried across a
    Redis failover can put before the event written ahead of it; so time only
    decides between sessions.
    """
    rows = (
        await db.exec(
            select(EventRecord)
            .where(EventRecord.conversation_id == conversation_id)
            .order_by(col(EventRecord.session_id), col(EventRecord.seq))
        )
    ).all()
    by_session: dict[str, list[EventRecord]] = {}
    for row in rows:
        by_session.setdefault(row.session_id, []).append(row)
    return list(heapq.merge(*by_session.values(), key=lambda e: e.ts))


async def transcript_history(
    db: AsyncSession, conversation_id: str, limit: int
) -> list[dict[str, str]]:
    """The last ``limit`` transcript messages of a conversation, oldest first, as chat messages.

    Sent with a session that continues the conversation, so the assistant remembers.
    """
    if limit <= 0:
        return []
    rows = (
        await db.exec(
            select(EventRecord)
            .where(EventRecord.conversation_id == conversation_id)
            .where(col(EventRecord.type).in_(TRANSCRIPT_EVENTS))
            .order_by(col(EventRecord.ts).desc())
            .limit(limit)
        )
    ).all()
    return [
        {"role": "user" if r.type == "user.transcript" else "assistant", "content": r.data["text"]}
        for r in reversed(rows)
        if r.data.get("text")
    ]


SEARCH_TERMS_MAX = 8
SEARCH_HITS_MAX = 500


def search_terms(query: str) -> list[str]:
    """The words of a search, lowercased: each must occur (as a word or a word's start)."""
    return re.findall(r"\w+", query.lower())[:SEARCH_TERMS_MAX]


async def search_transcripts(db: AsyncSession, user_id: str, query: str) -> dict[str, str]:
    """The user's conversations whose transcript lines hold every word of ``query`` (or
    words starting so), most recent line first: conversation id → its latest such line.

    A real index, not a scan: SQLite's FTS5 (``transcript_search``, fed by a trigger on
    events) or a PostgreSQL GIN index over the lines' text (migration 0002).
    """
    terms = search_terms(query)
    if not terms:
        return {}
    if db.get_bind().dialect.name == "sqlite":
        statement = text(
            "SELECT s.conversation_id, s.text FROM transcript_search s "
            "JOIN conversations c ON c.id = s.conversation_id "
            "WHERE transcript_search MATCH :match AND c.user_id = :user "
            "ORDER BY s.rowid DESC LIMIT :hits"
        )
        # Each word quoted (FTS5 syntax in a user's words is just text) and a prefix.
        match = " ".join('"' + t.replace('"', '""') + '"*' for t in terms)
        params: dict[str, Any] = {"match": match}
    else:
        statement = text(
            "SELECT e.conversation_id, e.data ->> 'text' FROM events e "
            "JOIN conversations c ON c.id = e.conversation_id "
            f"WHERE e.type IN {TRANSCRIPT_TYPES} "
            "AND to_tsvector('simple', e.data ->> 'text') @@ to_tsquery('simple', :match) "
            "AND c.user_id = :user ORDER BY e.ts DESC LIMIT :hits"
        )
        params = {"match": " & ".join(f"{t}:*" for t in terms)}  # \w+ only: nothing to escape
    rows = await db.execute(statement, {**params, "user": user_id, "hits": SEARCH_HITS_MAX})
    found: dict[str, str] = {}
    for conversation_id, line in rows.tuples():
        found.setdefault(str(conversation_id), str(line))
    return found


async def sessions_by_conversation(
    db: AsyncSession, conversation_ids: list[str]
) -> dict[str, list[VoiceSession]]:
    """The sessions of several conversations, in one query."""
    grouped: dict[str, list[VoiceSession]] = {cid: [] for cid in conversation_ids}
    if not conversation_ids:
        return grouped
    rows = await db.exec(
        select(VoiceSession)
        .where(col(VoiceSession.conversation_id).in_(conversation_ids))
        .order_by(col(VoiceSession.created_at))
    )
    for session in rows.all():
        grouped[session.conversation_id].append(session)
    return grouped


def session_duration(session: VoiceSession) -> float:
    """Talk time: from the first time a client connected to the end (or now). A session
    nobody connected to (it expired, failed or timed out waiting) has none."""
    if session.connected_at is None:
        return 0.0
    end = as_utc(session.ended_at) if session.ended_at else datetime.now(UTC)
    return max((end - as_utc(session.connected_at)).total_seconds(), 0.0)


def export_json(
    conversation: Conversation, sessions: list[VoiceSession], events: list[EventRecord]
) -> dict[str, Any]:
    return {
        "conversation_id": conversation.id,
        "title": conversation.title,
        "created_at": as_utc(conversation.created_at).isoformat(),
        "sessions": [
            {
                "session_id": s.id,
                "profile": s.profile,
                "transport": s.transport,
                "state": s.state,
                "reason": s.reason,
                "created_at": as_utc(s.created_at).isoformat(),
                "ended_at": as_utc(s.ended_at).isoformat() if s.ended_at else None,
            }
            for s in sessions
        ],
        "events": [
            {
                "session_id": e.session_id,
                "seq": e.seq,
                "ts": e.ts,
                "type": e.type,
                "data": e.data,
            }
            for e in events
        ],
    }


def _clock(ts: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%H:%M:%S")


def _line_time(event: EventRecord) -> float:
    """When what the line tells happened: a transcript line when its words began (the
    event is written once they are transcribed), a turn when it started."""
    d = event.data
    if event.type in TRANSCRIPT_EVENTS and isinstance(d.get("started"), str):
        with contextlib.suppress(ValueError):
            started = datetime.fromisoformat(d["started"]).timestamp()
            if started <= event.ts:
                return started
    if event.type in ("user.turn_stopped", "bot.stopped_speaking"):
        return event.ts - float(d.get("duration_s") or 0)
    return event.ts


def _line(event: EventRecord) -> str | None:
    """One Markdown line per event worth reading; None for the ones that are noise."""
    d = event.data
    match event.type:
        case "session.state":
            return f"*{d.get('state')}* ({d.get('reason')})"
        case "user.turn_stopped":
            return f"User spoke for {d.get('duration_s', 0):.1f} s"
        case "bot.stopped_speaking":
            return f"Bot spoke for {d.get('duration_s', 0):.1f} s"
        case "user.transcript":
            return f"**User:** {d.get('text', '')}"
        case "assistant.transcript":
            cut = " *(interrupted)*" if d.get("interrupted") else ""
            return f"**Assistant:** {d.get('text', '')}{cut}"
        case "tool.started" | "tool.completed" | "tool.failed" | "tool.progress":
            return f"`{event.type}` {d.get('name', '')}: {d.get('summary') or d.get('error') or ''}"
        case "error":
            return f"**Error:** {d.get('message', '')}"
    return None


def export_markdown(
    conversation: Conversation,
    sessions: list[VoiceSession],
    events: list[EventRecord],
    zone: str = "UTC",
) -> str:
    """The conversation for people to read: each line at the time it began (the web app's
    times), in ``zone`` (an IANA name, e.g. the reader's own; UTC by default)."""
    tz: tzinfo = ZoneInfo(zone)
    title = conversation.title or "Conversation"
    started = as_utc(conversation.created_at).astimezone(tz).strftime("%Y-%m-%d %H:%M")
    out = [
        f"# {title}",
        "",
        f"Conversation `{conversation.id}`, started {started} ({zone}). "
        f"Times are when each line began, in {zone}.",
        "",
    ]
    by_session: dict[str, list[EventRecord]] = {}
    for event in events:
        by_session.setdefault(event.session_id, []).append(event)
    for number, session in enumerate(sessions, 1):
        out += [
            f"## Session {number} ({session.profile}, {session.transport})",
            "",
            f"Ended: {session.state} ({session.reason or 'n/a'}), "
            f"{session_duration(session):.0f} s connected.",
            "",
        ]
        lines = [(_line_time(e), e.seq, _line(e)) for e in by_session.get(session.id, [])]
        for at, _seq, line in sorted(lines, key=lambda x: (x[0], x[1])):
            if line:
                out.append(f"- {_clock(at, tz)} {line}")
        out.append("")
    return "\n".join(out)
