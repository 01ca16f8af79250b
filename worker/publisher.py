"""Sends a session's events to Redis without ever blocking the pipeline.

Processors and observers call ``emit`` (synchronous, never waits); a
background task publishes in order. Redis hiccups are retried by the client;
an event is only dropped if Redis stays unreachable past the retries, and
that is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from shared.live import LiveSessions
from worker.metrics import PUBLISH_ERRORS

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 5


class EventPublisher:
    def __init__(self, live: LiveSessions, session_id: str):
        self.live = live
        self.session_id = session_id
        self.speaker: Callable[[], dict[str, str] | None] | None = None
        """Who is speaking, where a transport can tell (several people in a Daily room):
        every ``user.*`` event then names its participant."""
        self.published = 0
        self.failed = 0
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"publish-{session_id}")

    def emit(self, type: str, data: dict[str, Any] | None = None) -> None:
        payload = dict(data or {})
        payload.setdefault("at", round(time.time(), 6))
        if self.speaker is not None and type.startswith("user."):
            who = self.speaker()
            if who:
                payload.setdefault("participant", who)
        self._queue.put_nowait((type, payload))

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            type, data = item
            await self._send(type, data)
            self._queue.task_done()
        self._queue.task_done()

    async def _send(self, type: str, data: dict[str, Any]) -> None:
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await self.live.publish(self.session_id, type, data)
                self.published += 1
                return
            except Exception as exc:  # Redis gone for longer than the client retries
                if attempt == PUBLISH_ATTEMPTS - 1:
                    self.failed += 1
                    PUBLISH_ERRORS.inc()
                    log.error("event %s of %s dropped: %s", type, self.session_id, exc)
                else:
                    await asyncio.sleep(0.2 * (attempt + 1))

    async def flush(self) -> None:
        """Wait until everything emitted so far is published."""
        if not self._task.done():
            await self._queue.join()

    async def aclose(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
