"""Event-loop lag: how late this worker's one asyncio loop runs what is due.

Every session of a worker shares one event loop, so a blocking call in any of
them (CPU-bound work, synchronous I/O, a long GC pause) delays the audio of all.
A task that only sleeps measures it: it wakes late by however long the loop
was busy elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from worker import metrics

# 20 samples/s: resolves stalls to ~50 ms (a few 20 ms audio frames) for negligible CPU.
LOOP_LAG_INTERVAL_S = 0.05
# With no call there is no audio to delay: one sample a second keeps the series alive. At
# 20/s this was half of an idle worker's 0.0065 cores (to 0.003, measured with psutil).
IDLE_LOOP_LAG_INTERVAL_S = 1.0


async def watch_event_loop(
    pool: str,
    interval: float = LOOP_LAG_INTERVAL_S,
    *,
    busy: Callable[[], bool] = lambda: True,
) -> None:
    """Observe the loop's lag every ``interval`` seconds while ``busy()``, else every
    ``IDLE_LOOP_LAG_INTERVAL_S``, forever."""
    lag = metrics.EVENT_LOOP_LAG_SECONDS.labels(pool=pool)
    while True:
        step = interval if busy() else max(interval, IDLE_LOOP_LAG_INTERVAL_S)
        asleep = time.monotonic()
        await asyncio.sleep(step)
        lag.observe(max(0.0, time.monotonic() - asleep - step))
