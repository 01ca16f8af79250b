"""Sends a session's events and state changes to Redis without ever blocking the pipeline.

Processors and observers call ``emit`` (synchronous, never waits); the
session's own state changes go through ``transition``; one background task
writes both in the order they were made.

A live call needs no Redis for its media, so Redis being away must not cost
the call anything (DESIGN decision 2). While Redis is unreachable the task
keeps the items in memory and retries the head with backoff; when Redis
answers, they go out in order. Each carries a publisher number that Redis
remembers, so an item whose reply was lost and is sent again is written once.
The buffer is bounded: past ``max_buffered`` it drops the oldest events (never
a state change) and, when Redis returns, writes one ``session.gap`` event
where they were, saying how many and from when to when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.connections import REDIS_AWAY
from shared.events import EventType
from shared.lifecycle import MoveName, Reason
from shared.live import LiveSessions
from worker import metrics

log = logging.getLogger(__name__)

MAX_BUFFERED_EVENTS = 2000  # per session; ~10 minutes of a busy call's events
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # capped at 1 s: caught up within 1 s of Redis
PERMANENT_ATTEMPTS = 3  # a non-connection error (a script error) is tried this often


@dataclass
class _Event:
    type: str
    data: dict[str, Any]
    at: float


@dataclass
class _Transition:
    move: MoveName
    reason: Reason | str
    data: dict[str, Any]
    at: float
    done: asyncio.Future[bool] = field(default_factory=asyncio.Future)


_Item = _Event | _Transition


class EventPublisher:
    def __init__(
        self,
        live: LiveSessions,
        session_id: str,
        worker_id: str,
        *,
        max_buffered: int = MAX_BUFFERED_EVENTS,
    ):
        self.live = live
        self.session_id = session_id
        self.worker_id = worker_id
        """The owner it speaks for: once the session belongs to another worker, Redis
        refuses its events and moves."""
        self.max_buffered = max_buffered
        self.speaker: Callable[[], dict[str, str] | None] | None = None
        """Who is speaking, where a transport can tell (several people in a Daily room):
        every ``user.*`` event then names its participant."""
        self.watch: Callable[[str, dict[str, Any]], None] | None = None
        """Told of each event as it is emitted (the session's quiet-moment watch)."""
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self._pending: deque[_Item] = deque()
        self._gap: dict[str, Any] | None = None  # events dropped since the last one sent
        self._number = 0  # the last publisher number used (per session, increasing)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"publish-{session_id}")

    # --- what the session calls ----------------------------------------------------

    def emit(self, type: str, data: dict[str, Any] | None = None) -> None:
        payload = dict(data or {})
        payload.setdefault("at", round(time.time(), 6))
        if self.speaker is not None and type.startswith("user."):
            who = self.speaker()
            if who:
                payload.setdefault("participant", who)
        if self.watch is not None:
            self.watch(type, payload)
        self._push(_Event(type, payload, time.time()))
        if len(self._pending) > self.max_buffered:
            self._drop_oldest_event()

    def transition(
        self, move: MoveName, reason: Reason | str, *, data: dict[str, Any] | None = None
    ) -> asyncio.Future[bool]:
        """Queue one of the owner's moves (``shared.lifecycle.MOVES``) after everything
        emitted so far; the future says if it took effect (False: the session was not
        where the move starts, or belongs to another worker now)."""
        item = _Transition(move, reason, dict(data or {}), time.time())
        self._push(item)
        return item.done

    async def flush(self) -> None:
        """Wait until everything queued so far is written (however long Redis is away)."""
        await self._idle.wait()

    async def aclose(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop. Past ``timeout`` what is left is given up."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._abandon()

    # --- the writer ------------------------------------------------------------------

    def _push(self, item: _Item) -> None:
        self._pending.append(item)
        metrics.EVENTS_BUFFERED.inc()
        self._idle.clear()
        self._wake.set()

    def _drop_oldest_event(self) -> None:
        for i, item in enumerate(self._pending):
            if isinstance(item, _Event) and i > 0:  # the head may be in flight
                del self._pending[i]
                metrics.EVENTS_BUFFERED.dec()
                metrics.EVENTS_DROPPED.inc()
                self.dropped += 1
                gap = self._gap or {"dropped": 0, "from_at": item.at}
                gap["dropped"] += 1
                gap["to_at"] = item.at
                self._gap = gap
                return

    async def _run(self) -> None:
        while True:
            if not self._pending and self._gap is None:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._write_head()

    async def _write_head(self) -> None:
        """Write the oldest item (or the gap before it), retrying until Redis takes it."""
        gap_first = self._gap is not None and (
            not self._pending or self._pending[0].at > self._gap["to_at"]
        )
        if gap_first:
            assert self._gap is not None
            item: _Item = _Event(EventType.SESSION_GAP, self._gap, self._gap["from_at"])
        else:
            item = self._pending[0]
        self._number += 1
        number = self._number
        permanent_failures = 0
        attempt = 0
        while True:
            try:
                result = await self._send(item, number)
                break
            except asyncio.CancelledError:
                raise
            except REDIS_AWAY as exc:  # Redis away: keep it, and everything after it
                if attempt == 0:
                    log.warning(
                        "session %s: Redis unreachable (%s); holding %d events",
                        self.session_id, exc, len(self._pending),
                    )  # fmt: skip
                await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                attempt += 1
            except Exception as exc:
                permanent_failures += 1
                if permanent_failures >= PERMANENT_ATTEMPTS:
                    self.failed += 1
                    metrics.PUBLISH_ERRORS.inc()
                    log.error("session %s: %s not published: %s", self.session_id, item, exc)
                    result = False
                    break
                await asyncio.sleep(RETRY_BACKOFF_S[0])
        if gap_first:
            self._gap = None
        else:
            self._pending.popleft()
            metrics.EVENTS_BUFFERED.dec()
        if isinstance(item, _Transition) and not item.done.done():
            item.done.set_result(result)
        if attempt:
            log.info("session %s: Redis back; publishing again", self.session_id)

    async def _send(self, item: _Item, number: int) -> bool:
        if isinstance(item, _Event):
            ok = await self.live.publish(
                self.session_id,
                item.type,
                item.data,
                worker_id=self.worker_id,
                publisher_seq=number,
                at=item.at,
            )
            self.published += int(ok)
            return ok
        changed, _ = await self.live.move(
            self.session_id,
            item.move,
            item.reason,
            data=item.data,
            worker_id=self.worker_id,
            publisher_seq=number,
            at=item.at,
        )
        return changed

    def _abandon(self) -> None:
        lost = len(self._pending)
        if lost:
            log.error("session %s: %d events never reached Redis", self.session_id, lost)
            metrics.EVENTS_BUFFERED.dec(lost)
            metrics.PUBLISH_ERRORS.inc(lost)
        for item in self._pending:
            if isinstance(item, _Transition) and not item.done.done():
                item.done.set_result(False)
        self._pending.clear()
        self._idle.set()
