"""Every long-lived task of a worker process, watched.

A worker whose poll loop died but whose heartbeat lives on is the worst kind
of failure: operators see free slots, users see sessions expire. So no
long-lived task runs unwatched. A task that stops for a transient cause
(Redis unreachable) is restarted with backoff; any other end — an unexpected
exception, or returning at all — is fatal: the process stops with a non-zero
exit code and systemd, compose or Kubernetes start a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.connections import REDIS_AWAY

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)  # capped at 1 s: jobs resume within 2 s of Redis
HEALTHY_AFTER_S = 10.0  # a task that ran this long starts its backoff afresh


@dataclass
class Supervised:
    name: str
    factory: Callable[[], Awaitable[None]]
    restarts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class TaskSupervisor:
    """Runs named tasks forever; ``failure`` is set when one of them ends for good."""

    def __init__(self, *, on_restart: Callable[[str], None] | None = None):
        self._tasks: dict[str, Supervised] = {}
        self._on_restart = on_restart
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as task ``name``; it is expected to run until cancelled."""
        watched = Supervised(name, factory)
        watched.task = asyncio.create_task(self._watch(watched), name=name)
        self._tasks[name] = watched

    def restarts(self, name: str) -> int:
        return self._tasks[name].restarts

    async def _watch(self, watched: Supervised) -> None:
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                await watched.factory()
                error: BaseException = RuntimeError(f"task {watched.name} returned")
            except asyncio.CancelledError:
                raise
            except REDIS_AWAY as exc:
                if time.monotonic() - began > HEALTHY_AFTER_S:
                    attempt = 0
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                attempt += 1
                watched.restarts += 1
                log.warning("%s stopped (%s); restarting in %.1f s", watched.name, exc, delay)
                if self._on_restart is not None:
                    self._on_restart(watched.name)
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                error = exc
            log.critical("%s ended for good: %r", watched.name, error, exc_info=error)
            if self.failure is None:
                self.failure = error
            self.failed.set()
            return

    async def aclose(self) -> None:
        tasks = [w.task for w in self._tasks.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
