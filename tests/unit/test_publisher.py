"""The event publisher through a Redis outage (its own real redis-server, killed and
restarted): nothing lost, nothing twice, in order; a full buffer leaves a marked gap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shared import keys
from shared.connections import EmbeddedRedis, redis_client
from shared.lifecycle import Reason
from shared.live import LiveSessions
from worker.publisher import EventPublisher


@pytest.fixture
async def outage(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    redis = redis_client(server.url)
    # Each write on disk before its reply: the tests kill -9 Redis right after writing. With
    # the default (everysec), a write acknowledged while a slow disk's fsync is still under
    # way may be postponed, and lost with the process (the session then gone after the
    # restart, and every event refused).
    await redis.config_set("appendfsync", "always")
    live = LiveSessions(redis)
    await live.create("s1", "u1", {"conversation_id": "c1", "pool": "server"})
    await live.pick_up("s1", "w1")
    yield server, live
    await redis.aclose()
    server.stop()


async def _entries(live: LiveSessions) -> list[dict[str, str]]:
    return [fields for _id, fields in await live.redis.xrange(keys.session_events("s1"))]


async def test_events_made_while_redis_is_down_arrive_once_in_order(outage) -> None:
    server, live = outage
    publisher = EventPublisher(live, "s1", "w1")
    for i in range(5):
        publisher.emit("drill.tick", {"i": i})
    await publisher.flush()

    server.kill()  # kill -9: the AOF has everything written so far (appendfsync always)
    ready = publisher.transition("mark_ready", Reason.PIPELINE_READY)
    for i in range(5, 25):
        publisher.emit("drill.tick", {"i": i})
    await asyncio.sleep(0.5)  # the publisher is retrying meanwhile; the caller never waited
    assert not ready.done()
    server.start()
    await asyncio.wait_for(publisher.flush(), 15)
    assert await ready
    await publisher.aclose()

    entries = await _entries(live)
    assert [int(e["seq"]) for e in entries] == list(range(1, len(entries) + 1))
    ticks = [json.loads(e["data"])["i"] for e in entries if e["type"] == "drill.tick"]
    assert ticks == list(range(25))
    states = [json.loads(e["data"])["state"] for e in entries if e["type"] == "session.state"]
    assert states == ["queued", "starting", "ready"]
    # The ready event sits between tick 4 and tick 5, where the worker made it, and keeps
    # the time it happened rather than the time Redis took it.
    types = [e["type"] for e in entries]
    assert types.index("session.state", 2) == types.index("drill.tick") + 5
    assert publisher.dropped == 0 and publisher.failed == 0


async def test_a_retry_after_a_lost_reply_is_written_once(outage) -> None:
    _server, live = outage
    assert await live.publish("s1", "drill.tick", {"i": 1}, publisher_seq=7)
    assert await live.publish("s1", "drill.tick", {"i": 1}, publisher_seq=7)  # the retry
    ready = {"worker_id": "w1", "publisher_seq": 8}
    changed, _ = await live.move("s1", "mark_ready", Reason.PIPELINE_READY, **ready)
    again, _ = await live.move("s1", "mark_ready", Reason.PIPELINE_READY, **ready)
    assert changed and again  # the retry reports what the first attempt did
    assert [e["type"] for e in await _entries(live)].count("drill.tick") == 1
    assert len(await _entries(live)) == 4  # queued, starting, one tick, ready


async def test_a_full_buffer_keeps_the_newest_and_records_the_gap(outage) -> None:
    server, live = outage
    publisher = EventPublisher(live, "s1", "w1", max_buffered=5)
    server.kill()
    publisher.emit("drill.tick", {"i": 0})  # the head: in flight when the outage began
    publisher.transition("mark_ready", Reason.PIPELINE_READY)  # a state change is never dropped
    for i in range(1, 20):
        publisher.emit("drill.tick", {"i": i})
    server.start()
    await asyncio.wait_for(publisher.aclose(), 15)

    entries = await _entries(live)
    assert [int(e["seq"]) for e in entries] == list(range(1, len(entries) + 1))
    shown = [
        (e["type"], json.loads(e["data"]).get("i", json.loads(e["data"]).get("state")))
        for e in entries[2:]
    ]
    gap = json.loads(next(e["data"] for e in entries if e["type"] == "session.gap"))
    assert gap["dropped"] == 16 == publisher.dropped
    assert gap["from_at"] <= gap["to_at"]
    assert shown == [
        ("drill.tick", 0),
        ("session.state", "ready"),
        ("session.gap", None),
        *[("drill.tick", i) for i in range(17, 20)],
    ]
