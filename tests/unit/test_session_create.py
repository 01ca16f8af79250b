"""Creating a session writes nothing to SQL: it goes live in Redis, and the persister
stores its rows with its first events. A store that refuses them loses nothing, and a
request about a live session reads Redis, not SQL (the app in-process, real Redis and
SQLite)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import event, text

from api.connect import owner_connect_when_ready
from api.services import ownership
from harness.waiting import eventually
from shared import keys, ws_tokens
from shared.lifecycle import OWNER_CONNECT
from shared.models import Conversation, VoiceSession

REFUSE_SESSIONS = """
CREATE TRIGGER refuse_sessions BEFORE INSERT ON sessions
BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END
"""


async def _sql(api, statement: str) -> None:
    async with api.state.store.session() as db:
        await db.execute(text(statement))
        await db.commit()


async def _stored(api, session_id: str) -> VoiceSession | None:
    async with api.state.store.session() as db:
        return await db.get(VoiceSession, session_id)


async def test_a_store_that_refuses_rows_loses_nothing_of_a_session(make_api, redis) -> None:
    async with make_api(max_sessions_per_user=1) as api:
        alice = api.auth(await api.token("alice"))
        await _sql(api, REFUSE_SESSIONS)

        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        assert created.status_code == 202, created.text
        session_id = created.json()["session_id"]
        assert await redis.zcard(keys.queue("server")) == 1
        # Its owner sees it and ends it while the store is away: from Redis.
        seen = await api.client.get(f"/api/sessions/{session_id}", headers=alice)
        assert seen.status_code == 200 and seen.json()["status"] == "queued", seen.text
        ended = await api.client.delete(f"/api/sessions/{session_id}", headers=alice)
        assert ended.status_code == 200 and ended.json()["status"] == "cancelled", ended.text
        assert await _stored(api, session_id) is None

        # Once the store takes rows again, the persister stores the row, its end, its events.
        await _sql(api, "DROP TRIGGER refuse_sessions")

        async def stored() -> tuple[str, int] | None:
            row = await _stored(api, session_id)
            return (row.state, row.state_seq) if row and row.state_seq == 2 else None

        assert await eventually(stored, timeout=15, what="the row stored") == ("cancelled", 2)
        async with api.state.store.session() as db:
            conversation = await db.get(Conversation, created.json()["conversation_id"])
            row = await db.get(VoiceSession, session_id)
            assert row is not None and row.transport == "websocket"
            assert conversation is not None and conversation.user_id == row.user_id
            kept = await db.exec(text("SELECT seq FROM events WHERE session_id = :s ORDER BY seq"),
                                 params={"s": session_id})  # fmt: skip
            assert [r[0] for r in kept.all()] == [1, 2]
        # And her one session's slot is free: the next one starts.
        again = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                      headers=alice)  # fmt: skip
        assert again.status_code == 202, again.text


async def test_the_persister_stores_the_state_of_a_session_created_at_once(make_api) -> None:
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        session_id = created.json()["session_id"]
        ended = await api.client.delete(f"/api/sessions/{session_id}", headers=alice)
        assert ended.json()["status"] == "cancelled"

        async def stored() -> tuple[str, int] | None:
            row = await _stored(api, session_id)
            return (row.state, row.state_seq) if row and row.state_seq == 2 else None

        assert await eventually(stored, timeout=10, what="the cancel stored") == ("cancelled", 2)


async def test_a_live_session_is_read_and_ended_with_no_sql(make_api, redis) -> None:
    """Whose a live session is, and what state it is in, come from its live hash: its
    owner reads it, connects to it and ends it with no SQL statement, while the persister
    holds the store's write lock; anyone else gets 404 as for no session, an admin may
    look; once Redis no longer holds it, its stored row answers."""
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        bob = api.auth(await api.token("bob"))
        admin = api.auth(await api.token("root", role="admin"))
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        session_id = created.json()["session_id"]
        for caller in (alice, bob, admin):  # each one's token, cached as a first use does
            assert (await api.client.get("/api/me", headers=caller)).status_code == 200

        statements: list[str] = []
        engine = api.state.store.engine.sync_engine

        def note(_conn, _cursor, statement: str, *_args) -> None:
            statements.append(statement)

        url = f"/api/sessions/{session_id}"

        async def calls() -> None:
            seen = await api.client.get(url, headers=alice)
            assert seen.status_code == 200 and seen.json()["status"] == "queued", seen.text
            connect = await api.client.post(f"{url}/connect", headers=alice)
            assert connect.status_code == 409, connect.text  # queued: no worker's yet
            assert connect.json()["detail"]["code"] == "not_ready"
            for method, path in (("GET", url), ("DELETE", url), ("POST", f"{url}/connect")):
                refused = await api.client.request(method, path, headers=bob)
                assert refused.status_code == 404, (method, path, refused.text)
                assert refused.json()["detail"]["code"] == "session_not_found"
            looked = await api.client.get(url, headers=admin)
            assert looked.status_code == 200 and looked.json()["connect"] is None
            ended = await api.client.delete(url, headers=alice)
            assert ended.status_code == 200 and ended.json()["status"] == "cancelled"

        async with api.state.store.writing():
            event.listen(engine, "before_cursor_execute", note)
            try:  # a request that waited for the lock would wait for good
                await asyncio.wait_for(calls(), timeout=10)
            finally:
                event.remove(engine, "before_cursor_execute", note)
        assert statements == []

        async def stored() -> str | None:
            row = await _stored(api, session_id)
            return row.state if row and row.state_seq == 2 else None

        assert await eventually(stored, timeout=10, what="the cancel stored") == "cancelled"
        await redis.delete(keys.session(session_id))  # as once its live record is gone
        later = await api.client.get(url, headers=alice)
        assert later.status_code == 200 and later.json()["status"] == "cancelled", later.text
        refused = await api.client.get(url, headers=bob)
        assert refused.status_code == 404


async def test_a_read_reads_the_live_hash_once_and_an_end_twice(
    make_api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's read of a live session reads its live hash once, the ownership check's
    read answering it all (it was three reads: the check, the state, the room); an end
    reads it twice: the check's read decides how to end it, then the state it ended in
    (it was four for a queued session: the check, the end, the cancel, the state)."""
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        session_id = created.json()["session_id"]
        reads: list[str] = []
        read_live = api.state.live.get

        async def counted(sid: str) -> dict[str, str]:
            reads.append(sid)
            return await read_live(sid)

        monkeypatch.setattr(api.state.live, "get", counted)
        url = f"/api/sessions/{session_id}"
        seen = await api.client.get(url, headers=alice)
        assert seen.status_code == 200 and seen.json()["status"] == "queued", seen.text
        assert reads == [session_id]
        reads.clear()
        ended = await api.client.delete(url, headers=alice)
        assert ended.status_code == 200 and ended.json()["status"] == "cancelled", ended.text
        assert reads == [session_id, session_id]


