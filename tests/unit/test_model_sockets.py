"""Model sockets a worker opens ahead (worker/model_sockets.py), against the Realtime double.

Real WebSockets on loopback to the OpenAI Realtime protocol double: spares are opened
with the worker's key and model before anyone asks, handed out once each, replaced, and
never handed out once the model has closed them; a model out of reach is retried and is
never fatal to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from websockets.protocol import State

from harness.doubles.openai_realtime import FakeRealtimeServer
from harness.waiting import eventually
from shared.connections import free_port
from worker import model_sockets
from worker.model_sockets import ModelSockets, realtime_url
from worker.options import AssistantConfig

KEY = "sk-test-spare-sockets-0123456789"


@contextlib.asynccontextmanager
async def running(sockets: ModelSockets) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sockets.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sockets.aclose()


def spare_gauge(pool: str) -> float | None:
    return REGISTRY.get_sample_value("voicepool_worker_model_sockets_spare", {"pool": pool})


async def test_spares_are_opened_ahead_handed_out_once_and_replaced() -> None:
    async with FakeRealtimeServer() as fake:
        config = AssistantConfig(api_key=KEY, base_url=fake.base_url, model="gpt-realtime")
        sockets = ModelSockets(config, 2, "spares")
        async with running(sockets):
            await eventually(lambda: fake.open_connections == 2, what="two spares open")
            assert fake.models == ["gpt-realtime", "gpt-realtime"]
            assert fake.received == []  # opened, nothing said: no session has one yet
            assert spare_gauge("spares") == 2

            assert sockets.take(f"{fake.base_url}?model=another") is None  # not its model
            first = sockets.take(realtime_url(config))
            second = sockets.take(realtime_url(config))
            assert first is not None and second is not None and first is not second
            assert first.state is State.OPEN
            # What a session's service reads first is the model's greeting of the socket.
            created = json.loads(await asyncio.wait_for(first.recv(), 5))
            assert created["type"] == "session.created"

            await eventually(lambda: fake.connections == 4, what="both replaced")
            await eventually(lambda: spare_gauge("spares") == 2, what="the gauge back at 2")
            assert (
                REGISTRY.get_sample_value(
                    "voicepool_worker_model_sockets_taken_total", {"pool": "spares"}
                )
                == 2
            )
            await first.close()
            await second.close()
        await eventually(lambda: fake.open_connections == 0, what="the spares closed")


async def test_a_spare_the_model_closed_is_replaced_and_never_handed_out() -> None:
    async with FakeRealtimeServer() as fake:
        port = fake.port
        config = AssistantConfig(api_key=KEY, base_url=fake.base_url)
        sockets = ModelSockets(config, 1, "closed")
        async with running(sockets):
            await eventually(lambda: fake.open_connections == 1, what="a spare open")
    # The model went away (closing the spare with 1001) and is back on the same address.
    async with FakeRealtimeServer(port=port) as back:
        async with running(sockets):
            await eventually(lambda: back.open_connections == 1, what="the spare replaced")
            taken = sockets.take(realtime_url(config))
            assert taken is not None and taken.state is State.OPEN
            await taken.send(json.dumps({"type": "session.update", "session": {}}))
            await eventually(lambda: back.update_connections == [1], what="spoken on the new one")
            await taken.close()


async def test_a_closed_spare_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeRealtimeServer() as fake:
        config = AssistantConfig(api_key=KEY, base_url=fake.base_url)
        sockets = ModelSockets(config, 1, "stale")
        async with running(sockets):
            await eventually(lambda: fake.open_connections == 1, what="a spare open")
            monkeypatch.setattr(model_sockets, "MAX_AGE_S", 0.0)  # every spare too old
            assert sockets.take(realtime_url(config)) is None
            await eventually(lambda: fake.connections >= 2, what="a new spare opened")


async def test_a_model_out_of_reach_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_sockets, "RETRY_DELAYS_S", (0.05,))
    port = free_port()
    config = AssistantConfig(api_key=KEY, base_url=f"ws://127.0.0.1:{port}/v1/realtime")
    sockets = ModelSockets(config, 1, "unreachable")
    async with running(sockets) as task:
        await asyncio.sleep(0.3)  # several refused connects
        assert not task.done()
        assert sockets.take(realtime_url(config)) is None  # the session connects itself
        async with FakeRealtimeServer(port=port) as fake:
            await eventually(lambda: fake.open_connections == 1, what="a spare once it is up")
            assert sockets.take(realtime_url(config)) is not None


def test_no_spares_unless_asked_for_with_an_assistant_and_a_key() -> None:
    config = AssistantConfig(api_key=KEY)
    assert ModelSockets.for_worker(config, 0, ["echo", "assistant"], "p") is None
    assert ModelSockets.for_worker(config, 1, ["echo"], "p") is None
    assert ModelSockets.for_worker(AssistantConfig(), 1, ["assistant"], "p") is None
    assert ModelSockets.for_worker(config, 1, ["assistant"], "p") is not None
