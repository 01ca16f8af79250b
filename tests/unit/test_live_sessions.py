"""State transitions and events in Redis (real redis-server): atomic, ordered, final is final."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from api.reaper import Reaper
from shared import keys
from shared import live as live_module
from shared.fleet import PROTOCOL
from shared.lifecycle import (
    FINAL_STATES,
    LIVE_STATES,
    MOVES,
    MoveName,
    Reason,
    SessionState,
    allowed,
    final_state,
)
from shared.live import LiveSessions, OwnerLimitReached, ReadyAtTake


async def _new(live: LiveSessions, sid: str = "s1", **fields: str) -> None:
    await live.create(sid, "u1", {"conversation_id": "c1", "pool": "server", **fields})


async def test_a_moves_private_fields_go_in_the_hash_with_it_and_never_in_its_event(
    redis,
) -> None:
    live = LiveSessions(redis)
    await _new(live)
    await live.pick_up("s1", "w1")
    secret = '{"ws_url": "ws://127.0.0.1:9/s1"}'
    ready, _ = await live.move(
        "s1", "mark_ready", Reason.PIPELINE_READY, worker_id="w1", private={"owner_connect": secret}
    )
    assert ready
    record = await live.get("s1")
    assert (record["state"], record["owner_connect"]) == ("ready", secret)
    events = await redis.xrange(keys.session_events("s1"))
    assert json.loads(events[-1][1]["data"])["state"] == "ready"
    assert all("ws://" not in str(fields) for _, fields in events)
    # A move that is refused sets nothing.
    refused, _ = await live.move("s1", "pick_up", Reason.PICKED_UP, worker_id="w2",
                                 private={"owner_connect": "{}"})  # fmt: skip
    assert not refused and (await live.get("s1"))["owner_connect"] == secret


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


async def test_many_sessions_are_told_in_one_round_trip_and_final_ones_are_not(redis) -> None:
    live = LiveSessions(redis)
    for sid in ("s1", "s2", "gone"):
        await _new(live, sid)
    await live.cancel("gone", Reason.CLIENT_ENDED)
    await live.publish_all(
        [
            (sid, "session.queue", {"position": n}, {"queue_position": n})
            for n, sid in enumerate(("s1", "s2", "gone"), start=1)
        ]
    )
    for n, sid in enumerate(("s1", "s2"), start=1):
        last = (await redis.xrevrange(keys.session_events(sid), count=1))[0][1]
        assert (last["type"], last["seq"], json.loads(last["data"])) == (
            "session.queue",
            "2",
            {"position": n},
        )
        assert await redis.hget(keys.session(sid), "queue_position") == str(n)
    last = (await redis.xrevrange(keys.session_events("gone"), count=1))[0][1]
    assert last["type"] == "session.state"  # ended: nothing more is added


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


@pytest.mark.parametrize("slice_", [live_module.SWEEP_SLICE, 2])
async def test_a_sweep_looks_into_what_may_need_it_and_counts_the_rest(
    redis, monkeypatch, slice_
) -> None:
    """Redis picks out the sessions a sweep may act on; a healthy call is only counted. In
    slices of the live sessions, the same."""
    monkeypatch.setattr(live_module, "SWEEP_SLICE", slice_)
    live = LiveSessions(redis, heartbeat_ttl=10)
    for sid in ("healthy1", "healthy2", "expired", "on_gone", "queued"):
        await _new(live, sid)
    for sid, worker in (("healthy1", "w1"), ("healthy2", "w1"), ("expired", "w1"),
                        ("on_gone", "w2")):  # fmt: skip
        assert await live.pick_up(sid, worker)
    assert (await live.move("healthy2", "mark_ready", Reason.PIPELINE_READY, worker_id="w1"))[0]
    await redis.delete(keys.session_alive("expired"))
    await redis.sadd(keys.LIVE_SESSIONS, "no_hash")
    fields = ("state", "pool", "worker_id", "created_ts")

    async def gone() -> set[str]:
        return {"w2"}

    looked, counted = await live.sweep(fields, gone=gone, judging=True)
    found = {sid: (alive, f["state"], f["worker_id"]) for sid, alive, f in looked}
    assert found == {
        "expired": (False, "starting", "w1"),
        "on_gone": (True, "starting", "w2"),
        "queued": (True, "queued", None),
        "no_hash": (True, None, None),
    }
    assert counted == {("server", "starting"): 1, ("server", "ready"): 1}

    # Not judging (a grace after Redis was away): no owned session is looked into.
    looked, counted = await live.sweep(fields, gone=gone, judging=False)
    assert sorted(sid for sid, _, _ in looked) == ["no_hash", "queued"]
    assert counted == {("server", "starting"): 3, ("server", "ready"): 1}
    with pytest.raises(ValueError):
        await live.sweep(("pool", "state", "worker_id"), gone=gone, judging=True)


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


# --- recovering: a lost worker's calls go to another one ----------------------------------


async def _arq(redis_server):
    from arq.connections import create_pool

    from shared.connections import arq_redis_settings

    return await create_pool(arq_redis_settings(redis_server.url))


async def _beat(redis, worker_id: str, age_s: float) -> None:
    from shared.fleet import WorkerBeat

    beat = WorkerBeat(
        id=worker_id, pool="server", host="h", capacity=2, active=1, ts=time.time() - age_s
    )
    await redis.set(keys.worker(worker_id), beat.model_dump_json())
    await redis.sadd(keys.WORKERS, worker_id)


async def test_reaper_requeues_a_lost_workers_session_ahead_of_later_ones(
    redis, redis_server
) -> None:
    from shared import queue

    arq = await _arq(redis_server)
    live = LiveSessions(redis, heartbeat_ttl=10)
    reaper = Reaper(live, queue_ttl=30, arq=arq, max_recoveries=2, fast_worker_loss=False)
    await _new(live, "call", created_ts=repr(time.time() - 20))
    await live.pick_up("call", "w1")
    await _new(live, "later", created_ts=repr(time.time()), job_id="later")
    await queue.enqueue_start(arq, "later", "server", job_id="later", expires_s=60)

    for loss in (1, 2):
        await redis.delete(keys.session_alive("call"))  # its worker stopped beating
        assert await reaper.sweep() == [("call", "recovering")]
        record = await live.get("call")
        assert (record["state"], record["reason"]) == ("recovering", "worker_lost")
        assert (record["recoveries"], record["losses"]) == (str(loss), str(loss))
        assert record["job_id"] == f"call.r{loss}"
        # At the head of the queue: before the session created after it.
        assert await redis.zrange(keys.queue("server"), 0, -1) == [f"call.r{loss}", "later"]
        assert not await redis.exists(keys.session_alive("call"))
        assert await reaper.sweep() == []  # recovering, not owned: nothing more to judge
        await redis.zrem(keys.queue("server"), f"call.r{loss}")  # as a worker takes it
        assert await live.pick_up("call", f"w{loss + 1}")
        ready, _ = await live.move("call", "mark_ready", Reason.RECOVERED, worker_id=f"w{loss + 1}")
        assert ready

    # The third loss is one too many (VOICEPOOL_MAX_RECOVERIES=2): it fails as before.
    await redis.delete(keys.session_alive("call"))
    assert await reaper.sweep() == [("call", "worker_lost")]
    assert (await live.get("call"))["state"] == "failed"
    await arq.aclose()


async def test_reaper_ends_a_recovering_session_nobody_took_up_in_time(redis, redis_server) -> None:
    arq = await _arq(redis_server)
    live = LiveSessions(redis, heartbeat_ttl=10)
    reaper = Reaper(live, queue_ttl=5, arq=arq, fast_worker_loss=False)
    for sid, why in (("lost", Reason.WORKER_LOST), ("drained", Reason.WORKER_DRAINING)):
        await _new(live, sid, created_ts=repr(time.time()))
        await live.pick_up(sid, "w1")
        move: MoveName = "recover" if why == Reason.WORKER_LOST else "hand_off"
        assert (await live.move(sid, move, why, worker_id="w1"))[0]
        await redis.hset(keys.session(sid), mapping={"job_id": f"{sid}.r1"})
        await redis.zadd(keys.queue("server"), {f"{sid}.r1": 1})
    assert await reaper.sweep() == []  # within the queue TTL: still waiting for a worker

    await redis.hset(keys.session("lost"), "recovering_ts", repr(time.time() - 6))
    await redis.hset(keys.session("drained"), "recovering_ts", repr(time.time() - 6))
    assert sorted(await reaper.sweep()) == [
        ("drained", "worker_draining"),
        ("lost", "worker_lost"),
    ]
    assert (await live.get("lost"))["state"] == "failed"
    assert (await live.get("drained"))["state"] == "ended"
    assert await redis.zcard(keys.queue("server")) == 0  # and their jobs left the queue
    await arq.aclose()


async def test_a_worker_with_no_connection_left_is_judged_lost_before_its_key_expires(
    redis, redis_server
) -> None:
    from shared.connections import redis_client
    from shared.fleet import worker_client_name

    live = LiveSessions(redis, heartbeat_ttl=10)
    reaper = Reaper(live, queue_ttl=30, heartbeat_interval=0.5)  # no arq: it fails
    await _new(live, "call")
    await live.pick_up("call", "dead")
    await _beat(redis, "dead", age_s=0.4)  # late, but by less than two beats
    stalled = redis_client(redis_server.url, client_name=worker_client_name("stalled"))
    await stalled.ping()  # a live process: its connection stays open
    await _beat(redis, "stalled", age_s=3)
    assert await reaper.gone_workers() == set()
    assert await reaper.sweep() == []  # the alive key is there, and "dead" is not late

    await _beat(redis, "dead", age_s=1.2)  # two beats late, and no connection of its own
    assert await reaper.gone_workers() == {"dead"}
    assert await reaper.sweep() == [("call", "worker_lost")]

    # With no worker's connection in sight (a proxy hides them), nobody is judged so.
    await stalled.aclose()
    assert await reaper.gone_workers() == set()
    reaper.fast_worker_loss = False
    assert await reaper.gone_workers() == set()


async def test_the_heartbeat_keeps_alive_only_what_is_still_the_workers(redis) -> None:
    live = LiveSessions(redis, heartbeat_ttl=10)
    for sid in ("mine", "moved", "taken"):
        await _new(live, sid)
        await live.pick_up(sid, "w1")
    assert await live.move("moved", "recover", Reason.WORKER_LOST)
    assert await live.move("taken", "recover", Reason.WORKER_LOST)
    assert await live.pick_up("taken", "w2")
    await redis.delete(keys.session_alive("mine"), keys.session_alive("taken"))

    found = await live.keep_alive("w1", ["mine", "moved", "taken", "gone"])
    assert found == {
        "mine": ("starting", "w1"),
        "moved": ("recovering", "w1"),
        "taken": ("starting", "w2"),
        "gone": ("", ""),
    }
    assert await redis.get(keys.session_alive("mine")) == "w1"  # set again, though it lapsed
    assert not await redis.exists(keys.session_alive("moved"))
    assert not await redis.exists(keys.session_alive("taken"))  # w2's own beat sets it


async def test_a_drained_worker_hands_its_call_off_and_can_say_nothing_more(redis) -> None:
    live = LiveSessions(redis)
    await _new(live)
    assert await live.pick_up("s1", "w1")
    assert await live.move("s1", "hand_off", Reason.WORKER_DRAINING, worker_id="w2") == (
        False,
        "not_owner",
    )
    assert (await live.move("s1", "hand_off", Reason.WORKER_DRAINING, worker_id="w1"))[0]
    record = await live.get("s1")
    assert (record["state"], record["reason"]) == ("recovering", "worker_draining")
    assert not await redis.exists(keys.session_alive("s1"))
    # What the old owner's pipeline emits as it stops is refused, not added to the call.
    assert not await live.publish("s1", "bot.stopped_speaking", {}, worker_id="w1")
    assert await live.publish("s1", "session.queue", {"position": 1})  # the API's still are


async def test_a_recovered_session_is_rebuilt_from_its_own_transcript(redis) -> None:
    import json

    from worker.continuity import resumed_meta

    live = LiveSessions(redis)
    earlier = [{"role": "user", "content": "I am Ana"}, {"role": "assistant", "content": "Hi"}]
    await _new(live, history=json.dumps(earlier))
    await live.pick_up("s1", "w1")
    await live.move("s1", "mark_ready", Reason.PIPELINE_READY, worker_id="w1")
    first_ready = (await live.get("s1"))["ready_ts"]
    # The user's words are recorded after the answer to them began.
    said = [
        ("assistant.transcript", "Oslo is cold", "2030-01-01T10:00:05.000Z"),
        ("user.transcript", "Where should I go?", "2030-01-01T10:00:01.000Z"),
        ("user.transcript", "", "2030-01-01T10:00:09.000Z"),
        ("user.turn_started", "", ""),
    ]
    for kind, text, started in said:
        await live.publish("s1", kind, {"text": text, "started": started}, worker_id="w1")
    await live.move("s1", "recover", Reason.WORKER_LOST)

    meta = await resumed_meta(redis, "s1", await live.get("s1"))
    assert json.loads(meta["history"]) == [
        *earlier,
        {"role": "user", "content": "Where should I go?"},
        {"role": "assistant", "content": "Oslo is cold"},
    ]
    assert meta["live_since"] == first_ready
    assert (await live.get("s1"))["live_since"] == first_ready  # kept for the next worker


async def test_a_call_is_quiet_when_nobody_speaks_and_no_tool_runs() -> None:
    from worker import continuity
    from worker.continuity import QuietWatch

    watch = QuietWatch()
    soon = time.monotonic() + 5
    assert await watch.wait_quiet(soon)
    watch.see("tool.started")
    watch.see("user.turn_started")
    assert watch.quiet_in() is None
    watch.see("user.turn_stopped")  # an answer may be on its way
    assert watch.quiet_in() is None  # the tool still runs
    watch.see("tool.completed")
    assert watch.quiet_in() == pytest.approx(continuity.REPLY_S, abs=0.1)
    watch.see("bot.started_speaking")
    assert not await watch.wait_quiet(time.monotonic() + 0.1)
    watch.see("bot.stopped_speaking")
    started = time.monotonic()
    assert await watch.wait_quiet(soon)
    assert time.monotonic() - started >= continuity.QUIET_S - 0.05


async def test_the_reaper_records_the_protocol_in_a_redis_new_to_it(redis) -> None:
    """A Redis that restarted empty has lost the API's protocol (shared/fleet.py): the
    next round of the reaper writes it again, for the workers that join that Redis."""
    reaper = Reaper(LiveSessions(redis), queue_ttl=5)
    await reaper.check_redis()
    assert await redis.get(keys.PROTOCOL) == str(PROTOCOL)
    await redis.delete(keys.PROTOCOL)
    await reaper.check_redis()  # the same Redis: nothing to say again
    assert await redis.get(keys.PROTOCOL) is None
    reaper._redis_run_id = "a Redis before a restart"
    await reaper.check_redis()
    assert await redis.get(keys.PROTOCOL) == str(PROTOCOL)


async def test_a_take_picks_the_session_up_and_reads_it_in_one_step(redis) -> None:
    live = LiveSessions(redis)
    await _new(live, profile="echo")
    taken = await live.take("s1", "w1", data={"pool": "server"})
    assert taken is not None and not taken.ready
    meta = taken.meta
    assert (meta["state"], meta["worker_id"], meta["profile"]) == ("starting", "w1", "echo")
    assert meta == await live.get("s1")  # the hash as the move left it
    assert await live.take("s1", "w2") is None  # taken already: not twice
    await _new(live, "s2")
    assert await live.cancel("s2", Reason.CLIENT_ENDED)
    assert await live.take("s2", "w1") is None  # given up before any worker took it
    assert await live.take("never", "w1") is None


async def test_a_take_moves_a_session_its_worker_has_a_pipeline_for_on_to_ready(redis) -> None:
    live = LiveSessions(redis)
    connect = {"ws_url": "ws://127.0.0.1:9/ws", "ws_listener": "l1"}
    ready_if = ReadyAtTake(
        ["echo"], {"transport": "websocket", **connect}, {"owner_connect": json.dumps(connect)}
    )
    await _new(live, "s1", transport="websocket", profile="echo")
    taken = await live.take("s1", "w1", data={"pool": "server"}, ready_if=ready_if)
    assert taken is not None and taken.ready
    assert (taken.meta["state"], taken.meta["worker_id"]) == ("ready", "w1")
    assert taken.meta == await live.get("s1")
    assert json.loads(taken.meta["owner_connect"]) == connect
    events = [json.loads(f["data"]) for _, f in await redis.xrange(keys.session_events("s1"))]
    assert [(e["state"], e["reason"]) for e in events] == [
        ("queued", "created"),
        ("starting", "picked_up"),
        ("ready", "pipeline_ready"),
    ]
    assert events[-1]["ws_url"] == connect["ws_url"] and "owner_connect" not in str(events)
    assert [f["seq"] for _, f in await redis.xrange(keys.INGEST_STREAM)] == ["1", "2", "3"]

    # Not another transport, profile, or a call taken up from another worker: those are
    # only taken, as without ``ready_if``.
    await _new(live, "s2", transport="webrtc", profile="echo")
    await _new(live, "s3", transport="websocket", profile="assistant")
    await _new(live, "s4", transport="websocket", profile="echo", recoveries="1")
    for sid in ("s2", "s3", "s4"):
        taken = await live.take(sid, "w1", ready_if=ready_if)
        assert taken is not None and not taken.ready and taken.meta["state"] == "starting"
    assert await live.take("s1", "w2", ready_if=ready_if) is None  # taken already