async def test_a_create_writes_nothing_to_sql_and_waits_on_no_writer(make_api) -> None:
    """Neither a new conversation's session nor a known one's writes to SQL on its way,
    nor waits for the store's write lock, which the persister holds while it writes."""
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        first = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                      headers=alice)  # fmt: skip
        conversation_id = first.json()["conversation_id"]
        # Its conversation, read at once: stored by the read, ahead of the persister.
        known = await api.client.get(f"/api/conversations/{conversation_id}", headers=alice)
        assert known.status_code == 200, known.text

        writes: list[str] = []

        def note(_conn, _cursor, statement: str, *_args) -> None:
            if statement.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
                writes.append(statement)

        engine = api.state.store.engine.sync_engine
        # Held as the persister holds it while it writes; listened to only while held, so
        # a batch the persister was writing when the test came is not counted.
        async with api.state.store.writing():
            event.listen(engine, "before_cursor_execute", note)
            try:
                for body in (
                    {"transport": "websocket"},
                    {"transport": "websocket", "conversation_id": conversation_id},
                ):
                    created = await asyncio.wait_for(
                        api.client.post("/api/sessions", json=body, headers=alice), timeout=10
                    )
                    assert created.status_code == 202, created.text
            finally:
                event.remove(engine, "before_cursor_execute", note)
            assert writes == []
        assert created.json()["conversation_id"] == conversation_id

        async def all_stored() -> int | None:
            async with api.state.store.session() as db:
                rows = (await db.exec(text("SELECT count(*) FROM sessions"))).one()[0]
                events = (await db.exec(text("SELECT count(*) FROM events"))).one()[0]
            return rows if rows == 3 and events >= 3 else None

        assert await eventually(all_stored, timeout=10, what="three sessions stored") == 3


async def test_a_websocket_token_opens_its_call_once_on_its_listener(
    make_api, redis, monkeypatch
) -> None:
    """The API signs a WebSocket token with the session's key, for the listener that has the
    session: a caller that made the session and saw it ready mints one without a read; any
    other reads the key and listener from the session's hash. The listener's gate takes it
    once; none is minted once the call has its client."""
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        session_id = created.json()["session_id"]
        async with api.state.store.session() as db:
            row = await ownership.current_session(api.state, db, session_id)
        assert row is not None
        key = await redis.hget(keys.session(session_id), ws_tokens.KEY_FIELD)
        assert key  # made with the session
        listener = {"ws_url": "ws://127.0.0.1:9/ws", "ws_listener": ws_tokens.new_listener()}
        await redis.hset(
            keys.session(session_id),
            mapping={"state": "ready", OWNER_CONNECT: json.dumps(listener)},
        )

        def token(found: dict | None) -> str:
            assert found is not None and found["ws_url"].startswith(listener["ws_url"] + "?")
            return parse_qs(urlsplit(found["ws_url"]).query)["token"][0]

        gate = ws_tokens.TokenGate(key, listener["ws_listener"])
        read = token(await owner_connect_when_ready(api.state, row, {}))
        assert gate.admit(read) and not gate.admit(read)  # single use

        async def no_read(session_id: str) -> dict[str, str]:
            raise AssertionError("read the session's hash")

        with monkeypatch.context() as patched:
            patched.setattr(api.state.live, "get", no_read)
            ready = {"state": "ready", **listener}
            seen = token(await owner_connect_when_ready(api.state, row, ready, key))
        assert gate.admit(seen) and not gate.admit(seen)
        assert not ws_tokens.TokenGate(key, ws_tokens.new_listener()).admit(
            token(await owner_connect_when_ready(api.state, row, {}))
        )  # bound to its listener

        await redis.hset(keys.session(session_id), "state", "connected")  # its client came
        assert await owner_connect_when_ready(api.state, row, {}) is None
