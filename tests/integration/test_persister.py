"""The persister against a real redis-server and SQLite: exactly once, whatever crashes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, func, select

from api import retention
from api.persister import Persister
from harness.postgres import PostgresServer
from harness.waiting import eventually
from shared import keys
from shared.history import search_transcripts
from shared.lifecycle import Reason
from shared.live import LiveSessions
from shared.models import Conversation, EventRecord, User, VoiceSession, as_utc
from shared.settings import Settings
from shared.store import Store, migrate_async
from voicepool.cli import backup_database


class Crash(Exception):
    """Stands in for the process dying at that point."""


@pytest.fixture
async def store(database_url: str, request: pytest.FixtureRequest):
    """The store on SQLite and on PostgreSQL: every test here runs against both."""
    url = Settings(database_url=database_url).sqlalchemy_url
    await migrate_async(url)
    store = Store(url)
    if url.startswith("postgresql"):  # for tests that make another database on it
        store.postgres_server = request.getfixturevalue("postgres_server")  # type: ignore[attr-defined]
    async with store.session() as db:
        db.add(User(id="u1", name="u1"))
        await db.flush()
        db.add(Conversation(id="c1", user_id="u1"))
        await db.flush()
        db.add(
            VoiceSession(
                id="s1", conversation_id="c1", user_id="u1", pool="server",
                transport="webrtc", profile="echo",
            )
        )  # fmt: skip
        await db.commit()
    yield store
    await store.aclose()


async def _publish_session(live: LiveSessions, events: int) -> int:
    """A whole session's worth of events: queued … ended. Returns how many were published."""
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    await live.pick_up("s1", "w1")
    for i in range(events):
        assert await live.publish("s1", "user.turn_stopped", {"turn": i})
    await live.move("s1", "finish_own", Reason.CLIENT_ENDED, worker_id="w1")
    return events + 3


async def _stored(store: Store) -> list[tuple[int, str]]:
    async with store.session() as db:
        rows = (await db.exec(select(EventRecord).order_by(col(EventRecord.seq)))).all()
    return [(r.seq, r.type) for r in rows]


async def _drain(persister: Persister) -> None:
    while await persister.step(block_ms=50):
        pass


class CrashAfterCommit(Persister):
    async def acknowledge(self, entry_ids):
        raise Crash


class CrashBeforeCommit(Persister):
    async def store_entries(self, entries):
        raise Crash


async def test_what_follows_the_first_event_within_the_gather_is_one_batch(redis, store) -> None:
    """A session's start publishes several events within a few ms: one transaction, not
    one per event; and a full batch is written at once, without gathering."""
    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    persister = Persister(redis, store, consumer="p", batch_size=4)
    await persister.ensure_group()
    gathering = asyncio.create_task(persister.step(block_ms=5000, gather_s=1.0))
    await asyncio.sleep(0.2)  # the first entry is read; the gather has begun
    assert not gathering.done()
    await live.pick_up("s1", "w1")
    assert await live.publish("s1", "user.turn_stopped", {"turn": 0})
    assert await gathering == 3  # queued, starting and the turn: stored together
    assert [seq for seq, _ in await _stored(store)] == [1, 2, 3]

    for turn in range(1, 5):
        assert await live.publish("s1", "user.turn_stopped", {"turn": turn})
    started = asyncio.get_running_loop().time()
    assert await persister.step(block_ms=50, gather_s=5.0) == 4  # a full batch: no wait
    assert asyncio.get_running_loop().time() - started < 2.0
    assert [seq for seq, _ in await _stored(store)] == list(range(1, 8))


@pytest.mark.parametrize("crashing", [CrashAfterCommit, CrashBeforeCommit])
async def test_every_event_is_stored_exactly_once_after_a_crash(redis, store, crashing) -> None:
    live = LiveSessions(redis)
    published = await _publish_session(live, events=120)

    first = crashing(redis, store, consumer="first", batch_size=50)
    await first.ensure_group()
    with pytest.raises(Crash):
        await first.step(block_ms=50)
    pending = await redis.xpending(keys.INGEST_STREAM, keys.PERSISTER_GROUP)
    assert pending["pending"] == 50  # read, never acknowledged

    # A new persister (after the restart) adopts the abandoned entries, then reads on.
    second = Persister(redis, store, consumer="second", batch_size=50, claim_idle_ms=0)
    await _drain(second)
    stored = await _stored(store)
    assert [seq for seq, _ in stored] == list(range(1, published + 1))
    assert (await redis.xpending(keys.INGEST_STREAM, keys.PERSISTER_GROUP))["pending"] == 0

    async with store.session() as db:
        session = await db.get(VoiceSession, "s1")
        assert (session.state, session.reason, session.worker_id) == ("ended", "client_ended", "w1")

    # Replaying everything again is a no-op.
    await second.store_entries(await redis.xrange(keys.INGEST_STREAM))
    assert await _stored(store) == stored


