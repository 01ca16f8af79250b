"""Conversations: the caller's history, one conversation with its events, exports."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlmodel import col, select

from api.deps import AppState, CurrentUser, OwnedConversation, SessionDep, StateDep
from api.errors import ApiError
from api.schemas import ConversationDetail, ConversationSummary, EventOut, SessionBrief
from api.services import ownership
from shared import keys
from shared.history import (
    conversation_events,
    conversation_sessions,
    export_json,
    export_markdown,
    search_transcripts,
    session_duration,
    sessions_by_conversation,
)
from shared.models import Conversation, as_utc

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


@router.get("", response_model=list[ConversationSummary])
async def list_conversations(
    user: CurrentUser,
    db: SessionDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Only conversations whose transcript holds every word (or a word "
            "starting so): full-text search, case-insensitive.",
        ),
    ] = None,
) -> list[ConversationSummary]:
    """The caller's own conversations, newest first."""
    await ownership.store_callers_live(state, db, user)  # one begun just now included
    query = select(Conversation).where(Conversation.user_id == user.id)
    matches: dict[str, str] = {}
    if q is not None and q.strip():
        matches = await search_transcripts(db, user.id, q)
        if not matches:
            return []
        query = query.where(col(Conversation.id).in_(list(matches)))
    rows = (
        await db.exec(
            query.order_by(col(Conversation.updated_at).desc()).offset(offset).limit(limit)
        )
    ).all()
    grouped = await sessions_by_conversation(db, [r.id for r in rows])
    live = await _live_conversations(state, user.id)
    summaries = []
    for row in rows:
        sessions = grouped[row.id]
        summaries.append(
            ConversationSummary(
                conversation_id=row.id,
                title=row.title,
                created_at=as_utc(row.created_at),
                updated_at=as_utc(row.updated_at),
                session_count=len(sessions),
                connected_sessions=sum(s.connected_at is not None for s in sessions),
                duration_s=round(sum(session_duration(s) for s in sessions), 3),
                profile=sessions[-1].profile if sessions else None,
                live=row.id in live,
                match=_clip(matches[row.id]) if row.id in matches else None,
            )
        )
    return summaries


MATCH_CHARS = 160


def _clip(line: str) -> str:
    return line if len(line) <= MATCH_CHARS else line[: MATCH_CHARS - 1].rstrip() + "…"


async def _live_conversations(state: AppState, user_id: str) -> set[str]:
    """The conversations of the user's live sessions (from Redis, where liveness is)."""
    session_ids = await cast("Awaitable[set[str]]", state.redis.smembers(keys.user_live(user_id)))
    if not session_ids:
        return set()
    async with state.redis.pipeline(transaction=False) as pipe:
        for sid in session_ids:
            pipe.hget(keys.session(sid), "conversation_id")
        return {cid for cid in await pipe.execute() if cid}


@router.get("/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(row: OwnedConversation, db: SessionDep) -> ConversationDetail:
    sessions = await conversation_sessions(db, row.id)
    events = await conversation_events(db, row.id)
    return ConversationDetail(
        conversation_id=row.id,
        title=row.title,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        session_count=len(sessions),
        duration_s=round(sum(session_duration(s) for s in sessions), 3),
        sessions=[
            SessionBrief(
                session_id=s.id,
                state=s.state,
                reason=s.reason,
                profile=s.profile,
                transport=s.transport,
                created_at=as_utc(s.created_at),
                ended_at=as_utc(s.ended_at) if s.ended_at else None,
            )
            for s in sessions
        ],
        events=[
            EventOut(session_id=e.session_id, seq=e.seq, ts=e.ts, type=e.type, data=e.data)
            for e in events
        ],
    )


@router.get("/{conversation_id}/export")
async def export_conversation(
    row: OwnedConversation,
    db: SessionDep,
    format: Annotated[Literal["json", "md"], Query()] = "json",
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="IANA time zone for the Markdown's times (the web app sends the "
            "reader's own); UTC by default.",
        ),
    ] = "UTC",
) -> Response:
    sessions = await conversation_sessions(db, row.id)
    events = await conversation_events(db, row.id)
    filename = f"conversation-{row.id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format == "md":
        try:
            ZoneInfo(tz)
        except (ValueError, ZoneInfoNotFoundError):
            raise ApiError(422, "invalid_request", f"unknown time zone {tz!r}") from None
        return PlainTextResponse(
            export_markdown(row, sessions, events, tz), media_type="text/markdown", headers=headers
        )
    return JSONResponse(export_json(row, sessions, events), headers=headers)
