"""State transitions and events in Redis (real redis-server): atomic, ordered, final is final."""

from __future__ import annotations

import asyncio
import time

from api.reaper import Reaper
from shared import keys
from shared.lifecycle import (
    FINAL_STATES,
    LIVE_STATES,
    MOVES,
    Reason,
    SessionState,
    allowed,
    final_state,
)
from shared.live import LiveSessions, OwnerLimitReached


async def _new(live: LiveSessions, sid: str = "s1", **fields: str) -> None:
    await live.create(sid, "u1", {"conversation_id": "c1", "pool": "server", **fields})


async def test_only_one_of_two_racing_transitions_wins(redis) -> None:
    live = LiveSessions(redis)
    await _new(live)
    results = await asyncio.gather(live.pick_up("s1", "w1"), live.expire("s1"))
    assert sorted(results) == [False, True]
    events = await redis.xrange(keys.session_events("s1"))
    assert [f["seq"] for _, f in events] == ["1", "2"]


async def test_events_carry_increasing_seq_in_both_streams(redis) -> None:
    live = LiveSessions(redis)
    await _new(live)
    for i in range(5):
        assert await live.publish("s1", "user.turn_started", {"turn": i})
    session = await redis.xrange(keys.session_events("s1"))
    ingest = await redis.xrange(keys.INGEST_STREAM)
    assert [f["seq"] for _, f in session] == [str(i) for i in range(1, 7)]
    assert [f["seq"] for _, f in ingest] == [str(i) for i in range(1, 7)]
    # The ingest entry remembers the id of its twin in the session stream (the SSE id).
    assert [f["live_id"] for _, f in ingest] == [entry_id for entry_id, _ in session]


async def test_a_final_state_is_final(redis) -> None:
    live = LiveSessions(redis, stream_retention=60)
    await _new(live)
    await live.pick_up("s1", "w1")
    assert await redis.exists(keys.session_alive("s1"))
    changed, _ = await live.move("s1", "finish_own", Reason.CLIENT_ENDED, worker_id="w1")
    assert changed
    assert not await live.publish("s1", "user.turn_started", {})
    for name in MOVES:  # no move leaves a final state
        worker = "w1" if MOVES[name].owner else ""
        again, current = await live.move("s1", name, Reason.WORKER_LOST, worker_id=worker)
        assert (again, current) == (False, "ended"), name
    assert not await redis.sismember(keys.LIVE_SESSIONS, "s1")
    assert not await redis.exists(keys.session_alive("s1"))
    assert 0 < await redis.ttl(keys.session_events("s1")) <= 60


