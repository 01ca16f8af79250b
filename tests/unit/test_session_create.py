"""Creating a session, whose rows are committed while it goes live in Redis: a store that
refuses the rows leaves nothing running, and a session the persister hears of at once is
stored in order (the app in-process, real Redis and SQLite)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import text

from api.connect import owner_connect_when_ready
from api.services import sessions
from harness.waiting import eventually
from shared import keys, ws_tokens
from shared.lifecycle import OWNER_CONNECT
from shared.models import VoiceSession
from shared.users import create_user

REFUSE_SESSIONS = """
CREATE TRIGGER refuse_sessions BEFORE INSERT ON sessions
BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END
"""


async def _sql(api, statement: str) -> None:
    async with api.state.store.session() as db:
        await db.execute(text(statement))
        await db.commit()


async def test_a_session_whose_rows_are_refused_leaves_nothing_running(make_api, redis) -> None:
    async with make_api(max_sessions_per_user=1) as api:
        alice = api.auth(await api.token("alice"))
        await _sql(api, REFUSE_SESSIONS)

        refused = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"]["code"] == "store_unavailable"
        # It went live while its rows were being written: now it is not, and its job is gone.
        assert await redis.zcard(keys.queue("server")) == 0
        found = redis.scan_iter(keys.session("*"), _type="hash")
        live = [await redis.hgetall(key) async for key in found]
        assert [(s["state"], s["reason"]) for s in live] == [("cancelled", "client_ended")]
        for listing in ("/api/sessions?live=true", "/api/conversations"):  # nothing half-made
            listed = await api.client.get(listing, headers=alice)
            assert listed.status_code == 200 and listed.json() == [], listing

        # What she does next: once the store takes rows again, her one session is free.
        await _sql(api, "DROP TRIGGER refuse_sessions")
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        assert created.status_code == 202, created.text
        assert created.json()["status"] == "queued"
        assert await redis.zcard(keys.queue("server")) == 1


async def test_the_persister_stores_the_state_of_a_session_created_at_once(make_api) -> None:
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        created = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                        headers=alice)  # fmt: skip
        session_id = created.json()["session_id"]
        ended = await api.client.delete(f"/api/sessions/{session_id}", headers=alice)
        assert ended.json()["status"] == "cancelled"

        async def stored() -> tuple[str, int] | None:
            async with api.state.store.session() as db:
                row = await db.get(VoiceSession, session_id)
                return (row.state, row.state_seq) if row and row.state_seq == 2 else None

        assert await eventually(stored, timeout=10, what="the cancel stored") == ("cancelled", 2)


async def test_a_create_in_a_known_conversation_holds_no_sqlite_lock_while_it_waits(
    make_api, monkeypatch
) -> None:
    """A session in an existing conversation reads it and its history first. Nothing of
    that may hold SQLite's write lock while the create waits for the store's: the
    persister holds the store's lock while it writes, and would wait for SQLite's."""
    async with make_api() as api:
        alice = api.auth(await api.token("alice"))
        first = await api.client.post("/api/sessions", json={"transport": "websocket"},
                                      headers=alice)  # fmt: skip
        conversation_id = first.json()["conversation_id"]

        about_to_write = asyncio.Event()
        commit_and_go_live = sessions._commit_and_go_live

        async def noted(*args, **kwargs):
            about_to_write.set()
            return await commit_and_go_live(*args, **kwargs)

        monkeypatch.setattr(sessions, "_commit_and_go_live", noted)
        store = api.state.store
        async with store.writing():  # as the persister holds it while it writes
            body = {"transport": "websocket", "conversation_id": conversation_id}
            second = asyncio.create_task(api.client.post("/api/sessions", json=body, headers=alice))
            await asyncio.wait_for(about_to_write.wait(), timeout=10)
            async with store.session() as db:  # a write of the persister's: not held up
                await asyncio.wait_for(create_user(db, "bob"), timeout=5)
        created = await second
        assert created.status_code == 202, created.text
        assert created.json()["conversation_id"] == conversation_id


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
            row = await db.get(VoiceSession, session_id)
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
