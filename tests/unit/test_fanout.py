"""Live fan-out (real redis-server): one reader per stream, batches, the end of a stream."""

from __future__ import annotations

import asyncio

from api.fanout import GONE, StreamFanout, next_batch


def _render(entry_id: str, fields: dict[str, str]) -> tuple[str, str]:
    return entry_id, fields["n"]


async def test_next_batch_takes_everything_queued_and_keeps_gone_for_the_next_call() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    waiting = asyncio.create_task(next_batch(queue))
    await asyncio.sleep(0.01)  # a window: nothing queued, so it must still be waiting
    assert not waiting.done()  # it waits for the first entry
    queue.put_nowait("a")
    assert await waiting == ["a"]
    for item in ("b", "c", GONE):
        queue.put_nowait(item)
    assert await next_batch(queue) == ["b", "c"]  # what came before the end is sent first
    assert await next_batch(queue) is None


async def test_subscribers_share_one_reader_and_get_every_entry_in_order(redis) -> None:
    fanout = StreamFanout(redis, _render)
    await redis.xadd("s", {"n": "before"})  # the backlog is the subscriber's, not the hub's
    async with fanout.subscribe("s") as first, fanout.subscribe("s") as second:
        assert len(fanout._hubs) == 1
        for n in range(5):
            await redis.xadd("s", {"n": str(n)})
        for queue in (first, second):
            got: list[str] = []
            while len(got) < 5:
                batch = await asyncio.wait_for(next_batch(queue), 5)
                assert batch is not None
                got += [n for _id, n in batch]
            assert got == ["0", "1", "2", "3", "4"]
    assert fanout._hubs == {}  # the last subscriber leaving stops the reader
    await fanout.aclose()


async def test_a_stream_that_expires_ends_its_subscribers(redis, monkeypatch) -> None:
    monkeypatch.setattr("api.fanout.READ_BLOCK_MS", 100)
    fanout = StreamFanout(redis, _render)
    await redis.xadd("s", {"n": "0"})
    async with fanout.subscribe("s") as queue:
        await redis.delete("s")
        assert await asyncio.wait_for(next_batch(queue), 5) is None
    await fanout.aclose()
