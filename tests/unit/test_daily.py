"""Daily sessions against a local fake of Daily's REST API (harness/doubles/daily_api.py).

The worker's room, token and clean-up logic runs for real against the fake;
so do the API's invitations and participant tokens, with the API and a worker
in this process. The bot never joins its room: joining needs Daily's cloud,
which tests must not reach, so the pipeline's ``DailyTransport`` is only
constructed and its parameters checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from loguru import logger
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.daily.transport import DailyTransport

from harness.doubles.daily_api import FakeDaily
from harness.waiting import eventually
from shared import keys
from shared.lifecycle import OWNER_CONNECT, Reason
from shared.settings import Settings
from tests.conftest import InProcessAPI
from worker.options import WorkerOptions
from worker.transports import SignalError, TransportError
from worker.transports.daily import (
    BOT_NAME,
    ROOM_GRACE_S,
    DailySessionTransport,
    RoomTransport,
    describe_daily_error,
)

KEY = "test-daily-key-0123456789"
MAX_DURATION = 600.0
TOKEN_TTL = 300.0


@pytest.fixture
async def daily() -> AsyncIterator[FakeDaily]:
    fake = await FakeDaily(api_key=KEY).start()
    yield fake
    await fake.stop()


def _options(daily: FakeDaily, **overrides: Any) -> WorkerOptions:
    values: dict[str, Any] = dict(
        redis_url="redis://127.0.0.1:1/0",  # unused by the transport
        daily_api_key=KEY,
        daily_api_url=daily.url,
        max_session_duration=MAX_DURATION,
        daily_token_ttl=TOKEN_TTL,
    )
    return WorkerOptions(**(values | overrides))


# --- the worker's side: rooms, tokens, clean-up ------------------------------------------


async def test_room_tokens_and_cleanup(daily: FakeDaily) -> None:
    transport = DailySessionTransport("s1", _options(daily))
    before = time.time()
    assert await transport.prepare() == {}  # nothing public goes into the ready event

    [room] = daily.rooms.values()
    assert room["privacy"] == "private"
    assert room["url"].startswith(f"http://127.0.0.1:{daily.port}/")
    config = room["config"]
    assert config["eject_at_room_exp"] is True
    assert before + MAX_DURATION + ROOM_GRACE_S <= config["exp"] <= time.time() + 900

    tokens = {props["user_name"]: (token, props) for token, props in daily.tokens.items()}
    assert set(tokens) == {BOT_NAME, "owner"}
    bot, owner = tokens[BOT_NAME][1], tokens["owner"][1]
    assert (bot["is_owner"], owner["is_owner"]) == (True, False)
    assert bot["room_name"] == owner["room_name"] == room["name"]
    assert owner["exp"] >= before + MAX_DURATION  # the owner's token lasts the session

    assert transport.owner_params() == {"room_url": room["url"], "token": tokens["owner"][0]}
    assert daily.token_valid(tokens["owner"][0])

    guest = await transport.handle_signal("participant", {"user_name": "bob", "user_id": "u2"})
    assert guest["room_url"] == room["url"]
    props = daily.tokens[guest["token"]]
    assert (props["user_name"], props["user_id"], props["is_owner"]) == ("bob", "u2", False)
    assert props["exp"] <= time.time() + TOKEN_TTL + 1  # short: it only has to get bob in
    assert guest["expires_at"] == props["exp"]
    daily.advance(TOKEN_TTL + 1)
    assert not daily.token_valid(guest["token"])  # expired tokens let nobody in
    assert daily.token_valid(tokens["owner"][0])

    await transport.aclose()
    assert daily.rooms == {} and daily.deleted == [room["name"]]
    assert not daily.token_valid(tokens["owner"][0])
    with pytest.raises(SignalError):
        await transport.handle_signal("participant", {"user_name": "late"})
    await transport.aclose()  # idempotent
    assert daily.unauthorized == 0


async def test_a_call_moved_to_another_worker_keeps_its_room(daily: FakeDaily) -> None:
    """A drain hands the call over without deleting its room; the next worker's transport
    (given the session's record) joins that room with a bot token of its own, and the
    owner's token goes on working: nobody in the room has to move."""
    first = DailySessionTransport("s1", _options(daily))
    await first.prepare()
    owner = first.owner_params()
    await first.aclose(handing_off=True)
    assert daily.deleted == [] and daily.token_valid(owner["token"])

    record = {"transport": "daily", OWNER_CONNECT: json.dumps(owner)}
    second = DailySessionTransport("s1", _options(daily), record)
    assert await second.prepare() == {}
    assert second.owner_params() == owner
    assert len(daily.rooms) == 1  # no new room
    bots = [props for props in daily.tokens.values() if props["user_name"] == BOT_NAME]
    assert len(bots) == 2 and all(b["is_owner"] for b in bots)  # a fresh one for this worker
    await second.aclose()  # the call ends here: now the room goes
    assert daily.rooms == {} and not daily.token_valid(owner["token"])


@pytest.mark.parametrize(
    ("route", "status", "words"),
    [
        ("POST /rooms", 401, "refused the API key (401)"),
        ("POST /rooms", 429, "rate-limiting this deployment (429)"),
        ("POST /rooms", 500, "failed (500)"),
        ("POST /meeting-tokens", 500, "failed (500)"),
    ],
)
async def test_daily_errors_are_clear(
    daily: FakeDaily, route: str, status: int, words: str
) -> None:
    daily.fail(route, status)
    transport = DailySessionTransport("s1", _options(daily))
    with pytest.raises(TransportError) as raised:
        await transport.prepare()
    assert raised.value.reason == Reason.DAILY_UNAVAILABLE
    assert words in str(raised.value) and KEY not in str(raised.value)
    await transport.aclose()  # what the worker does for a session that never got ready
    assert daily.rooms == {}  # a room made before the token failed is deleted too


async def test_wrong_key_and_unreachable_daily(daily: FakeDaily) -> None:
    wrong = DailySessionTransport("s1", _options(daily, daily_api_key="not-the-key"))
    with pytest.raises(TransportError, match=r"refused the API key \(401\)"):
        await wrong.prepare()
    await wrong.aclose()
    assert daily.unauthorized == 1

    gone = DailySessionTransport("s2", _options(daily, daily_api_url="http://127.0.0.1:9/v1"))
    with pytest.raises(TransportError, match="could not be reached"):
        await gone.prepare()
    await gone.aclose()

    none = DailySessionTransport("s3", _options(daily, daily_api_key=None))
    with pytest.raises(TransportError, match="no DAILY_API_KEY"):
        await none.prepare()
    assert describe_daily_error(ValueError("weird")) == (
        "Daily's API answered with something unexpected"
    )


async def test_pipeline_transport_is_built_not_joined(daily: FakeDaily) -> None:
    transport = DailySessionTransport("s1", _options(daily))
    await transport.prepare()
    built = transport.build(TransportParams(audio_in_enabled=True, audio_out_enabled=True))
    assert isinstance(built, RoomTransport) and isinstance(built, DailyTransport)
    assert transport.room is not None  # created by prepare()
    bot_token = next(t for t, p in daily.tokens.items() if p["user_name"] == BOT_NAME)
    client = built._client
    assert (client._room_url, client._token, client._bot_name) == (
        transport.room.url,
        bot_token,
        BOT_NAME,
    )
    params = built._params
    assert params.audio_in_enabled and params.audio_out_enabled
    assert params.audio_in_user_tracks is False  # one mixed track: the bot hears the room
    assert params.camera_out_enabled is False and params.transcription_enabled is False
    assert params.api_key == ""  # Daily's key stays with the REST helper
    assert transport.pipeline_before_client is True
    await transport.aclose()


async def test_room_client_events_are_first_in_and_last_out(daily: FakeDaily) -> None:
    transport = DailySessionTransport("s1", _options(daily))
    await transport.prepare()
    built = transport.build(TransportParams(audio_in_enabled=True, audio_out_enabled=True))
    assert isinstance(built, RoomTransport)
    seen: list[str] = []

    @built.event_handler("on_client_connected")
    async def _in(_t: object, participant: dict[str, Any]) -> None:
        seen.append(f"in:{participant['id']}")

    @built.event_handler("on_client_disconnected")
    async def _out(_t: object, participant: dict[str, Any]) -> None:
        seen.append(f"out:{participant['id']}")

    for event, pid in [("connected", "a"), ("connected", "b"), ("connected", "b"),
                       ("disconnected", "a"), ("disconnected", "b")]:  # fmt: skip
        await built._call_event_handler(f"on_client_{event}", {"id": pid})
    # Handlers run as tasks, in order: once the last one out is seen, all have run.
    await eventually(lambda: "out:b" in seen, timeout=5, what="the handlers run")
    assert seen == ["in:a", "out:b"]
    assert built.present == set()

    # Someone already in the room when the bot joins counts too (once).
    seen.clear()
    built.participants = lambda: {"local": {"id": "bot"}, "early": {"info": {}}}  # type: ignore[method-assign]  # stands in for the call's participants
    await built._call_event_handler("on_joined", {})
    await eventually(lambda: seen == ["in:early"], timeout=5, what="the early one counted")
    await built._call_event_handler("on_client_connected", {"id": "early"})
    await built._call_event_handler("on_client_disconnected", {"id": "early"})
    await eventually(lambda: seen == ["in:early", "out:early"], timeout=5, what="in once, then out")
    await transport.aclose()


class _NoPipeline:
    """Stands in for the session's PipelineWorker: the room's events are what is tested."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def queue_frame(self, _frame: object) -> None:
        return None

    async def cancel(self, *, reason: str | None = None) -> None:
        self.cancelled.append(str(reason))


async def test_room_empty_is_lost_then_back_then_left(daily: FakeDaily, redis) -> None:
    """The last person out: ``reconnecting`` (client_lost); the first back in: ``connected``
    (client_reconnected); nobody back within the grace: the call ends (client_left)."""
    from pipecat.pipeline.worker import PipelineWorker

    from shared.live import LiveSessions
    from worker.session import SessionRunner

    live = LiveSessions(redis)
    fields = {"conversation_id": "c1", "transport": "daily", "profile": "echo", "pool": "server"}
    await live.create("s1", "alice", fields)
    assert await live.pick_up("s1", "w1")
    options = _options(daily, worker_id="w1", reconnect_grace=1.0)
    runner = SessionRunner(
        "s1", {"transport": "daily", "profile": "echo"}, options=options, live=live,
        on_finished=lambda _runner: None,
    )  # fmt: skip
    runner.publisher.transition("mark_ready", Reason.PIPELINE_READY)
    await runner.transport.prepare()
    built = runner.transport.build(TransportParams(audio_in_enabled=True), runner)
    assert isinstance(built, RoomTransport)
    runner._watch_client(built)
    pipeline = _NoPipeline()
    runner._pipeline = cast(PipelineWorker, pipeline)
    follower = asyncio.create_task(runner._follow_client())

    async def states() -> list[tuple[str, str]]:
        await runner.publisher.flush()
        entries = await redis.xrange(keys.session_events("s1"))
        data = [json.loads(f["data"]) for _id, f in entries if f["type"] == "session.state"]
        return [(d["state"], d["reason"]) for d in data][3:]  # after queued, starting, ready

    async def room(event: str, pid: str) -> None:
        await built._call_event_handler(f"on_client_{event}", {"id": pid})

    try:
        await room("connected", "a")
        await room("connected", "b")
        await room("disconnected", "a")  # b is still there: nothing changes
        await room("disconnected", "b")  # the room is empty
        expected = [("connected", "client_connected"), ("reconnecting", "client_lost")]

        async def reached(wanted: list[tuple[str, str]]) -> bool:
            return await states() == wanted

        await eventually(lambda: reached(expected), timeout=5, what="the room empty: reconnecting")
        assert (await live.get("s1"))["state"] == "reconnecting"
        await room("connected", "c")  # someone back in the room
        expected.append(("connected", "client_reconnected"))
        await eventually(lambda: reached(expected), timeout=5, what="connected again")
        await asyncio.sleep(1.5)  # time: longer than the grace, which the return cancelled
        assert runner.end_reason is None and pipeline.cancelled == []

        await room("disconnected", "c")  # the last one out, and nobody comes back
        expected.append(("reconnecting", "client_lost"))
        await eventually(lambda: reached(expected), timeout=5, what="reconnecting again")
        await eventually(lambda: runner.end_reason is not None, timeout=5, what="the grace over")
        assert runner.end_reason == Reason.CLIENT_LEFT
        await eventually(lambda: pipeline.cancelled == ["client_left"], timeout=5, what="ended")
    finally:
        follower.cancel()
        await runner.publisher.aclose()
        await runner.transport.aclose()


# --- the API and a worker, in this process -----------------------------------------------


@dataclass
class Rooms:
    api: InProcessAPI
    daily: FakeDaily
    redis: Any

    async def user(self, name: str) -> dict[str, str]:
        return self.api.auth(await self.api.token(name))

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(keys.session_events(session_id))
        return [{"type": f["type"], "data": json.loads(f["data"])} for _id, f in entries]


async def _dispatch(worker: Any) -> None:
    """arq's part, minimally: hand each queued start to the worker."""
    started: set[str] = set()
    while True:
        for job_id in await worker.redis.zrange(keys.queue("server"), 0, -1):
            if job_id not in started:
                started.add(job_id)
                await worker.redis.zrem(keys.queue("server"), job_id)
                worker._spawn(worker.start_session(job_id, None))
        await asyncio.sleep(0.02)  # a poll interval, as arq's: this loop runs for good


@pytest.fixture
async def rooms(redis, redis_server, tmp_path: Path, daily: FakeDaily, monkeypatch):
    from api.main import create_app
    from worker.worker import VoicepoolWorker

    async def not_joining(_self: DailySessionTransport) -> None:
        await asyncio.Event().wait()

    # The bot would join its room as the pipeline starts; Daily's cloud is out of reach:
    # the session waits before its pipeline instead, as for a client that has not come.
    monkeypatch.setattr(DailySessionTransport, "pipeline_before_client", False)
    monkeypatch.setattr(DailySessionTransport, "wait_for_client", not_joining)
    settings = Settings(
        redis_url=redis_server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
        DAILY_API_KEY=KEY,
        daily_api_url=daily.url,
        daily_token_ttl=TOKEN_TTL,
        max_session_duration=MAX_DURATION,
        ready_wait=10.0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        worker = VoicepoolWorker(WorkerOptions.from_settings(settings, capacity=4))
        tasks = [
            asyncio.create_task(worker._signal_loop()),
            asyncio.create_task(worker._heartbeat_loop()),
            asyncio.create_task(_dispatch(worker)),
        ]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://voicepool.test") as c:
            yield Rooms(InProcessAPI(app, c, app.state.voicepool), daily, redis)
        await worker.end_all(Reason.WORKER_SHUTDOWN)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await worker.redis.aclose()


async def test_daily_session_invites_and_participants(
    rooms: Rooms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pipecat_lines: list[str] = []
    sink = logger.add(lambda message: pipecat_lines.append(str(message)), level="TRACE")
    client, daily = rooms.api.client, rooms.daily
    alice, bob, carol = [await rooms.user(n) for n in ("alice", "bob", "carol")]

    config = (await client.get("/api/config", headers=alice)).json()
    assert config["transports"] == ["webrtc", "websocket", "daily"]

    started = await client.post(
        "/api/start", json={"createDailyRoom": True, "body": {"profile": "echo"}}, headers=alice
    )
    assert started.status_code == 200, started.text
    body = started.json()
    session_id = body["sessionId"]
    assert set(body) == {"dailyRoom", "dailyToken", "sessionId"}  # Pipecat Cloud's answer
    assert body["dailyRoom"].startswith(f"http://127.0.0.1:{daily.port}/")
    assert daily.token_valid(body["dailyToken"])
    assert daily.tokens[body["dailyToken"]]["is_owner"] is False

    session = (await client.get(f"/api/sessions/{session_id}", headers=alice)).json()
    assert session["status"] == "ready" and session["transport"] == "daily"
    assert session["connect"] == {"room_url": body["dailyRoom"], "token": body["dailyToken"]}
    assert session["connect_url"] == f"/api/sessions/{session_id}/connect"
    connect = await client.post(session["connect_url"], headers=alice)
    assert connect.status_code == 200 and connect.json() == session["connect"]  # stored, as read

    # Invitations: only the owner invites; only the owner and the invited get tokens.
    participants = f"/api/sessions/{session_id}/participants"
    invites = f"/api/sessions/{session_id}/invites"
    assert (await client.post(participants, headers=bob)).status_code == 404
    assert (await client.post(invites, json={"user": "carol"}, headers=bob)).status_code == 404
    assert (await client.get(f"/api/sessions/{session_id}", headers=bob)).status_code == 404
    unknown = await client.post(invites, json={"user": "nobody"}, headers=alice)
    assert (unknown.status_code, unknown.json()["detail"]["code"]) == (404, "user_not_found")
    invited = await client.post(invites, json={"user": "bob"}, headers=alice)
    assert invited.status_code == 201 and invited.json()["user"] == "bob"

    for who, name in [(bob, "bob"), (alice, "alice")]:
        response = await client.post(participants, headers=who)
        assert response.status_code == 200, response.text
        token = response.json()
        assert token["room_url"] == body["dailyRoom"] and token["user"] == name
        props = daily.tokens[token["token"]]
        assert (props["user_name"], props["is_owner"]) == (name, False)
        assert token["expires_at"] <= time.time() + TOKEN_TTL + 1
        assert daily.token_valid(token["token"])
    assert (await client.post(participants, headers=carol)).status_code == 404

    bobs = (await client.post(participants, headers=bob)).json()["token"]
    daily.advance(TOKEN_TTL + 1)
    assert not daily.token_valid(bobs)  # the fake refuses an expired token
    check = httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"})
    async with check:
        refused = await check.get(f"{daily.url}/meeting-tokens/{bobs}")
    assert refused.status_code == 400

    assert (await client.delete(f"{invites}/bob", headers=alice)).status_code == 204
    assert (await client.post(participants, headers=bob)).status_code == 404

    # No meeting token, no room URL in any event.
    events = json.dumps(await rooms.events(session_id))
    assert body["dailyToken"] not in events and body["dailyRoom"] not in events
    assert "fake-" not in events

    # Ending the session deletes the room and forgets the owner's token: the worker
    # releases them once its end is recorded, which is what the DELETE waits for.
    ended = await client.delete(f"/api/sessions/{session_id}", headers=alice)
    assert (ended.json()["status"], ended.json()["reason"]) == ("ended", "client_ended")
    await eventually(
        lambda: daily.rooms == {} and len(daily.deleted) == 1, timeout=5, what="the room deleted"
    )
    assert not daily.token_valid(body["dailyToken"])

    async def token_forgotten() -> bool:
        return not await rooms.redis.hexists(keys.session(session_id), "owner_connect")

    await eventually(token_forgotten, timeout=5, what="the owner's token forgotten")
    after = (await client.get(f"/api/sessions/{session_id}", headers=alice)).json()
    assert after["connect"] is None
    late = await client.post(f"/api/sessions/{session_id}/connect", headers=alice)
    assert (late.status_code, late.json()["detail"]["code"]) == (409, "session_ended")
    assert (await client.post(participants, headers=alice)).status_code == 409
    assert daily.unauthorized == 0

    # Neither Daily's key nor any meeting token was logged.
    logger.remove(sink)
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(r.getMessage() for r in ours) + "".join(pipecat_lines)  # not the test's
    assert "Daily room" in logged  # the room's name is fine
    for secret in [KEY, *daily.tokens]:
        assert secret not in logged


@pytest.mark.parametrize(
    ("route", "status"), [("POST /rooms", 401), ("POST /rooms", 429), ("POST /meeting-tokens", 500)]
)
async def test_daily_failure_fails_the_session(rooms: Rooms, route: str, status: int) -> None:
    rooms.daily.fail(route, status)
    alice = await rooms.user("alice")
    started = await rooms.api.client.post("/api/start", json={"transport": "daily"}, headers=alice)
    assert started.status_code == 503, started.text
    detail = started.json()["detail"]
    assert detail["code"] == "daily_unavailable" and f"({status})" in detail["message"]
    session_id = detail["session_id"]

    session = (await rooms.api.client.get(f"/api/sessions/{session_id}", headers=alice)).json()
    assert (session["status"], session["reason"]) == ("failed", "daily_unavailable")
    final = (await rooms.events(session_id))[-1]["data"]
    assert final["state"] == "failed" and f"({status})" in final["message"]
    assert rooms.daily.rooms == {}  # nothing left behind at Daily


async def test_user_events_name_the_participant_who_spoke(daily: FakeDaily) -> None:
    """Several people in one room: Daily's active speaker is stamped on every user event."""
    from worker.publisher import EventPublisher

    transport = DailySessionTransport("s1", _options(daily))
    await transport.prepare()
    built = transport.build(TransportParams(audio_in_enabled=True, audio_out_enabled=True))
    assert transport.current_speaker() is None

    class Recorder:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        async def publish(self, _sid: str, kind: str, data: dict[str, Any], **_: Any) -> bool:
            self.events.append((kind, data))
            return True

    recorder = Recorder()
    publisher = EventPublisher(recorder, "s1", "w1")  # type: ignore[arg-type]  # a recorder for LiveSessions: only publish() is called
    publisher.speaker = transport.current_speaker

    await built._call_event_handler(
        "on_active_speaker_changed", {"id": "p-ana", "info": {"userName": "ana", "userId": "u1"}}
    )
    publisher.emit("user.turn_started", {})
    await built._call_event_handler(
        "on_active_speaker_changed", {"id": "bot", "info": {"userName": BOT_NAME, "isLocal": True}}
    )  # the bot talking changes nothing
    await built._call_event_handler(
        "on_active_speaker_changed", {"id": "p-bo", "info": {"userName": "bo", "userId": "u2"}}
    )
    publisher.emit("user.transcript", {"text": "and me"})
    publisher.emit("bot.started_speaking", {})
    await publisher.flush()
    await publisher.aclose()
    await transport.aclose()

    by_kind = {kind: data for kind, data in recorder.events}
    assert by_kind["user.turn_started"]["participant"] == {
        "id": "p-ana",
        "name": "ana",
        "user_id": "u1",
    }
    assert by_kind["user.transcript"]["participant"]["name"] == "bo"
    assert "participant" not in by_kind["bot.started_speaking"]
