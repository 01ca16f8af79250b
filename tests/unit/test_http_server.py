"""The quiet uvicorn server (shared/http_server.py): serves as uvicorn does, with a fresh
Date header, looks at whether to stop once a second when idle, and stops at once when told."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from harness.waiting import eventually
from shared.connections import free_port
from shared.http_server import QuietServer


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
