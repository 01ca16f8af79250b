"""Rate limits and concurrency bounds, kept in Redis so every API process shares them."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from api.errors import ApiError
from shared import keys


async def hit(redis: aioredis.Redis, scope: str, who: str, *, limit: int, per_s: int) -> None:
    """Count one request in a fixed window; over ``limit`` → 429 with ``Retry-After``."""
    if limit <= 0:
        return
    window = int(time.time()) // per_s
    key = f"{keys.PREFIX}:rate:{scope}:{who}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, per_s + 1)
        count, _ = await pipe.execute()
    if count > limit:
        retry = per_s - int(time.time()) % per_s
        raise ApiError(
            429, "rate_limited", f"too many requests; at most {limit} per {per_s} s",
            headers={"Retry-After": str(max(retry, 1))},
        )  # fmt: skip


def _open_key(scope: str, who: str) -> str:
    return f"{keys.PREFIX}:open:{scope}:{who}"


async def take_slot(redis: aioredis.Redis, scope: str, who: str, *, limit: int) -> None:
    """Take one of ``limit`` concurrent slots (e.g. open SSE streams of one user) or 429.

    Give it back with ``release_slot``. Slots of a crashed process come back within
    the hour (the counter expires).
    """
    key = _open_key(scope, who)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 3600)
        count, _ = await pipe.execute()
    if limit > 0 and count > limit:
        await redis.decr(key)
        raise ApiError(
            429, "too_many_streams", f"at most {limit} open event streams per user",
            headers={"Retry-After": "5"},
        )  # fmt: skip


async def release_slot(redis: aioredis.Redis, scope: str, who: str) -> None:
    await redis.decr(_open_key(scope, who))
