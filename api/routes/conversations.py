"""Conversations: the caller's history, one conversation with its events, exports."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlmodel import col, select

from api.deps import CurrentUser, OwnedConversation, SessionDep
from api.schemas import ConversationDetail, ConversationSummary, EventOut, SessionBrief
from shared.history import (
    conversation_events,
    conversation_sessions,
    export_json,
    export_markdown,
    session_duration,
    sessions_by_conversation,
)
from shared.models import Conversation, as_utc

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


@router.get("", response_model=list[ConversationSummary])
async def list_conversations(
    user: CurrentUser,
    db: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[ConversationSummary]:
    """The caller's own conversations, newest first."""
    rows = (
        await db.exec(
            select(Conversation)
            .where(Conversation.user_id == user.id)
            .order_by(col(Conversation.updated_at).desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    grouped = await sessions_by_conversation(db, [r.id for r in rows])
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
                duration_s=round(sum(session_duration(s) for s in sessions), 3),
            )
        )
    return summaries


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
) -> Response:
    sessions = await conversation_sessions(db, row.id)
    events = await conversation_events(db, row.id)
    filename = f"conversation-{row.id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format == "md":
        return PlainTextResponse(
            export_markdown(row, sessions, events), media_type="text/markdown", headers=headers
        )
    return JSONResponse(export_json(row, sessions, events), headers=headers)