async def test_a_session_is_stored_from_its_events_whatever_their_order(redis, store) -> None:
    """A session's create writes no rows: each of its state events carries them. Entries
    met in any order (adopted late from a crashed persister, or shared out among many)
    leave the row in its last state, its new conversation made, nothing twice."""
    live = LiveSessions(redis)
    fields = {"conversation_id": "c2", "pool": "server", "transport": "websocket",
              "profile": "echo", "created_ts": "1700000000.25"}  # fmt: skip
    await live.create("s2", "u1", fields)
    await live.pick_up("s2", "w1")
    assert await live.publish("s2", "user.turn_stopped", {"turn": 0})
    await live.move("s2", "finish_own", Reason.CLIENT_ENDED, worker_id="w1")
    await live.create("s3", "gone-user", {**fields, "conversation_id": "c3"})  # no such user

    entries = await redis.xrange(keys.INGEST_STREAM)
    persister = Persister(redis, store, consumer="p")
    for half in (entries[:1:-1], entries[1::-1], entries):  # the last ones first, then again
        await persister.store_entries(half)

    async with store.session() as db:
        session = await db.get(VoiceSession, "s2")
        assert session is not None
        assert (session.state, session.state_seq) == ("ended", 4)
        assert (session.user_id, session.conversation_id) == ("u1", "c2")
        assert (session.transport, session.profile) == ("websocket", "echo")
        assert as_utc(session.created_at).timestamp() == 1700000000.25
        conversation = await db.get(Conversation, "c2")
        assert conversation is not None and conversation.user_id == "u1"
        assert await db.get(VoiceSession, "s3") is None  # its events are kept all the same
        assert await db.get(Conversation, "c3") is None
    stored = await _stored(store)
    assert sorted(seq for seq, _ in stored) == [1, 1, 2, 3, 4]  # s2's four, s3's queued


async def test_a_conversation_is_titled_by_its_first_user_words(redis, store) -> None:
    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1"})
    await live.publish("s1", "user.transcript", {"text": "  Book   a table for two tonight "})
    await live.publish("s1", "user.transcript", {"text": "Make it three"})
    persister = Persister(redis, store, consumer="p")
    await persister.ensure_group()
    await _drain(persister)
    async with store.session() as db:
        assert (await db.get(Conversation, "c1")).title == "Book a table for two tonight"


async def test_trimming_never_drops_an_unacknowledged_entry(redis, store) -> None:
    live = LiveSessions(redis)
    published = await _publish_session(live, events=40)
    crashed = CrashAfterCommit(redis, store, consumer="crashed", batch_size=10)
    await crashed.ensure_group()
    with pytest.raises(Crash):
        await crashed.step(block_ms=50)  # 10 entries delivered, not acknowledged

    healthy = Persister(redis, store, consumer="healthy", batch_size=100, claim_idle_ms=60_000)
    await healthy.step(block_ms=50)  # stores and acknowledges the rest
    await healthy.trim()
    # The 10 unacknowledged entries (the oldest) must all survive trimming.
    assert await redis.xlen(keys.INGEST_STREAM) >= 10
    pending = await redis.xpending_range(keys.INGEST_STREAM, keys.PERSISTER_GROUP, "-", "+", 100)
    remaining = {entry_id for entry_id, _ in await redis.xrange(keys.INGEST_STREAM)}
    assert {p["message_id"] for p in pending} <= remaining

    restarted = Persister(redis, store, consumer="healthy", batch_size=100, claim_idle_ms=0)
    await _drain(restarted)
    await restarted.trim()
    assert await redis.xlen(keys.INGEST_STREAM) <= 1  # only the last delivered entry is kept
    async with store.session() as db:
        count = (await db.exec(select(func.count()).select_from(EventRecord))).one()
    assert count == published


