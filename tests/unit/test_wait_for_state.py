"""Waiting for a session's state (``api.events.wait_for_state_event``), on a real redis-server:
the state, and the data of the event that brought it, which ``POST /api/start`` answers from."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from api.deps import AppState
from api.events import wait_for_state_event
from shared import keys
from shared.lifecycle import CLIENT_MAY_CONNECT, FINAL_STATES, Reason
from shared.live import LiveSessions

TARGETS = {*CLIENT_MAY_CONNECT, *FINAL_STATES}
LISTENER = {"ws_url": "ws://127.0.0.1:9/ws", "ws_listener": "l1"}


def _state(redis: Any) -> AppState:
    return cast(AppState, SimpleNamespace(redis=redis))  # all the wait uses


async def _ready(live: LiveSessions, sid: str) -> None:
    assert await live.pick_up(sid, "w1")
    ready, _ = await live.move(sid, "mark_ready", Reason.PIPELINE_READY, worker_id="w1",
                               data={"transport": "websocket", **LISTENER})  # fmt: skip
    assert ready


async def test_the_data_of_the_event_that_made_it_ready(redis) -> None:
    live = LiveSessions(redis)
    await live.create(
        "s1", "u1", {"conversation_id": "c1", "pool": "server", "transport": "websocket"}
    )
    waiting = asyncio.create_task(wait_for_state_event(_state(redis), "s1", TARGETS, timeout=5))
    await asyncio.sleep(0.05)  # the wait is on the stream, past queued
    await _ready(live, "s1")
    state, data = await waiting
    assert state == "ready" and data["ws_listener"] == "l1" and data["ws_url"] == LISTENER["ws_url"]


async def test_ready_before_the_wait_began(redis) -> None:
    """The state's own event is the stream's last: its data, with no read more. Once another
    event came after it, the wait has the state and no data (the caller reads the hash)."""
    live = LiveSessions(redis)
    await live.create(
        "s1", "u1", {"conversation_id": "c1", "pool": "server", "transport": "websocket"}
    )
    await _ready(live, "s1")
    state, data = await wait_for_state_event(_state(redis), "s1", TARGETS, timeout=5)
    assert state == "ready" and data["ws_listener"] == "l1"

    assert await live.publish("s1", "metrics.usage", {"tokens": 1}, worker_id="w1")
    assert await wait_for_state_event(_state(redis), "s1", TARGETS, timeout=5) == ("ready", {})


async def test_a_wait_that_times_out_says_where_it_is(redis) -> None:
    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    assert await wait_for_state_event(_state(redis), "s1", TARGETS, timeout=0.1) == (
        "queued",
        {"state": "queued", "reason": "created", "previous": None},
    )
    assert await wait_for_state_event(_state(redis), "gone", TARGETS, timeout=0.1) == (None, {})


async def test_the_creator_waits_on_from_its_queued_event(redis) -> None:
    """The session's creator knows where it is (``queued``, at its event): the wait reads on
    from there, and finds a state reached before it began, and its data, all the same."""
    live = LiveSessions(redis)
    fields = {"conversation_id": "c1", "pool": "server", "transport": "websocket"}
    created = await live.create("s1", "u1", fields)
    since = ("queued", created.event_id)
    assert (await redis.xrange(keys.session_events("s1")))[0][0] == created.event_id
    assert await wait_for_state_event(_state(redis), "s1", TARGETS, timeout=0.1, since=since) == (
        "queued",
        {},
    )
    await _ready(live, "s1")  # before the wait
    state, data = await wait_for_state_event(_state(redis), "s1", TARGETS, timeout=5, since=since)
    assert state == "ready" and data["ws_listener"] == "l1"

    created = await live.create("s2", "u1", fields)
    waiting = asyncio.create_task(
        wait_for_state_event(
            _state(redis), "s2", TARGETS, timeout=5, since=("queued", created.event_id)
        )
    )
    await asyncio.sleep(0.05)  # blocked on the stream
    await _ready(live, "s2")
    state, data = await waiting
    assert state == "ready" and data["ws_url"] == LISTENER["ws_url"]
