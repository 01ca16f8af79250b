"""Reading a session's live event stream: waiting for a state, and the SSE feed.

The per-session Redis stream is the source while it exists (the whole session
plus ``stream_retention`` after it ends); after that, the stored events in
SQL, which carry the same ids, so ``Last-Event-ID`` keeps working.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sse_starlette import ServerSentEvent

from api.deps import AppState
from api.fanout import after as after_id
from api.fanout import next_batch
from shared import keys
from shared.events import Event, EventType
from shared.lifecycle import FINAL_STATES
from shared.models import EventRecord, VoiceSession

READ_BLOCK_MS = 15000
READ_COUNT = 200


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def wait_for_state(
    state: AppState, session_id: str, targets: Collection[str], *, timeout: float
) -> str | None:
    """Block until the session's state is one of ``targets`` or ``timeout`` passes, and
    return the state it is in then (``wait_for_state_event``)."""
    current, _data = await wait_for_state_event(state, session_id, targets, timeout=timeout)
    return current


async def wait_for_state_event(
    state: AppState,
    session_id: str,
    targets: Collection[str],
    *,
    timeout: float,
    since: tuple[str, str] | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """Block until the session's state is one of ``targets`` or ``timeout`` passes.

    Returns the state it is in then, and the data of the state event that brought it
    (``{}`` if it was so already when the wait began, and other events came since that
    one). Woken by the session's own events, not polled: the state and the stream's
    last entry are read together (a state changes in the same atomic step that adds its
    event), then each ``session.state`` event read after that entry is the state from
    then on. One round trip per wake, where reading the hash again after each wake took
    two: waiting from ``queued`` to ``ready`` takes three round trips instead of seven.

    ``since``: (a state, the id of the event that brought it), known to the caller (the
    session's creator: ``LiveSessions.create``); the wait then reads on from that event,
    with no first read: a round trip fewer, and none between the create and a worker's
    take of the session (which makes it ``starting`` and ``ready`` in one step, one wake).
    """
    deadline = time.monotonic() + timeout
    stream = keys.session_events(session_id)
    current: str | None
    data: dict[str, Any] = {}
    if since is not None:
        current, last_id = since
    else:
        current, last_id, data = await _state_and_last_event(state, session_id)
    while current is not None and current not in targets:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        reply = await state.redis.xread({stream: last_id}, count=READ_COUNT, block=remaining_ms)
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                last_id = entry_id
                if fields.get("type") == EventType.SESSION_STATE:
                    data = json.loads(fields["data"])
                    current = data.get("state", current)
    return (None if current is None else str(current)), data


async def _state_and_last_event(
    state: AppState, session_id: str
) -> tuple[str | None, str, dict[str, Any]]:
    """The session's state, its stream's last entry id ('0-0': none), and that entry's data
    if it is the event that brought the state ({} if other events came since)."""
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.hget(keys.session(session_id), "state")
        pipe.xrevrange(keys.session_events(session_id), count=1)
        current, last = await pipe.execute()
    if not last:
        return current, "0-0", {}
    last_id, fields = last[0]
    if fields.get("type") != EventType.SESSION_STATE:
        return current, last_id, {}
    data = json.loads(fields["data"])  # the state's own event, if nothing came since
    return current, last_id, data if data.get("state") == current else {}


@dataclass(frozen=True)
class Rendered:
    """One event, encoded for the wire once however many subscribers send it."""

    id: str
    wire: bytes
    final: bool


def _sse(event: Event) -> bytes:
    return ServerSentEvent(
        id=event.stream_id,
        event=event.type,
        data=json.dumps(event.model_dump(exclude={"stream_id"})),
    ).encode()


def _is_final(event: Event) -> bool:
    return event.type == EventType.SESSION_STATE and event.data.get("state") in FINAL_STATES


def render(entry_id: str, fields: dict[str, str]) -> Rendered:
    event = Event.from_stream_fields(fields, entry_id)
    return Rendered(entry_id, _sse(event), _is_final(event))


async def session_event_stream(
    state: AppState, row: VoiceSession, after: str
) -> AsyncGenerator[bytes, None]:
    """The session's events after ``after``, live, until its final state."""
    stream = keys.session_events(row.id)
    if not await state.redis.exists(stream):
        async for event in _stored_events(state, row, after):
            yield event
        return
    last_id = after
    async with state.fanout.subscribe(stream) as live:
        # Backlog first (live entries queue up meanwhile), then the live queue.
        while True:
            start = "-" if last_id == "0-0" else f"({last_id}"
            backlog = await state.redis.xrange(stream, min=start, count=READ_COUNT)
            for entry_id, fields in backlog:
                last_id = entry_id
                item = render(entry_id, fields)
                yield item.wire
                if item.final:
                    return
            if len(backlog) < READ_COUNT:
                break
        caught_up = False  # once past the backlog, the hub's order is the stream's order
        while (batch := await next_batch(live)) is not None:
            wires: list[bytes] = []
            for item in batch:
                if not caught_up and not after_id(item.id, last_id):
                    continue  # already sent from the backlog
                caught_up = True
                last_id = item.id
                wires.append(item.wire)
                if item.final:
                    yield b"".join(wires)
                    return
            if wires:
                yield b"".join(wires)
    # The live stream expired under us: the rest is in SQL.
    async for event in _stored_events(state, row, last_id):
        yield event


async def _stored_events(state: AppState, row: VoiceSession, after: str) -> AsyncIterator[bytes]:
    """Replay from SQL once the live stream has expired (or never existed)."""
    floor = _parse_id(after)
    async with state.store.session() as db:
        records = (
            await db.exec(
                select(EventRecord)
                .where(EventRecord.session_id == row.id)
                .order_by(col(EventRecord.seq))
            )
        ).all()
    for record in records:
        if record.stream_id and _parse_id(record.stream_id) <= floor:
            continue
        yield _sse(
            Event(
                session_id=record.session_id,
                conversation_id=record.conversation_id,
                seq=record.seq,
                ts=record.ts,
                type=record.type,
                data=record.data,
                stream_id=record.stream_id,
            )
        )