async def test_a_failed_batch_is_stored_again_at_once_not_adopted_later(redis, store) -> None:
    """The database refuses a few batches (a full disk): the same persister stores what it
    read as soon as the database takes writes again, without waiting to adopt its own
    entries as abandoned."""
    live = LiveSessions(redis)
    published = await _publish_session(live, events=120)

    class DiskFull(Persister):
        refusals = 2

        async def store_entries(self, entries):
            if self.refusals:
                self.refusals -= 1
                raise OSError("database or disk is full")
            await super().store_entries(entries)

    persister = DiskFull(redis, store, consumer="p", batch_size=50, claim_idle_ms=3_600_000)
    await persister.ensure_group()
    for _ in range(2):  # as run() does: a failed step leaves its entries pending
        with pytest.raises(OSError):
            await persister.step(block_ms=50)
        persister._retry_own = True
    # The second attempt was the same batch again, not a new one read on top of it.
    assert (await redis.xpending(keys.INGEST_STREAM, keys.PERSISTER_GROUP))["pending"] == 50
    await _drain(persister)  # claim_idle_ms of an hour: nothing is adopted, all is retried
    assert [seq for seq, _ in await _stored(store)] == list(range(1, published + 1))
    assert (await redis.xpending(keys.INGEST_STREAM, keys.PERSISTER_GROUP))["pending"] == 0


async def test_a_recovered_call_keeps_its_start_and_is_counted_once(redis, store) -> None:
    from api import metrics

    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    await live.pick_up("s1", "w1")
    await live.move("s1", "mark_ready", Reason.PIPELINE_READY, worker_id="w1")
    persister = Persister(redis, store, consumer="p")
    await persister.ensure_group()
    await _drain(persister)
    async with store.session() as db:
        first_ready = (await db.get(VoiceSession, "s1")).ready_at
    labels = {"pool": "server", "transport": "webrtc", "profile": "echo"}
    started = metrics.SESSIONS_STARTED.labels(**labels)._value.get()
    moved = metrics.SESSIONS_RECOVERING.labels(**labels, reason="worker_lost")._value.get()

    await live.move("s1", "recover", Reason.WORKER_LOST)
    await live.pick_up("s1", "w2")
    await live.move("s1", "mark_ready", Reason.RECOVERED, worker_id="w2")
    await _drain(persister)
    async with store.session() as db:
        row = await db.get(VoiceSession, "s1")
        db.expunge_all()
    assert (row.state, row.reason, row.worker_id) == ("ready", "recovered", "w2")
    assert row.ready_at == first_ready  # the same call: it started when it first was ready
    assert metrics.SESSIONS_STARTED.labels(**labels)._value.get() == started
    assert (
        metrics.SESSIONS_RECOVERING.labels(**labels, reason="worker_lost")._value.get() == moved + 1
    )


async def test_transcripts_are_searchable_and_talk_time_starts_at_connect(redis, store) -> None:
    """Stored lines are found by full-text search (SQLite FTS5, PostgreSQL GIN), only the
    owner's, once each even after a replay; talk time counts from the first connect."""
    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    await live.pick_up("s1", "w1")
    await live.move("s1", "mark_ready", Reason.PIPELINE_READY, worker_id="w1")
    await live.move("s1", "connect", Reason.CLIENT_CONNECTED, worker_id="w1")
    await live.publish("s1", "user.transcript", {"text": "Find flights to Oslo, please"})
    await live.publish("s1", "assistant.transcript", {"text": "The team found three flights."})
    await live.publish("s1", "user.turn_stopped", {"turn": 1, "text": "not a transcript: flights"})
    await live.move("s1", "finish_own", Reason.CLIENT_ENDED, worker_id="w1")
    persister = Persister(redis, store, consumer="p", batch_size=50)
    await persister.ensure_group()
    await _drain(persister)
    await persister.store_entries(await redis.xrange(keys.INGEST_STREAM))  # a replay

    async with store.session() as db:
        assert await search_transcripts(db, "u1", "OSLO fli") == {
            "c1": "Find flights to Oslo, please"
        }
        # Latest matching line first; every word must match (a word's start is enough).
        latest = "The team found three flights."
        assert await search_transcripts(db, "u1", "flight") == {"c1": latest}
        assert await search_transcripts(db, "u1", "oslo tromsø") == {}
        assert await search_transcripts(db, "u2", "oslo") == {}  # not theirs
        # The search's own syntax in a user's words is just words.
        assert await search_transcripts(db, "u1", 'oslo" OR "* NEAR(') == {}
        assert await search_transcripts(db, "u1", " ?! ") == {}
        session = await db.get(VoiceSession, "s1")
        assert session is not None and session.connected_at is not None
        assert session.ready_at is not None and session.connected_at >= session.ready_at


