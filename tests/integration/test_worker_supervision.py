"""A worker's long-lived tasks are watched (a real worker in this process, real Redis):
a transient failure restarts its poll loop, any other ends the worker with exit code 1,
and a poll loop that hangs shows as ``stalled`` with no capacity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from api.reaper import Reaper
from harness.waiting import eventually
from shared import keys, queue
from shared.fleet import POLL_STALL_S, WorkerBeat
from shared.live import LiveSessions
from worker.options import WorkerOptions
from worker.worker import SessionWorker, VoicepoolWorker

POOL = "supervised"


@pytest.fixture
async def start_worker(redis, redis_server, monkeypatch) -> AsyncIterator[Callable]:
    monkeypatch.setattr(VoicepoolWorker, "_install_signal_handlers", lambda self: None)
    running: list[tuple[VoicepoolWorker, asyncio.Task[int]]] = []

    async def start(
        fault: Callable[[int], object] | None = None, *, safety_poll: float = 0.2
    ) -> VoicepoolWorker:
        """Start a worker whose poll iteration number N first calls ``fault(N)``."""
        if fault is not None:
            rounds = 0
            original = SessionWorker._poll_iteration

            async def faulty(self: SessionWorker) -> None:
                nonlocal rounds
                rounds += 1
                outcome = fault(rounds)
                if asyncio.iscoroutine(outcome):
                    await outcome
                await original(self)

            monkeypatch.setattr(SessionWorker, "_poll_iteration", faulty)
        worker = VoicepoolWorker(
            WorkerOptions(
                redis_url=redis_server.url, pool=POOL, capacity=2,
                heartbeat_interval=0.2, heartbeat_ttl=3, safety_poll=safety_poll,
            )
        )  # fmt: skip
        began = time.time()
        running.append((worker, asyncio.create_task(worker.run())))
        await eventually(lambda: _polling(redis, worker, began), what="the worker polling")
        return worker

    yield start
    for worker, task in running:
        worker.stop()
        await asyncio.wait_for(task, 20)


async def _beat(redis, worker: VoicepoolWorker) -> WorkerBeat | None:
    raw = await redis.get(keys.worker(worker.id))
    return WorkerBeat.model_validate_json(raw) if raw else None


async def test_a_transient_failure_restarts_the_poll_loop(start_worker, redis) -> None:
    def drop_redis_once(n: int) -> None:
        if n == 3:
            raise RedisConnectionError("Connection closed by server.")

    worker = await start_worker(drop_redis_once)
    await eventually(lambda: _restarted(worker), what="the poll loop restarted")
    polled = worker.polled_at
    await eventually(lambda: _later(worker, polled), what="polling again")
    assert not worker.supervisor.failed.is_set()
    beat = await _beat(redis, worker)
    assert beat is not None and beat.serving_capacity == 2


async def _polling(redis, worker: VoicepoolWorker, since: float) -> bool:
    return worker.polled_at > since and await _beat(redis, worker) is not None


async def _restarted(worker: VoicepoolWorker) -> bool:
    return worker.supervisor.restarts("arq") == 1


async def _later(worker: VoicepoolWorker, than: float) -> bool:
    return worker.polled_at > than


async def test_any_other_failure_ends_the_worker_with_exit_code_1(start_worker, redis) -> None:
    def break_for_good(n: int) -> None:
        if n == 3:
            raise RuntimeError("a bug in the poll loop")

    worker = await start_worker(break_for_good)
    await asyncio.wait_for(worker.supervisor.failed.wait(), 10)
    assert worker.free_slots() == 0  # from the moment it failed
    run = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "VoicepoolWorker.run")  # type: ignore[union-attr]  # typeshed: get_coro() may be a generator, typed without __qualname__
    assert await asyncio.wait_for(run, 20) == 1
    assert await _beat(redis, worker) is None  # gone from the fleet, not listed as capacity


async def test_a_hung_poll_loop_is_stalled_and_no_capacity(start_worker, redis) -> None:
    release = asyncio.Event()

    async def hang(n: int) -> None:
        if n == 3:
            await release.wait()  # stuck, but the heartbeat goes on

    worker = await start_worker(hang)
    reaper = Reaper(LiveSessions(redis), queue_ttl=30, pools=[POOL])
    await reaper.observe_fleet()
    assert _gauge("voicepool_pool_capacity_sessions") == 2

    async def stalled() -> bool:
        beat = await _beat(redis, worker)
        return beat is not None and beat.stalled

    await eventually(stalled, timeout=POLL_STALL_S + 5, what="a stalled beat")
    beat = await _beat(redis, worker)
    assert beat is not None and beat.serving_capacity == 0
    assert beat.poll_age is not None and beat.poll_age > POLL_STALL_S
    await reaper.observe_fleet()
    assert _gauge("voicepool_pool_capacity_sessions") == 0
    assert _gauge("voicepool_pool_workers_stalled") == 1

    release.set()  # it comes unstuck: capacity again
    await eventually(lambda: _serving(redis, worker), what="capacity again")


async def _serving(redis, worker: VoicepoolWorker) -> bool:
    beat = await _beat(redis, worker)
    return beat is not None and beat.serving_capacity == 2


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"pool": POOL})


# --- pickup: woken, not polling ---------------------------------------------------------

SLOW_POLL_S = 2.5  # the safety net, far off: whatever wakes the worker sooner is not it


async def _poll_after(polls: list[float], since: float) -> bool:
    return bool(polls) and polls[-1] > since


async def test_an_idle_worker_is_woken_by_a_ring_not_by_its_poll(start_worker, redis) -> None:
    polls: list[float] = []
    await start_worker(lambda n: polls.append(time.monotonic()), safety_poll=SLOW_POLL_S)
    await eventually(lambda: _poll_after(polls, 0.0), what="a first poll")
    polled = polls[-1]
    await eventually(lambda: _waiting_on_the_doorbell(redis), what="blocked on the doorbell")
    rung = time.monotonic()
    await queue.ring(redis, POOL)
    await eventually(lambda: _poll_after(polls, rung), timeout=SLOW_POLL_S, what="a poll")
    assert polls[-1] - polled < SLOW_POLL_S  # the ring, not the safety poll
    assert await redis.llen(keys.doorbell(POOL)) == 0  # the ring was taken


async def _waiting_on_the_doorbell(redis) -> bool:
    clients = await redis.client_list()
    return any(c.get("cmd") == "blpop" and POOL in c.get("name", "") for c in clients)


async def test_a_full_worker_polls_the_moment_a_slot_frees(start_worker, redis) -> None:
    polls: list[float] = []
    worker = await start_worker(lambda n: polls.append(time.monotonic()), safety_poll=SLOW_POLL_S)
    calls = [
        SimpleNamespace(
            id=f"call-{i}", handed_off=True, end_reason=None, movable=False, duration=1.0
        )
        for i in range(2)
    ]  # stand-ins for calls: only counted
    full = time.monotonic()
    worker.sessions.update({c.id: c for c in calls})
    await eventually(lambda: _poll_after(polls, full), what="a poll while full")
    freed = time.monotonic()
    worker._finished(calls[0])
    await eventually(lambda: _poll_after(polls, freed), timeout=SLOW_POLL_S, what="a poll")
    assert polls[-1] - freed < SLOW_POLL_S / 2
    assert worker.free_slots() == 1
    worker._finished(calls[1])
