"""Per-user concurrency leases (real redis-server): a cancelled holder always gives its
slot back, a dead process's slots lapse, and a refusal extends nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.errors import ApiError
from api.limits import Leases, too_many_streams
from harness.waiting import eventually
from shared import keys


def _leases(redis, lease_s: float = 60.0) -> Leases:
    return Leases(redis, "sse", lease_s=lease_s, refusal=too_many_streams)


async def _none_held(redis: Any, key: str) -> bool:
    return await redis.zcard(key) == 0


async def test_a_cancelled_stream_gives_its_slot_back(redis) -> None:
    leases = _leases(redis)

    async def stream() -> None:  # as the SSE route's generator: released in `finally`
        lease = await leases.take("u1", limit=2)
        try:
            await asyncio.Event().wait()  # waiting for the next event when the client leaves
        finally:
            leases.release(lease)

    for _ in range(50):  # open and abandon, far more often than the limit
        task = asyncio.create_task(stream())
        await asyncio.sleep(0)  # one turn of the loop: the stream takes its lease
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    key = keys.leases("sse", "u1")
    # The releases run in their own tasks.
    await eventually(lambda: _none_held(redis, key), timeout=5, what="every lease released")
    await leases.take("u1", limit=2)
    await leases.take("u1", limit=2)
    with pytest.raises(ApiError) as refused:
        await leases.take("u1", limit=2)
    assert refused.value.status_code == 429
    assert refused.value.headers is not None and refused.value.headers["Retry-After"]


async def test_a_refusal_extends_nothing_and_dead_holders_lapse(redis) -> None:
    dead = _leases(redis, lease_s=1.0)  # a process that will never release or renew
    await dead.take("u1", limit=1)
    key = keys.leases("sse", "u1")
    ttl_before = await redis.pttl(key)
    alive = _leases(redis, lease_s=1.0)
    for _ in range(5):
        with pytest.raises(ApiError):
            await alive.take("u1", limit=1)
    assert 0 < await redis.pttl(key) <= ttl_before  # refused attempts extended nothing
    assert await redis.zcard(key) == 1
    await asyncio.sleep(1.1)  # time passing: past the dead holder's 1 s lease
    await alive.take("u1", limit=1)  # the dead process's lease lapsed


async def test_renewal_keeps_a_long_stream_counted(redis) -> None:
    leases = _leases(redis, lease_s=0.6)
    renewing = asyncio.create_task(leases.run())  # every 0.2 s
    try:
        await leases.take("u1", limit=1)
        await asyncio.sleep(1.0)  # longer than the lease
        with pytest.raises(ApiError):
            await leases.take("u1", limit=1)
    finally:
        renewing.cancel()
        await leases.aclose()
    key = keys.leases("sse", "u1")
    await eventually(lambda: _none_held(redis, key), timeout=5, what="the lease released")
