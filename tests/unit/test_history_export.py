"""The Markdown export reads like the web app: each line at the time it began, in the
reader's time zone, words above the tool call and answer they caused."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.history import export_markdown
from shared.models import Conversation, EventRecord, VoiceSession

T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC).timestamp()


def _event(seq: int, at: float, type: str, **data: object) -> EventRecord:
    return EventRecord(
        session_id="s1", conversation_id="c1", seq=seq, ts=T0 + at, type=type, data=data
    )


def test_lines_at_their_start_in_the_readers_zone() -> None:
    conversation = Conversation(id="c1", user_id="u1", title="Flights", created_at=T0_DT)
    session = VoiceSession(
        id="s1", conversation_id="c1", user_id="u1", pool="server", transport="webrtc",
        profile="assistant", state="ended", reason="client_ended",
        connected_at=T0_DT, ended_at=datetime.fromtimestamp(T0 + 60, UTC),
    )  # fmt: skip
    started = datetime.fromtimestamp(T0 + 5, UTC).isoformat()
    answered = datetime.fromtimestamp(T0 + 8.5, UTC).isoformat()
    events = [
        _event(1, 8, "tool.started", name="send_to_nested"),
        _event(2, 9, "assistant.transcript", text="Searching now.", started=answered),
        # Transcribed last, spoken first (from 0:05).
        _event(3, 10, "user.transcript", text="Find flights to Oslo", started=started),
        _event(4, 20, "bot.stopped_speaking", duration_s=4.0),
    ]
    markdown = export_markdown(conversation, [session], events, "Europe/Oslo")
    assert "started 2026-11-29 09:00 (Europe/Oslo)" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert lines == [
        "- 09:00:05 **User:** Find flights to Oslo",
        "- 09:00:08 `tool.started` send_to_nested: ",
        "- 09:00:08 **Assistant:** Searching now.",
        "- 09:00:16 Bot spoke for 4.0 s",  # the turn's start: its end less its length
    ]
    assert "60 s connected" in markdown
    assert "- 08:00:05 **User:**" in export_markdown(conversation, [session], events)  # UTC


T0_DT = datetime.fromtimestamp(T0, UTC)


async def test_an_unknown_time_zone_is_refused(api) -> None:
    token = await api.token("zoe")
    created = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
    )
    cid = created.json()["conversation_id"]
    url = f"/api/conversations/{cid}/export?format=md"
    assert (
        await api.client.get(f"{url}&tz=Europe/Oslo", headers=api.auth(token))
    ).status_code == 200
    refused = await api.client.get(f"{url}&tz=Mars/Olympus", headers=api.auth(token))
    assert refused.status_code == 422
    assert refused.json()["detail"]["code"] == "invalid_request"


async def test_each_sessions_events_in_the_order_written_sessions_by_time(tmp_path) -> None:
    """A write retried across a Redis failover can carry an earlier time than the event
    written before it: within a session ``seq`` decides, between sessions the time."""
    from shared.history import conversation_events
    from shared.store import Store, migrate_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await migrate_async(url)
    store = Store(url)
    written = [  # (session, seq, seconds after T0)
        ("b", 1, 0.0), ("b", 2, 2.0), ("b", 3, 1.0),  # seq 3 was retried: an earlier time
        ("a", 1, 10.0), ("a", 2, 11.0),  # a later session, whose id sorts first
    ]  # fmt: skip
    async with store.session() as db:
        for sid, seq, at in written:
            db.add(EventRecord(session_id=sid, conversation_id="c1", seq=seq, ts=T0 + at, type="x"))
        await db.commit()
        events = await conversation_events(db, "c1")
    await store.aclose()
    assert [(e.session_id, e.seq) for e in events] == [
        ("b", 1),
        ("b", 2),
        ("b", 3),
        ("a", 1),
        ("a", 2),
    ]
