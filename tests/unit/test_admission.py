"""Admission to a pool, decided in Redis (real redis-server): from the slots workers' beats
offer, exact under concurrent requests, refusing only what it can't serve."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlmodel import select

from api.services import sessions
from harness.waiting import eventually
from shared import keys, queue
from shared.fleet import PROTOCOL, WorkerBeat
from shared.live import AdmissionPolicy, AdmissionRefused, LiveSessions, OwnerLimitReached
from shared.models import VoiceSession

POOL = "server"
POLICY = AdmissionPolicy(max_waiting=3, queue_ttl=30)


def _beat(
    worker_id: str,
    *,
    capacity: int = 2,
    active: int = 0,
    draining: bool = False,
    profiles: tuple[str, ...] = ("echo",),
    transports: tuple[str, ...] = ("webrtc", "websocket"),
):
    now = time.time()
    return WorkerBeat(
        id=worker_id, pool=POOL, host="h", capacity=capacity, active=active,
        draining=draining, ts=now, polled_at=now, protocol=PROTOCOL, profiles=list(profiles),
        transports=list(transports),
    )  # fmt: skip


async def _create(live: LiveSessions, sid: str, policy: AdmissionPolicy = POLICY) -> int:
    created = await live.create(sid, f"owner-{sid}", {"conversation_id": "c", "pool": POOL},
                                admission=policy)  # fmt: skip
    return created.position


async def _refusal(live: LiveSessions, sid: str, policy: AdmissionPolicy = POLICY):
    with pytest.raises(AdmissionRefused) as refused:
        await _create(live, sid, policy)
    assert not await live.get(sid)  # nothing of it was written
    return refused.value


async def test_a_pool_without_a_worker_offering_slots_refuses(redis) -> None:
    live = LiveSessions(redis)
    assert (await _refusal(live, "s1")).code == "no_workers"
    assert (await _refusal(live, "s1")).value == 0  # no worker seen at all

    await live.keep_alive("w1", [], beat=_beat("w1", draining=True))
    refusal = await _refusal(live, "s1")
    assert (refusal.code, refusal.value) == ("no_workers", 1)  # one seen, draining

    await live.keep_alive("w1", [], beat=_beat("w1"))  # the drain was cancelled
    assert await _create(live, "s1") == 0  # a slot is free for it: no place in line
    # Scaling from zero: the queue is what wakes the autoscaler. No slot is free, and s1
    # (admitted, on its way to the queue) is ahead.
    await redis.delete(keys.worker("w1"))
    assert await _create(live, "s2", AdmissionPolicy(3, 30, workers_required=False)) == 2


async def test_a_worker_whose_beat_lapsed_offers_nothing(redis) -> None:
    live = LiveSessions(redis)
    await live.keep_alive("w1", [], beat=_beat("w1"))
    await redis.delete(keys.worker("w1"))  # its heartbeat expired: killed, say
    assert (await _refusal(live, "s1")).code == "no_workers"
    assert not await redis.hexists(keys.pool_slots(POOL), "w1")  # and it was cleaned up


async def test_the_queue_limit_is_exact_under_concurrent_requests(redis) -> None:
    live = LiveSessions(redis)
    await live.keep_alive("w1", [], beat=_beat("w1", capacity=1, active=1))  # the slot is taken
    results = await asyncio.gather(
        *(_create(live, f"s{i}") for i in range(20)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert sorted(admitted) == [1, 2, 3]  # places in line, none twice
    refused = [r for r in results if isinstance(r, BaseException)]
    codes = {(type(r), getattr(r, "code", "")) for r in refused}
    assert codes == {(AdmissionRefused, "queue_full")}

    # Each admitted session counts until it is in the queue proper, then as queued there.
    first = next(f"s{i}" for i, r in enumerate(results) if r == 1)
    await redis.zadd(keys.queue(POOL), {first: 1})
    await queue.ring(redis, POOL, queued=first)
    assert await redis.zcard(keys.pool_admitting(POOL)) == 2
    assert (await _refusal(live, "late")).code == "queue_full"
    # A place comes back when a waiting session leaves (a worker took it, or it ended).
    await redis.zrem(keys.queue(POOL), first)
    assert await _create(live, "late") == 3


async def test_a_wait_beyond_the_queue_ttl_is_refused_once_the_rate_is_known(redis) -> None:
    live = LiveSessions(redis)
    policy = AdmissionPolicy(max_waiting=100, queue_ttl=5, min_starts=10)
    await live.keep_alive("w1", [], beat=_beat("w1", capacity=1, active=1))
    now = time.time()
    # Nine starts in the window: too few to say the wait is long; the session queues.
    await redis.zadd(keys.pool_starts(POOL), {f"old{i}": now - i for i in range(9)})
    assert await _create(live, "s1", policy) == 1

    # Twelve: about one start every 10 s, so a second in line waits ~20 s > 5.
    await redis.zadd(keys.pool_starts(POOL), {f"new{i}": now - i for i in range(3)})
    refusal = await _refusal(live, "s2", policy)
    assert refusal.code == "no_capacity"
    assert refusal.value == pytest.approx(2 * 120 / 12, rel=0.01)
    assert refusal.starts_per_s == pytest.approx(12 / 120)

    # A slot freed elsewhere in the pool: the one in line has it, the next waits ~10 s.
    await live.keep_alive("w2", [], beat=_beat("w2", capacity=1))
    refusal = await _refusal(live, "s2", policy)
    assert refusal.value == pytest.approx(1 * 120 / 12, rel=0.01)
    await live.keep_alive("w3", [], beat=_beat("w3", capacity=1))
    assert await _create(live, "s2", policy) == 0  # two free slots, one waiting


async def test_the_owner_limit_comes_after_the_pool_and_is_atomic(redis) -> None:
    live = LiveSessions(redis)
    await live.keep_alive("w1", [], beat=_beat("w1", capacity=20))
    policy = AdmissionPolicy(max_waiting=100, queue_ttl=30)
    attempts = [
        live.create(f"s{i}", "u1", {"conversation_id": "c", "pool": POOL},
                    owner_limit=2, admission=policy)
        for i in range(6)
    ]  # fmt: skip
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert all(isinstance(r, OwnerLimitReached) for r in results if isinstance(r, BaseException))
    # The cheap look before the session goes live says the same.
    with pytest.raises(OwnerLimitReached):
        await live.admit(POOL, "u1", policy, owner_limit=2)
    assert await live.admit(POOL, "u2", policy, owner_limit=2) == 0


def test_pool_fallbacks_are_pairs_of_known_pools() -> None:
    from pydantic import ValidationError

    from shared.settings import PoolFallback, Settings

    settings = Settings(pools="server,jetson", pool_fallbacks="jetson = server")
    assert settings.pool_fallbacks == {"jetson": PoolFallback("server", None)}
    settings = Settings(pools="server,jetson", pool_fallbacks="jetson=server:5")
    assert settings.pool_fallbacks == {"jetson": PoolFallback("server", 5.0)}
    for wrong in ("jetson", "jetson=cloud", "server=server", "jetson=server:soon",
                  "jetson=server:-1"):  # fmt: skip
        with pytest.raises(ValidationError):
            Settings(pools="server,jetson", pool_fallbacks=wrong)


async def test_only_workers_that_run_the_profile_offer_it_slots(redis) -> None:
    live = LiveSessions(redis)
    policy = AdmissionPolicy(max_waiting=10, queue_ttl=30)

    async def create(sid: str, profile: str) -> int:
        fields = {"conversation_id": "c", "pool": POOL, "profile": profile}
        return (await live.create(sid, f"o-{sid}", fields, admission=policy)).position

    await live.keep_alive("board", [], beat=_beat("board", capacity=1, profiles=("echo",)))
    with pytest.raises(AdmissionRefused) as refused:
        await create("a1", "assistant")  # the board has no model key
    assert (refused.value.code, refused.value.value) == ("no_profile", 1)
    assert await create("e1", "echo") == 0

    await live.keep_alive("server", [], beat=_beat("server", profiles=("echo", "assistant")))
    assert await create("a1", "assistant") == 0  # the server's free slots, not the board's


async def test_a_transport_no_worker_serves_is_refused_by_name(make_api) -> None:
    """The API offers Daily (it has the key); the pool's workers don't (they lack it)."""
    async with make_api(admit_without_workers=False, daily_api_key="k") as api:
        token = await api.token("ivo")
        await api.state.live.keep_alive("board", [], beat=_beat("board"))
        config = (await api.client.get("/api/config", headers=api.auth(token))).json()
        assert config["pool_offers"][POOL]["transports"] == ["webrtc", "websocket"]
        body = {"transport": "daily", "profile": "echo"}
        refused = await api.client.post("/api/sessions", json=body, headers=api.auth(token))
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"]["code"] == "transport_unavailable"
        assert "DAILY_API_KEY on the workers" in refused.json()["detail"]["message"]


async def test_only_workers_that_serve_the_transport_offer_it_slots(redis) -> None:
    live = LiveSessions(redis)
    policy = AdmissionPolicy(max_waiting=10, queue_ttl=30)

    async def create(sid: str, transport: str) -> int:
        fields = {"conversation_id": "c", "pool": POOL, "profile": "echo", "transport": transport}
        return (await live.create(sid, f"o-{sid}", fields, admission=policy)).position

    await live.keep_alive("board", [], beat=_beat("board", capacity=1))  # no Daily key
    with pytest.raises(AdmissionRefused) as refused:
        await create("d1", "daily")
    assert refused.value.code == "no_profile"  # no worker serves what it needs
    assert await create("w1", "webrtc") == 0
    await live.keep_alive("server", [], beat=_beat("server", transports=("webrtc", "daily")))
    assert await create("d1", "daily") == 0


async def test_what_the_workers_run_is_what_the_api_offers(make_api) -> None:
    """The API has no model key; a worker that has one makes the assistant available,
    and a pool whose workers can't run it refuses it plainly."""
    async with make_api(admit_without_workers=False) as api:
        assert api.state.settings.openai_api_key is None
        token = await api.token("ivy")
        config = (await api.client.get("/api/config", headers=api.auth(token))).json()
        assert config["profiles"] == ["echo"]  # no worker yet: the API's own settings

        live = api.state.live
        await live.keep_alive("board", [], beat=_beat("board", profiles=("echo",)))
        config = (await api.client.get("/api/config", headers=api.auth(token))).json()
        assert config["profiles"] == ["echo"]
        assert config["unavailable_profiles"] == [
            {"name": "assistant", "needs": "OPENAI_API_KEY on the workers"}
        ]
        body = {"transport": "webrtc", "profile": "assistant"}
        refused = await api.client.post("/api/sessions", json=body, headers=api.auth(token))
        assert refused.status_code == 422
        assert refused.json()["detail"]["code"] == "profile_unavailable"
        assert "OPENAI_API_KEY on the workers" in refused.json()["detail"]["message"]

        await live.keep_alive("server", [], beat=_beat("server", profiles=("echo", "assistant")))
        config = (await api.client.get("/api/config", headers=api.auth(token))).json()
        assert config["profiles"] == ["echo", "assistant"]
        assert config["default_profile"] == "assistant"
        assert config["pool_offers"] == {
            POOL: {"profiles": ["echo", "assistant"], "transports": ["webrtc", "websocket"]}
        }
        started = await api.client.post("/api/sessions", json=body, headers=api.auth(token))
        assert started.status_code == 202, started.text


