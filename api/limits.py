"""Rate limits and concurrency bounds, kept in Redis so every API process shares them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import redis.asyncio as aioredis

from api.errors import ApiError, too_many
from shared import keys

log = logging.getLogger(__name__)


async def hit(redis: aioredis.Redis, scope: str, who: str, *, limit: int, per_s: int) -> None:
    """Count one request in a fixed window; over ``limit`` → 429 with ``Retry-After``."""
    if limit <= 0:
        return
    key = window_key(scope, who, per_s)  # once: a window may turn between two reads
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, per_s + 1)
        count, _ = await pipe.execute()
    if count > limit:
        raise rate_limited(limit, per_s)


def window_key(scope: str, who: str, per_s: int) -> str:
    """The counter of ``who``'s requests in the current fixed window of ``per_s``."""
    return f"{keys.PREFIX}:rate:{scope}:{who}:{int(time.time()) // per_s}"


def rate_limited(limit: int, per_s: int) -> ApiError:
    retry = per_s - int(time.time()) % per_s
    return too_many(
        "rate_limited", f"too many requests; at most {limit} per {per_s} s", max(retry, 1)
    )


def too_many_streams(limit: int) -> ApiError:
    return too_many(
        "too_many_streams",
        f"at most {limit} live updates may be open per user; close another tab or window "
        "showing a session, or wait a minute",
        10,
    )


def too_many_signals(limit: int) -> ApiError:
    return too_many(
        "too_many_requests",
        f"at most {limit} connection requests may wait at once per user; "
        "wait for the others to finish",
        2,
    )


# One entry per open stream or request in the user's sorted set, scored by when
# its lease runs out. The holder removes its own entry when it is done; entries
# of a process that died lapse by themselves within the lease. A refused attempt
# writes nothing, so refusals extend nothing.
# KEYS: 1 the holder set; ARGV: 1 now, 2 lease ends, 3 limit (0: none), 4 holder id
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class Leases:
    """At most ``limit`` concurrent holders per user (open event streams, signalling
    requests in flight), counted across every API process.

    ``take`` either records a lease or raises 429; ``release`` gives it back from
    anywhere, a cancelled task's ``finally`` included (it schedules its own task,
    which the cancellation cannot stop). Long holders are renewed by ``run``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        scope: str,
        *,
        lease_s: float,
        refusal: Callable[[int], ApiError],
    ):
        self.redis = redis
        self.scope = scope
        self.lease_s = lease_s
        self._refusal = refusal
        self._take = redis.register_script(_TAKE)
        self._held: dict[str, str] = {}  # holder id → user
        self._releasing: set[asyncio.Task[int]] = set()

    def _key(self, who: str) -> str:
        return keys.leases(self.scope, who)

    async def take(self, who: str, *, limit: int) -> str:
        """A lease of ``who``'s, or 429. A take cancelled once its step was sent (a client
        gone while its stream opened) gives back what the step may have taken, as
        ``release`` does; it would otherwise hold a slot until the lease lapsed."""
        holder = secrets.token_hex(8)
        now = time.time()
        self._held[holder] = who
        try:
            taken = await self._take(
                keys=[self._key(who)], args=[repr(now), repr(now + self.lease_s), limit, holder]
            )
        except BaseException:
            self.release(holder)
            raise
        if not taken:
            del self._held[holder]
            raise self._refusal(limit)
        return holder

    def release(self, holder: str) -> None:
        who = self._held.pop(holder, None)
        if who is None:
            return
        removal = cast("Coroutine[Any, Any, int]", self.redis.zrem(self._key(who), holder))
        task = asyncio.get_running_loop().create_task(removal)
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[Any]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a %s lease was not released (it lapses by itself)", self.scope)

    @contextlib.asynccontextmanager
    async def hold(self, who: str, *, limit: int) -> AsyncIterator[None]:
        holder = await self.take(who, limit=limit)
        try:
            yield
        finally:
            self.release(holder)

    async def renew(self) -> None:
        """Push the lease of every holder of this process forward."""
        if not self._held:
            return
        ends = time.time() + self.lease_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for holder, who in list(self._held.items()):
                pipe.zadd(self._key(who), {holder: ends}, xx=True)
                pipe.expireat(self._key(who), math.ceil(ends))
            await pipe.execute()

    async def run(self) -> None:
        """Renew leases for as long as the process runs (a third of the lease apart)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except Exception as exc:  # Redis away: the next round tries again
                log.warning("renewing %s leases: %s", self.scope, exc)

    async def aclose(self) -> None:
        for holder in list(self._held):
            self.release(holder)
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=2)
