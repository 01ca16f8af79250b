"""Event-loop health: the lag monitor sees a blocked loop; a stuck pipeline's heartbeat
timeouts are counted."""

from __future__ import annotations

import asyncio
import contextlib
import time

from pipecat.frames.frames import Frame, HeartbeatFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner
from prometheus_client import REGISTRY

from harness.waiting import eventually
from worker.loop_monitor import watch_event_loop
from worker.pipeline_health import count_heartbeat_timeouts

LAG = "voicepool_worker_event_loop_lag_seconds"
TIMEOUTS = "voicepool_worker_pipeline_heartbeat_timeouts_total"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_lag_monitor_observes_a_blocked_loop() -> None:
    pool = "test-loop-lag"
    before = {s: sample(f"{LAG}_{s}", pool=pool) for s in ("sum", "count")}
    fast_before = sample(f"{LAG}_bucket", pool=pool, le="0.1")
    monitor = asyncio.create_task(watch_event_loop(pool, interval=0.01))
    await asyncio.sleep(0)  # the monitor is asleep now, due to wake in 10 ms
    asyncio.get_running_loop().call_soon(time.sleep, 0.2)  # a blocking call in some session

    await eventually(
        lambda: sample(f"{LAG}_sum", pool=pool) - before["sum"] >= 0.15,
        timeout=5,
        what="the 0.2 s stall in the lag histogram",
    )
    count = sample(f"{LAG}_count", pool=pool) - before["count"]
    fast = sample(f"{LAG}_bucket", pool=pool, le="0.1") - fast_before
    assert count >= 1 and fast < count  # one sample saw the whole stall
    assert not monitor.done()  # it keeps watching
    monitor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await monitor


class SwallowHeartbeats(FrameProcessor):
    """A processor that never passes heartbeats on, as a stuck one would not."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, HeartbeatFrame):
            await self.push_frame(frame, direction)


class PassThrough(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


def heartbeat_worker(processor: FrameProcessor, pool: str) -> PipelineWorker:
    worker = PipelineWorker(
        Pipeline([processor]),
        params=PipelineParams(
            enable_heartbeats=True, heartbeats_period_secs=0.05, heartbeats_monitor_secs=0.2
        ),
    )
    count_heartbeat_timeouts(worker, pool=pool, session_id=f"session-{pool}")
    return worker


async def test_heartbeat_timeouts_of_a_stuck_pipeline_are_counted() -> None:
    stuck, healthy = "test-heartbeat-stuck", "test-heartbeat-healthy"
    workers = [
        heartbeat_worker(SwallowHeartbeats(), stuck),
        heartbeat_worker(PassThrough(), healthy),
    ]
    # Registering the handler exports the counter at 0, before any timeout.
    assert REGISTRY.get_sample_value(TIMEOUTS, {"pool": healthy}) is not None
    before = {pool: sample(TIMEOUTS, pool=pool) for pool in (stuck, healthy)}
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(*workers)
    running = asyncio.create_task(runner.run())
    try:
        # Two monitor periods without a heartbeat: the stall is counted each time.
        await eventually(
            lambda: sample(TIMEOUTS, pool=stuck) - before[stuck] >= 2,
            timeout=5,
            what="two heartbeat timeouts of the stuck pipeline",
        )
        assert sample(TIMEOUTS, pool=healthy) == before[healthy]  # its heartbeats got through
    finally:
        for worker in workers:
            await worker.cancel()
        await asyncio.wait_for(running, 5)
