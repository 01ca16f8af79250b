"""A call moving between workers: when the old one may let it go, what the new one rebuilds.

A draining worker hands a call over at a quiet moment — nobody speaking, no
tool running, no answer on its way — which ``QuietWatch`` tells from the events
the session emits. The worker that takes a ``recovering`` session up rebuilds
it from Redis: the conversation so far is the transcript the API gave the
session at its start plus what this session's own event stream recorded, and
its limits count from when it was first ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, cast

import redis.asyncio as aioredis

from shared import keys
from shared.events import EventType

QUIET_S = 0.3
"""How long everything must have been still before a call is handed over."""
REPLY_S = 2.0
"""After the user stops speaking (or a tool is done), an answer may be on its way for this
long (a model thinking)."""
MAX_RECOVERED_MESSAGES = 400
"""This session's own transcript messages given to the model again (the latest)."""


class QuietWatch:
    """Whether the call is at a quiet moment, from the events its session emits: the user
    speaking (``user.turn_started`` → ``stopped``), the bot speaking, a tool running
    (``tool.started`` → ``completed`` | ``failed``), or an answer due after the user's turn
    or a tool's result."""

    def __init__(self) -> None:
        self._user = False
        self._bot = False
        self._tools = 0
        self._reply_due = 0.0  # monotonic time until which an answer may still come
        self._changed_at = time.monotonic()
        self._changed = asyncio.Event()

    def see(self, type: str, _data: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if type == EventType.USER_TURN_STARTED:
            self._user = True
        elif type == EventType.USER_TURN_STOPPED:
            self._user = False
            self._reply_due = now + REPLY_S
        elif type == EventType.BOT_STARTED_SPEAKING:
            self._bot = True
            self._reply_due = 0.0
        elif type == EventType.BOT_STOPPED_SPEAKING:
            self._bot = False
        elif type == EventType.TOOL_STARTED:
            self._tools += 1
        elif type in (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED):
            self._tools = max(self._tools - 1, 0)
            self._reply_due = now + REPLY_S  # the model answers with what the tool said
        else:
            return
        self._changed_at = now
        self._changed.set()

    def quiet_in(self) -> float | None:
        """Seconds until the call is quiet if nothing else happens (0: it is now); None
        while someone speaks or a tool runs."""
        if self._user or self._bot or self._tools:
            return None
        now = time.monotonic()
        return max(self._changed_at + QUIET_S - now, self._reply_due - now, 0.0)

    async def wait_quiet(self, deadline: float) -> bool:
        """Wait for a quiet moment, until ``deadline`` (monotonic); whether one came."""
        while True:
            wait = self.quiet_in()
            if wait == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait(), left if wait is None else min(left, wait)
                )


def _when(data: dict[str, Any]) -> float:
    """When a transcript's turn started (``started``, ISO 8601), else when it was recorded."""
    started = data.get("started")
    if isinstance(started, str) and started:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(started).timestamp()
    return float(data.get("at") or 0.0)


async def session_transcript(redis: aioredis.Redis, session_id: str) -> list[dict[str, str]]:
    """What was said in this session so far, as chat messages in the order it was said (a
    user's transcript may be recorded after the answer to it has begun)."""
    entries = await redis.xrange(keys.session_events(session_id))
    said: list[tuple[float, int, dict[str, str]]] = []
    for n, (_id, fields) in enumerate(entries):
        kind = fields.get("type")
        if kind not in (EventType.USER_TRANSCRIPT, EventType.ASSISTANT_TRANSCRIPT):
            continue
        data = json.loads(fields.get("data") or "{}")
        if not data.get("text"):
            continue
        role = "user" if kind == EventType.USER_TRANSCRIPT else "assistant"
        said.append((_when(data), n, {"role": role, "content": str(data["text"])}))
    said.sort(key=lambda item: (item[0], item[1]))
    return [message for _t, _n, message in said][-MAX_RECOVERED_MESSAGES:]


async def resumed_meta(
    redis: aioredis.Redis, session_id: str, meta: dict[str, str]
) -> dict[str, str]:
    """A recovering session's record as the worker taking it up runs it: its history is
    the earlier conversation plus this session's transcript so far, and ``live_since``
    says when it was first ready (kept in the hash from the first recovery on)."""
    history: list[dict[str, str]] = json.loads(meta.get("history") or "[]")
    history += await session_transcript(redis, session_id)
    since = meta.get("live_since") or meta.get("ready_ts") or ""
    if since and not meta.get("live_since"):
        await cast("Awaitable[int]", redis.hsetnx(keys.session(session_id), "live_since", since))
    return {**meta, "history": json.dumps(history), "live_since": since}
