"""uvicorn's server, waking once a second when idle instead of ten times; its httptools
protocol, with request heads bounded as its h11 protocol bounds them.

uvicorn's main loop sleeps 0.1 s between looks at ``should_exit`` and refreshes its
``Date`` header every tenth look. Those ten wake-ups a second were 0.0025 cores of an
otherwise idle process (a bare uvicorn server, 10 s, asyncio's loop): half of what an
idle worker used in all (``ops/bench/anchor.py``'s idle row, 0.005 cores), for a
listener that only has to notice it should stop. ``QuietServer`` looks once a second, as
often as the header changes, and is woken at once when told to stop (``exit``, or a
signal uvicorn handles), so stopping takes no longer than before.

``bounded_http``: uvicorn's h11 protocol stops buffering a request head that is still
unfinished past ``h11_max_incomplete_event_size``; its httptools protocol takes headers
for as long as they come. httptools costs less: an authenticated request took 0.75x the
API's CPU and 0.88x the time from request to answer that it took with h11, one at a time,
and the bound costs nothing measurable (0.92x and 0.98x of uvicorn's own httptools
protocol: ops/bench/http_parser.py, medians of 30 interleaved rounds).
``shared/httptools_protocol.py`` counts a head's bytes as they arrive and refuses it, as
h11 does (400, connection closed), once it is still unfinished past ``MAX_HEAD_BYTES``: at
most one socket read more than that is buffered, as with h11.

Used by the API (``voicepool api``) and each worker's WebSocket listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from types import FrameType
from typing import Literal

import uvicorn
from uvicorn.config import STARTUP_FAILURE

TICK_S = 1.0
TICKS_PER_SECOND = 10  # what on_tick counts in: it refreshes the Date header at multiples
MAX_HEAD_BYTES = 16 * 1024  # a request line and headers; browsers send about 1-2 KiB


class QuietServer(uvicorn.Server):
    """``uvicorn.Server`` with a main loop that sleeps a second, or until it should exit."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # uvicorn's own loop, slower; guarded by tests/unit/test_upstream_hooks.py::test_uvicorn_tick
    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + TICKS_PER_SECOND) % 864000  # a second on: a Date refresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            should_exit = await self.on_tick(counter)

    def exit(self) -> None:
        """Stop serving (gracefully, as on SIGTERM), from the server's own loop."""
        self.should_exit = True
        if self._wake is not None:
            self._wake.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler: it runs between two bytecodes of whatever the loop was doing.
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def bounded_http() -> type[asyncio.Protocol] | Literal["h11"]:
    """uvicorn's ``http`` with request heads bounded: ``BoundedHttpToolsProtocol`` where
    httptools is installed (every API host: the ``api`` extra has it), else h11, bounding
    them itself with ``h11_max_incomplete_event_size=MAX_HEAD_BYTES`` (a worker-only host,
    a Jetson board say, installs no httptools)."""
    try:
        from shared.httptools_protocol import BoundedHttpToolsProtocol
    except ImportError:
        return "h11"
    return BoundedHttpToolsProtocol


def run(config: uvicorn.Config) -> None:
    """``uvicorn.run`` for one process (no reload, no workers), with a ``QuietServer``: as
    it, a server that never started exits the process with uvicorn's STARTUP_FAILURE."""
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