async def test_a_create_looks_at_admission_first_only_while_the_pool_refuses(
    make_api, monkeypatch
) -> None:
    """The look before the session goes live is a Redis round trip of its own: a create
    takes it only after a refusal came lately, and a refusal leaves nothing behind either
    way (one met unseen is removed, then answered as if it had looked)."""
    async with make_api(admit_without_workers=False) as api:
        token = await api.token("ida")
        live = api.state.live
        looks = 0
        admit = live.admit

        async def looked(*args: Any, **kwargs: Any) -> int:
            nonlocal looks
            looks += 1
            return await admit(*args, **kwargs)

        monkeypatch.setattr(live, "admit", looked)

        async def create() -> httpx.Response:
            body = {"transport": "webrtc", "profile": "echo"}
            return await api.client.post("/api/sessions", json=body, headers=api.auth(token))

        async def made() -> tuple[int, int]:
            """Sessions in Redis, and (once the persister has them) rows in SQL."""
            hashes = [k async for k in api.state.redis.scan_iter(keys.session("*"), _type="hash")]

            async def stored() -> int | None:
                async with api.state.store.session() as db:
                    rows = len((await db.exec(select(VoiceSession))).all())
                return rows if rows == len(hashes) else None

            return len(hashes), await eventually(stored, timeout=10, what="the rows stored")

        await live.keep_alive("server", [], beat=_beat("server"))
        assert (await create()).status_code == 202
        assert looks == 0  # admitted where it went live: no look of its own

        await live.keep_alive("server", [], beat=_beat("server", draining=True))
        for expected_looks in (1, 2):  # unseen, then looked at again; then looked at first
            refused = await create()
            assert refused.status_code == 503, refused.text
            assert refused.json()["detail"]["code"] == "no_workers"
            assert looks == expected_looks
            assert await made() == (1, 1)  # the first session's, and nothing of the refused

        monkeypatch.setattr(sessions, "REFUSALS_REMEMBERED_S", 0.0)  # the refusals are past
        await live.keep_alive("server", [], beat=_beat("server"))
        assert (await create()).status_code == 202
        assert looks == 2
        assert await made() == (2, 2)