async def _conversation(
    store: Store, cid: str, *, days_old: float, state: str = "ended", words: str = ""
) -> None:
    """A conversation of u1 last touched ``days_old`` ago, with one session in ``state``
    (and a transcript line of ``words``)."""
    at = datetime.now(UTC) - timedelta(days=days_old)
    async with store.session() as db:
        db.add(Conversation(id=cid, user_id="u1", created_at=at, updated_at=at))
        await db.flush()
        db.add(
            VoiceSession(
                id=f"s-{cid}", conversation_id=cid, user_id="u1", pool="server",
                transport="webrtc", profile="echo", state=state,
            )
        )  # fmt: skip
        await db.flush()
        if words:
            db.add(
                EventRecord(
                    session_id=f"s-{cid}", conversation_id=cid, seq=1, ts=at.timestamp(),
                    type="user.transcript", data={"text": words},
                )
            )  # fmt: skip
        await db.commit()


async def test_retention_deletes_old_conversations_but_never_a_live_one(store) -> None:
    await _conversation(store, "old", days_old=40, words="the old flight to Oslo")
    await _conversation(store, "old-live", days_old=40, state="connected", words="Oslo live")
    await _conversation(store, "recent", days_old=2, words="a recent Oslo trip")
    async with store.session() as db:
        assert set(await search_transcripts(db, "u1", "oslo")) == {"old", "old-live", "recent"}

    assert await retention.sweep(store, days=30) == 1
    assert await retention.sweep(store, days=30) == 0  # nothing left to delete
    async with store.session() as db:
        left = set((await db.exec(select(Conversation.id))).all())
        assert left == {"c1", "old-live", "recent"}
        assert await db.get(VoiceSession, "s-old") is None
        events = await db.exec(select(EventRecord).where(EventRecord.conversation_id == "old"))
        assert events.all() == []
        # Its lines left the search with it.
        assert set(await search_transcripts(db, "u1", "oslo")) == {"old-live", "recent"}


async def test_a_backup_taken_while_running_restores_everything(store, tmp_path) -> None:
    await _conversation(store, "kept", days_old=1, words="remember the Oslo flights")
    settings = Settings(database_url=store.url)
    backup = tmp_path / "voicepool.backup"
    said = await asyncio.to_thread(backup_database, settings, str(backup))
    assert str(backup) in said and backup.stat().st_size > 0

    if store.url.startswith("sqlite"):
        restored_url = f"sqlite+aiosqlite:///{backup}"
    else:  # pg_restore into a fresh database, as an operator would
        server: PostgresServer = store.postgres_server
        plain = server.create_database()
        restore = ["pg_restore", "--no-owner", "--dbname", plain, str(backup)]
        await asyncio.to_thread(subprocess.run, restore, check=True)
        restored_url = Settings(database_url=plain).sqlalchemy_url
    restored = Store(restored_url)
    try:
        async with restored.session() as db:
            assert (await db.get(Conversation, "kept")) is not None
            assert (await db.get(VoiceSession, "s-kept")) is not None
            found = await search_transcripts(db, "u1", "oslo flights")
            assert found == {"kept": "remember the Oslo flights"}
    finally:
        await restored.aclose()


async def test_a_redis_that_restarted_empty_gets_its_group_back_and_events_are_stored(
    redis, store
) -> None:
    """A Redis without persistence comes back with neither the ingest stream nor the
    persister's group: the persister makes the group again instead of failing forever."""
    persister = Persister(redis, store, consumer="p")
    running = asyncio.create_task(persister.run())
    try:
        live = LiveSessions(redis)
        await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
        await eventually(lambda: _stored(store), timeout=10)  # queued, stored
        await redis.flushall()  # restarted empty
        # Made again from scratch: its queued event has the same seq (stored once), then
        # starting is new.
        await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
        await live.pick_up("s1", "w1")

        async def both_stored() -> bool:
            assert [seq for seq, _ in await _stored(store)] == [1, 2]
            return True

        await eventually(both_stored, timeout=15)  # the retry after NOGROUP is 1 s away
        assert not running.done()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
