"""Reading a conversation back: its sessions, its events, and exports (JSON, Markdown).

Used by the API's history routes and by ``voicepool export``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.models import Conversation, EventRecord, VoiceSession, as_utc


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
    return list(
        (
            await db.exec(
                select(EventRecord)
                .where(EventRecord.conversation_id == conversation_id)
                .order_by(col(EventRecord.ts), col(EventRecord.session_id), col(EventRecord.seq))
            )
        ).all()
    )


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
            .where(col(EventRecord.type).in_(("user.transcript", "assistant.transcript")))
            .order_by(col(EventRecord.ts).desc())
            .limit(limit)
        )
    ).all()
    return [
        {"role": "user" if r.type == "user.transcript" else "assistant", "content": r.data["text"]}
        for r in reversed(rows)
        if r.data.get("text")
    ]


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
    if session.ready_at is None:
        return 0.0
    end = as_utc(session.ended_at) if session.ended_at else datetime.now(UTC)
    return max((end - as_utc(session.ready_at)).total_seconds(), 0.0)


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


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


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
    conversation: Conversation, sessions: list[VoiceSession], events: list[EventRecord]
) -> str:
    title = conversation.title or "Conversation"
    started = as_utc(conversation.created_at).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# {title}", "", f"Conversation `{conversation.id}`, started {started}.", ""]
    by_session: dict[str, list[EventRecord]] = {}
    for event in events:
        by_session.setdefault(event.session_id, []).append(event)
    for number, session in enumerate(sessions, 1):
        out += [
            f"## Session {number} ({session.profile}, {session.transport})",
            "",
            f"Ended: {session.state} ({session.reason or 'n/a'}), "
            f"{session_duration(session):.0f} s live.",
            "",
        ]
        for event in by_session.get(session.id, []):
            line = _line(event)
            if line:
                out.append(f"- {_clock(event.ts)} {line}")
        out.append("")
    return "\n".join(out)