async def test_the_owner_limit_is_atomic(redis) -> None:
    live = LiveSessions(redis)
    attempts = [
        live.create(f"s{i}", "u1", {"conversation_id": "c1"}, owner_limit=3) for i in range(10)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 3
    assert all(isinstance(r, OwnerLimitReached) for r in results if isinstance(r, Exception))
    first = next(f"s{i}" for i, r in enumerate(results) if not isinstance(r, Exception))
    assert await live.cancel(first, Reason.CLIENT_ENDED)
    await live.create("again", "u1", {"conversation_id": "c1"}, owner_limit=3)  # a slot freed


async def test_reaper_fails_lost_sessions_and_expires_stale_queued_ones(redis) -> None:
    live = LiveSessions(redis, heartbeat_ttl=10)
    reaper = Reaper(live, queue_ttl=5)
    await _new(live, "owned")
    await live.pick_up("owned", "w1")
    await _new(live, "stale", created_ts=repr(time.time() - 60), job_id="stale")
    await redis.zadd(keys.queue("server"), {"stale": 1})
    await _new(live, "fresh", created_ts=repr(time.time()))

    assert await reaper.sweep() == [("stale", "no_capacity")]  # the owner is still alive
    assert await redis.zcard(keys.queue("server")) == 0

    await redis.delete(keys.session_alive("owned"))  # its worker stopped beating
    assert await reaper.sweep() == [("owned", "worker_lost")]
    assert (await live.get("owned"))["state"] == "failed"
    assert (await live.get("fresh"))["state"] == "queued"


async def test_reaper_judges_nobody_until_workers_could_beat_again(redis) -> None:
    """After Redis was unreachable, restarted, or the reaper itself did not run, a missing
    heartbeat says nothing yet: every worker gets a full TTL before anyone is judged."""
    live = LiveSessions(redis, heartbeat_ttl=0.5)
    reaper = Reaper(live, queue_ttl=5, interval=0.05)
    await reaper.check_redis()  # (a Redis younger than the TTL is forgiven once too)
    await asyncio.sleep(0.55)  # time passing: a whole heartbeat TTL
    await reaper.check_redis()
    assert reaper.judging
    await _new(live, "owned")
    await live.pick_up("owned", "w1")
    await redis.delete(keys.session_alive("owned"))  # as if its key lapsed during an outage

    for blind_spot in ("unreachable", "restarted", "paused"):
        if blind_spot == "unreachable":
            reaper._blind = True  # what run() records when a round fails
        elif blind_spot == "restarted":
            reaper._redis_run_id = "an earlier redis-server"
        else:
            reaper._last_round = time.monotonic() - 10
        await reaper.check_redis()
        assert not reaper.judging, blind_spot
        assert await reaper.sweep() == [], blind_spot
        await asyncio.sleep(0.55)  # time passing: a whole heartbeat TTL
        await reaper.check_redis()
        assert reaper.judging, blind_spot

    assert await reaper.sweep() == [("owned", "worker_lost")]  # now it could have beaten


def test_the_table_reaches_every_state_and_no_final_state_has_a_way_out() -> None:
    graph = allowed()
    reached = {SessionState.QUEUED} | {to for targets in graph.values() for to in targets}
    assert reached == set(SessionState)
    assert all(not graph[state] for state in FINAL_STATES)
    assert all(graph[state] for state in LIVE_STATES)
    assert final_state(Reason.WORKER_LOST) == SessionState.FAILED
    assert final_state(Reason.CLIENT_LEFT) == SessionState.ENDED


async def test_a_new_owner_is_not_mistaken_for_the_old_ones_retries(redis) -> None:
    """Publisher numbers count per owner: after the session moves to another worker, that
    worker's first events are written, not taken for repeats of the first owner's."""
    live = LiveSessions(redis)
    await _new(live)
    assert await live.pick_up("s1", "w1")
    for n in range(1, 6):
        assert await live.publish("s1", "user.turn_started", {}, worker_id="w1", publisher_seq=n)
    assert await live.move("s1", "recover", Reason.WORKER_LOST)
    assert await live.pick_up("s1", "w2")
    assert await live.publish("s1", "user.turn_started", {"n": 1}, worker_id="w2", publisher_seq=1)
    ready, _ = await live.move(
        "s1", "mark_ready", Reason.RECOVERED, worker_id="w2", publisher_seq=2
    )
    assert ready
    events = await redis.xrange(keys.session_events("s1"))
    assert [f["seq"] for _, f in events] == [str(i) for i in range(1, len(events) + 1)]
    assert (await live.get("s1"))["state"] == "ready"


async def test_a_worker_that_lost_its_session_can_no_longer_speak_for_it(redis) -> None:
    """A worker back from a stall after its call was recovered elsewhere: its events and
    moves are refused, and the new owner's go through."""
    live = LiveSessions(redis)
    await _new(live)
    assert await live.pick_up("s1", "w1")
    assert await live.move("s1", "recover", Reason.WORKER_LOST)
    assert await live.pick_up("s1", "w2")
    assert not await live.publish("s1", "user.turn_started", {}, worker_id="w1")
    assert await live.move("s1", "finish_own", Reason.CLIENT_LEFT, worker_id="w1") == (
        False,
        "not_owner",
    )
    assert (await redis.get(keys.session_alive("s1"))) == "w2"
    changed, _ = await live.move("s1", "mark_ready", Reason.RECOVERED, worker_id="w2")
    assert changed
