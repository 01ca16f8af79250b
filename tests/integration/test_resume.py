"""Finding a live call again through the real system: ``GET /api/sessions?live=true``
(the caller's own live sessions, newest first) and ``POST /api/start`` with a
``sessionId`` (the same call's connection parameters, not a new session)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.api import api_client, create_session, wait_for_status
from harness.system import System
from shared.lifecycle import Reason

pytestmark = pytest.mark.slow


def _last_state_seq(system: System, session_id: str) -> int:
    """The seq of the session's last ``session.state`` event on its live stream."""
    with system.redis as r:
        entries = r.xrevrange(f"vp:session:{session_id}:events")
    return next(int(f["seq"]) for _id, f in entries if f["type"] == "session.state")


async def _live(api: httpx.AsyncClient) -> list[dict]:
    listed = await api.get("/api/sessions", params={"live": "true"})
    assert listed.status_code == 200, listed.text
    sessions: list[dict] = listed.json()
    return sessions


async def test_live_sessions_are_the_callers_own_and_live_only(make_system) -> None:
    system = make_system(workers=1, capacity=4)
    alice = api_client(system, system.create_user("alice"))
    bob = api_client(system, system.create_user("bob"))
    admin = api_client(system, system.create_user("root", admin=True))
    async with alice, bob, admin:
        first = await create_session(alice, profile="echo")
        second = await create_session(alice, profile="echo")
        bobs = await create_session(bob, profile="echo")
        admins = await create_session(admin, profile="echo")
        for api, session in ((alice, first), (alice, second), (bob, bobs), (admin, admins)):
            await wait_for_status(api, session["session_id"], {"ready"})

        listed = await _live(alice)
        assert [s["session_id"] for s in listed] == [second["session_id"], first["session_id"]]
        for session in listed:
            assert session["status"] == "ready"
            assert session["state_seq"] == _last_state_seq(system, session["session_id"])
            assert session["events_url"] == f"/api/sessions/{session['session_id']}/events"
        assert [s["session_id"] for s in await _live(bob)] == [bobs["session_id"]]
        # An administrator may read anyone's session, but lists only their own calls.
        assert [s["session_id"] for s in await _live(admin)] == [admins["session_id"]]

        # Only live ones: an ended session leaves the list at once.
        ended = await alice.delete(f"/api/sessions/{first['session_id']}")
        assert ended.json()["status"] == "ended"
        assert ended.json()["state_seq"] == _last_state_seq(system, first["session_id"])
        assert [s["session_id"] for s in await _live(alice)] == [second["session_id"]]

        # The list is of live sessions only; without live=true there is none to give.
        refused = await alice.get("/api/sessions")
        assert refused.status_code == 422
        assert refused.json()["detail"]["code"] == "invalid_request"
        assert (await alice.get("/api/sessions", params={"live": "false"})).status_code == 422

        for api, session in ((alice, second), (bob, bobs), (admin, admins)):
            await api.delete(f"/api/sessions/{session['session_id']}")
        assert await _live(alice) == []


async def test_start_with_a_session_id_resumes_that_session(make_system) -> None:
    system = make_system(workers=1, capacity=2, VOICEPOOL_ICE_SERVERS="stun:127.0.0.1:3478")
    alice = api_client(system, system.create_user("alice"))
    bob = api_client(system, system.create_user("bob"))
    admin = api_client(system, system.create_user("root", admin=True))
    async with alice, bob, admin:
        started = await alice.post("/api/start", json={"body": {"profile": "echo"}})
        assert started.status_code == 200, started.text
        session_id = started.json()["sessionId"]

        # Pipecat's client sends the same request again, with the session's id.
        again = await alice.post(
            "/api/start", json={"transport": "webrtc", "sessionId": session_id, "body": {}}
        )
        assert again.status_code == 200, again.text
        assert again.json() == started.json()  # {sessionId, iceConfig}: the same call
        assert again.headers["X-Session-Id"] == session_id
        assert again.headers["Location"] == f"/api/sessions/{session_id}"
        assert [s["session_id"] for s in await _live(alice)] == [session_id]  # none created

        # Not theirs: as if it did not exist, for other users and administrators alike.
        for other in (bob, admin):
            refused = await other.post("/api/start", json={"sessionId": session_id})
            assert refused.status_code == 404, refused.text
            assert refused.json()["detail"]["code"] == "session_not_found"
            assert session_id not in refused.text
        unknown = await alice.post("/api/start", json={"sessionId": "0" * 32})
        assert unknown.status_code == 404

        # A WebRTC session is not resumed as another transport.
        mismatch = await alice.post(
            "/api/start", json={"sessionId": session_id, "transport": "websocket"}
        )
        assert mismatch.status_code == 422
        assert mismatch.json()["detail"]["code"] == "invalid_request"

        # Ended: nothing to resume.
        assert (await alice.delete(f"/api/sessions/{session_id}")).status_code == 200
        late = await alice.post("/api/start", json={"sessionId": session_id})
        assert late.status_code == 409, late.text
        assert late.json()["detail"]["code"] == "session_ended"


async def test_resume_waits_while_the_call_moves_to_another_worker(make_api) -> None:
    """In process, the moves made by hand: a worker takes the call, is lost, another takes
    it over (``recovering`` → ``ready``/``recovered``); a resume waits for that."""
    async with make_api(ready_wait=5.0) as api:
        alice = api.auth(await api.token("alice"))
        live = api.state.live

        async def recovering() -> str:
            made = await api.client.post(
                "/api/sessions", json={"transport": "webrtc"}, headers=alice
            )
            session_id: str = made.json()["session_id"]
            assert await live.pick_up(session_id, "w1")
            assert (
                await live.move(session_id, "mark_ready", Reason.PIPELINE_READY, worker_id="w1")
            )[0]
            assert (await live.move(session_id, "recover", Reason.WORKER_LOST))[0]
            return session_id

        def resume(session_id: str) -> asyncio.Task[httpx.Response]:
            start = api.client.post("/api/start", json={"sessionId": session_id}, headers=alice)
            return asyncio.ensure_future(start)

        moved = await recovering()
        resuming = resume(moved)
        await asyncio.sleep(0.5)  # time passing: the answer waits while the call moves
        assert not resuming.done()
        listed = (await api.client.get("/api/sessions?live=true", headers=alice)).json()
        assert [(s["session_id"], s["status"]) for s in listed] == [(moved, "recovering")]
        assert await live.pick_up(moved, "w2")
        assert (await live.move(moved, "mark_ready", Reason.RECOVERED, worker_id="w2"))[0]
        resumed = await asyncio.wait_for(resuming, 5)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json() == {"sessionId": moved}

        # No worker could take it over: the resume learns the call has ended.
        lost = await recovering()
        resuming = resume(lost)
        await asyncio.sleep(0.2)  # time passing: the resume is waiting
        assert await live.finish(lost, Reason.WORKER_LOST)
        refused = await asyncio.wait_for(resuming, 5)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"]["code"] == "session_ended"
