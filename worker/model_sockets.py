"""Model connections opened before a session asks for one (``WorkerOptions.warm_model_sockets``).

An ``assistant`` session's model service opens its Realtime WebSocket as its
pipeline starts: a TCP connect, a TLS handshake and an HTTP upgrade to the
model's host, several round trips to a far server between the session's start
and the model hearing its first audio (the greeting waits for them). A worker
can keep a few opened ahead, and the service takes one instead of connecting
(``take``). The model's ``session.created`` waits in the socket's buffer and is
read as if it had just arrived, so what follows (the session's
``session.update``: its instructions, voice, tools and history) is the same.

Off by default (0): at the provider an open socket is a session, which counts
against its limits and which it ends after a while (OpenAI caps a Realtime
session's length). A spare is replaced once it is ``MAX_AGE_S`` old or as soon
as it closes, so a session never takes one about to be cut. Spares are opened
with the worker's own key and model, to the configured URL, exactly as the
service opens its own (``open_model_socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.protocol import State

from worker import metrics
from worker.options import AssistantConfig

log = logging.getLogger(__name__)

# A call that takes a spare has at most this much less of the length the provider allows
# one session; replacing a spare this often costs one handshake every few minutes.
MAX_AGE_S = 5 * 60.0
CLOSE_TIMEOUT_S = 1.0  # for the close handshake: a dead socket never answers it
OPEN_TIMEOUT_S = 10.0  # one attempt to open a spare (nobody waits on it)
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after failed opens, the last one repeating
# After a take, before the replacement is opened: the taking session's own setup goes
# first. Opened at once, the replacement's TLS handshake ran on the loop while the session
# read its first event: 1.0 ms (p50) instead of 0.4 (ops/bench/model_socket.py).
REFILL_DELAY_S = 0.1


def realtime_url(config: AssistantConfig) -> str:
    """The URL a session's model service connects to (Pipecat adds the model this way)."""
    return f"{config.base_url}?model={config.model}"


def auth_headers(api_key: str) -> dict[str, str]:
    """What Pipecat's ``OpenAIRealtimeLLMService._auth_headers`` sends with this key
    (guarded by tests/unit/test_upstream_hooks.py::test_rt_connect)."""
    return {"Authorization": f"Bearer {api_key}"}


async def open_model_socket(
    url: str, headers: dict[str, str], *, open_timeout: float
) -> ClientConnection:
    """Open a Realtime WebSocket as the assistant's model service does."""
    return await websocket_connect(
        uri=url,
        additional_headers=headers,
        open_timeout=open_timeout,
        close_timeout=CLOSE_TIMEOUT_S,
        # Not Pipecat's default: nearly every message is base64 audio, which deflate cannot
        # shrink, and deflating it was a visible part of a worker's CPU (py-spy).
        compression=None,
    )


class ModelSockets:
    """Keeps ``count`` Realtime sockets open for this worker's sessions to take.

    ``run`` is one of the worker's supervised tasks: it opens what is missing, replaces a
    socket that closed or grew old, and backs off while the model cannot be reached
    (meanwhile a session opens its own, and fails as it would have)."""

    def __init__(self, config: AssistantConfig, count: int, pool: str):
        if not config.api_key:
            raise ValueError("spare model sockets need the worker's OPENAI_API_KEY")
        self.url = realtime_url(config)
        self.count = count
        self._headers = auth_headers(config.api_key)
        self._spare: deque[tuple[float, ClientConnection]] = deque()  # (opened at, socket)
        self._wanted = asyncio.Event()  # one was taken, or closed: look again
        self._failures = 0  # opens failed in a row
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gauge = metrics.MODEL_SOCKETS_SPARE.labels(pool=pool)
        self._taken = metrics.MODEL_SOCKETS_TAKEN.labels(pool=pool)

    @classmethod
    def for_worker(
        cls, config: AssistantConfig, count: int, profiles: list[str], pool: str
    ) -> ModelSockets | None:
        """The worker's spare sockets, or None: none asked for, no assistant, or no key."""
        if count <= 0 or "assistant" not in profiles or not config.api_key:
            return None
        return cls(config, count, pool)

    @property
    def spare(self) -> int:
        """Sockets open and waiting now."""
        return len(self._spare)

    def take(self, url: str) -> ClientConnection | None:
        """An open socket to ``url`` that is not too old, or None (the caller connects)."""
        if url != self.url:
            return None
        self._drop_stale()
        found = self._spare.popleft()[1] if self._spare else None
        self._wanted.set()
        self._gauge.set(len(self._spare))
        if found is not None:
            self._taken.inc()
        return found

    async def run(self) -> None:
        while True:
            self._drop_stale()
            if len(self._spare) < self.count:
                await self._open_one()
                continue
            self._wanted.clear()
            # Woken when one is taken or closes; else when the oldest grows too old.
            wait = max(self._spare[0][0] + MAX_AGE_S - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), wait)
                await asyncio.sleep(REFILL_DELAY_S)

    async def _open_one(self) -> None:
        try:
            socket = await open_model_socket(self.url, self._headers, open_timeout=OPEN_TIMEOUT_S)
        except Exception as exc:  # refused, unreachable, timed out: later, never fatal
            delay = RETRY_DELAYS_S[min(self._failures, len(RETRY_DELAYS_S) - 1)]
            self._failures += 1
            log.warning("could not open a spare model socket (%s); again in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            return
        self._failures = 0
        self._spare.append((time.monotonic(), socket))
        self._gauge.set(len(self._spare))
        self._spawn(self._watch(socket))

    async def _watch(self, socket: ClientConnection) -> None:
        await socket.wait_closed()
        self._wanted.set()

    def _drop_stale(self) -> None:
        """Close and forget the spares that closed or grew too old."""
        now = time.monotonic()
        keep: deque[tuple[float, ClientConnection]] = deque()
        for opened_at, socket in self._spare:
            if socket.state is State.OPEN and now - opened_at < MAX_AGE_S:
                keep.append((opened_at, socket))
            else:
                self._spawn(_close(socket))
        self._spare = keep
        self._gauge.set(len(keep))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        spare, self._spare = [socket for _at, socket in self._spare], deque()
        self._gauge.set(0)
        await asyncio.gather(*(_close(socket) for socket in spare))
        for task in list(self._tasks):
            task.cancel()


async def _close(socket: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await socket.close()
