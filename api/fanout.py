"""Live fan-out: one Redis reader per session stream per API process, shared by its subscribers.

Without it every SSE client holds its own blocking XREAD, so an event to 500
watchers is read and decoded 500 times, over 500 Redis connections. Here one
task reads each watched stream and hands entries to the subscribers' queues.
A subscriber joins without a gap: it registers first (so live entries queue
up), then reads the backlog with XRANGE, then drains its queue, skipping ids
it has already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

READ_BLOCK_MS = 15000
READ_COUNT = 500
GONE = None  # queued to subscribers when the stream no longer exists

Render = Callable[[str, dict[str, str]], Any]  # one stream entry → what subscribers send


class _Hub:
    def __init__(self, redis: aioredis.Redis, stream: str, render: Render):
        self.redis = redis
        self.stream = stream
        self.render = render
        self.queues: set[asyncio.Queue[Any]] = set()
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"fanout-{stream}")

    async def _run(self) -> None:
        newest = await self.redis.xrevrange(self.stream, count=1)
        last = newest[0][0] if newest else "0-0"
        self.started.set()  # from here on nothing after `last` is missed
        while True:
            try:
                reply = await self.redis.xread(
                    {self.stream: last}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: keep the subscribers, retry
                log.warning("fan-out read of %s failed: %s", self.stream, exc)
                await asyncio.sleep(0.5)
                continue
            if not reply:
                if not await self.redis.exists(self.stream):
                    for queue in self.queues:
                        queue.put_nowait(GONE)
                    return
                continue
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    rendered = self.render(entry_id, fields)  # once, for every subscriber
                    for queue in self.queues:
                        queue.put_nowait(rendered)


class StreamFanout:
    def __init__(self, redis: aioredis.Redis, render: Render):
        self.redis = redis
        self.render = render
        self._hubs: dict[str, _Hub] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, stream: str) -> AsyncIterator[asyncio.Queue[Any]]:
        """Rendered entries of ``stream`` as they arrive; ``GONE`` when it expires."""
        hub = self._hubs.get(stream)
        if hub is None or hub.task.done():
            hub = self._hubs[stream] = _Hub(self.redis, stream, self.render)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        hub.queues.add(queue)
        try:
            await hub.started.wait()
            yield queue
        finally:
            hub.queues.discard(queue)
            if not hub.queues:
                hub.task.cancel()
                if self._hubs.get(stream) is hub:
                    del self._hubs[stream]

    async def aclose(self) -> None:
        for hub in list(self._hubs.values()):
            hub.task.cancel()
        self._hubs.clear()


async def next_batch(queue: asyncio.Queue[Any]) -> list[Any] | None:
    """Everything queued for a subscriber (waiting for the first); None once ``GONE``.

    A subscriber that fell behind (a slow client, or a process busy with many
    subscribers) sends what queued up in one write, not one write per event:
    past saturation each write carries more events instead of the backlog
    growing.
    """
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    if items[-1] is GONE:  # always last: the hub stops after queueing it
        if len(items) == 1:
            return None
        queue.put_nowait(GONE)  # for the next call, after these are sent
        return items[:-1]
    return items


def after(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq or 0)) > (int(b_ms), int(b_seq or 0))
