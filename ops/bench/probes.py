"""Featherweight subscribers that stamp each event the moment its bytes arrive.

Hundreds of subscribers share one client process (and the server's two
cores). With httpx or redis-py each delivery costs the client ~100 µs of
parsing, so the 500th subscriber's stamp would mostly measure the 499 before
it in the *client's* loop. These are bare ``asyncio.Protocol``s: a regex over
the SSE bytes, hiredis' C parser for RESP, a few µs per delivery. What is
left is the server's own delivery time.

Both read the ``bench.tick`` events the benchmark publishes, whose data is
``{"n": <index>, "sent": <time.time() at publish>}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from urllib.parse import urlsplit

import hiredis

_TICK = re.compile(rb'"n": (\d+), "sent": ([0-9.e+-]+)\}')


class SseProbe(asyncio.Protocol):
    """One SSE subscriber over raw HTTP/1.1; done when tick ``last`` arrives."""

    def __init__(self, url: str, headers: dict[str, str], last: int, latencies: list[float]):
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream",
                 *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.last = last
        self.latencies = latencies
        self.status: int | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.status is None:
            self.status = int(data.split(b" ", 2)[1])
            self.opened.set_result(self.status)
        buffer = self._buffer + data
        end = 0
        for match in _TICK.finditer(buffer):
            self.latencies.append(now - float(match[2]))
            end = match.end()
            if int(match[1]) == self.last and not self.done.done():
                self.done.set_result(None)
        self._buffer = buffer[end:]

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in (self.opened, self.done):
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"stream closed: {exc}"))


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class XreadProbe(asyncio.Protocol):
    """One subscriber reading the stream straight from Redis: XREAD BLOCK in a loop."""

    def __init__(self, stream: str, last: int, latencies: list[float], password: str | None = None):
        self.password = password
        self.stream = stream
        self.last = last
        self.latencies = latencies
        self.done = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader()
        self._after = "$"
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self.password:  # its +OK is the first reply, skipped in data_received
            self._transport.write(_command("AUTH", self.password))
        self._ask(self._after)

    def _ask(self, after: str) -> None:
        assert self._transport is not None
        self._transport.write(_command("XREAD", "BLOCK", "5000", "STREAMS", self.stream, after))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if self.password and reply == b"OK":
                self.password = None  # authenticated
                continue
            after = self._after
            for _stream, entries in reply or ():
                for entry_id, flat in entries:
                    after = entry_id.decode()
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    if fields.get(b"type") != b"bench.tick":
                        continue  # e.g. the reaper's session.queue updates
                    tick = json.loads(fields[b"data"])
                    self.latencies.append(now - tick["sent"])
                    if tick["n"] == self.last and not self.done.done():
                        self.done.set_result(None)
            self._after = after
            if not self.done.done():
                self._ask(after)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"redis closed: {exc}"))


async def open_sse(
    url: str, headers: dict[str, str], last: int, latencies: list[float]
) -> SseProbe:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, probe = await loop.create_connection(
        lambda: SseProbe(url, headers, last, latencies), parts.hostname, parts.port
    )
    return probe


async def open_xread(redis_url: str, stream: str, last: int, latencies: list[float]) -> XreadProbe:
    parts = urlsplit(redis_url)
    loop = asyncio.get_running_loop()
    _, probe = await loop.create_connection(
        lambda: XreadProbe(stream, last, latencies, parts.password),
        parts.hostname or "127.0.0.1",
        parts.port,
    )
    return probe
