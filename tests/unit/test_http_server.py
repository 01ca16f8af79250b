"""The quiet uvicorn server (shared/http_server.py): serves as uvicorn does, with a fresh
Date header, looks at whether to stop once a second when idle, and stops at once when told.
Its httptools protocol refuses a request head that runs on past 16 KiB, as h11 does, and
nothing else: not a large body, not the requests that follow one on the connection."""

from __future__ import annotations

import asyncio
import email.utils
import sys
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from harness.waiting import eventually
from shared.connections import free_port
from shared.http_server import MAX_HEAD_BYTES, QuietServer, bounded_http
from shared.httptools_protocol import BoundedHttpToolsProtocol


async def _hello(_request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_it_serves_wakes_once_a_second_and_stops_at_once() -> None:
    port = free_port()
    app = Starlette(routes=[Route("/", _hello)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    server = QuietServer(config)
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{port}/")
    assert answer.text == "hello"
    dated = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
    assert abs(dated - time.time()) < 3

    ticks.clear()
    await asyncio.sleep(2.5)
    assert 2 <= len(ticks) <= 3, ticks  # uvicorn's own loop: 25
    assert all(counter % 10 == 0 for counter in ticks)  # each one refreshes the Date

    asked = time.perf_counter()
    server.exit()
    await asyncio.wait_for(serving, 5)
    assert time.perf_counter() - asked < 0.8  # not a tick later


async def _body_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer's status and body (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def test_a_head_past_the_bound_is_refused_and_nothing_else() -> None:
    port = free_port()
    app = Starlette(routes=[Route("/", _body_size, methods=["GET", "POST"])])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
        http=BoundedHttpToolsProtocol,
    )  # fmt: skip
    server = QuietServer(config)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A large head under the bound, then a body larger than the bound in the same
        # write, then a second request on the same connection: all served.
        body = b"b" * (4 * MAX_HEAD_BYTES)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES // 2)
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        assert await _answer(reader) == (200, str(len(body)).encode())
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _answer(reader) == (200, b"0")

        # A head trickled in, a kilobyte at a time, and never finished: refused once it
        # passes the bound (no more is sent: a write after the close would reset the
        # connection), and the connection closed.
        line = b"GET / HTTP/1.1\r\nHost: x\r\n"
        writer.write(line)
        sent = len(line)
        while sent <= MAX_HEAD_BYTES:
            await asyncio.sleep(0.002)
            assert not reader.at_eof()  # not refused before the bound
            writer.write(b"X-Pad-%05d: %s\r\n" % (sent, b"a" * 1009))
            sent += 1024
        assert await asyncio.wait_for(_answer(reader), 5) == (400, b"Request head too large.")
        assert await reader.read() == b""  # closed
        writer.close()

        # Other connections are served as before.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
    finally:
        server.exit()
        await asyncio.wait_for(serving, 5)


def test_without_httptools_heads_are_bounded_by_h11(monkeypatch) -> None:
    """A worker-only host installs no httptools: its listener parses with h11, which bounds
    heads itself (``h11_max_incomplete_event_size``), instead of failing to start."""
    assert bounded_http() is BoundedHttpToolsProtocol
    for name in ("httptools", "uvicorn.protocols.http.httptools_impl", "shared.httptools_protocol"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "httptools", None)  # import httptools: ImportError
    assert bounded_http() == "h11"
