"""Ends the service decides on let the bot finish its sentence (real processes)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from harness.api import api_client, wait_for_status
from harness.waiting import eventually
from harness.ws_client import ProtobufClient

pytestmark = pytest.mark.slow

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
SPOKEN_S = 2.12  # hello.wav's loud 20 ms frames, in seconds


def _loud_seconds(client: ProtobufClient) -> float:
    """Seconds of the bot's audio whose 20 ms frames are louder than silence."""
    if not client.audio:
        return 0.0
    rate = client.audio[-1][1]
    samples = np.concatenate([a for a, _ in client.audio]).astype(np.float64)
    step = rate // 50
    frames = samples[: len(samples) // step * step].reshape(-1, step)
    return float((np.sqrt((frames**2).mean(axis=1)) > ECHO_RMS).sum() * 0.02)


async def test_a_drain_lets_the_bot_finish_what_it_is_saying(make_system, hello_wav) -> None:
    system = make_system(workers=1, capacity=1)
    token = system.create_user("dee")
    admin = system.create_user("op", admin=True)
    async with api_client(system, token) as api, api_client(system, admin) as ops:
        created = await api.post("/api/sessions", json={"transport": "websocket"})
        sid = created.json()["session_id"]
        await wait_for_status(api, sid, {"ready"})
        ws_url = (await api.post(f"/api/sessions/{sid}/connect")).json()["ws_url"]
        client = await ProtobufClient.connect(ws_url, hello_wav)
        try:
            await eventually(
                lambda: client.got_message("bot-started-speaking"), timeout=20, what="the echo"
            )
            worker_id = (await api.get(f"/api/sessions/{sid}")).json()["worker_id"]
            drained = await ops.post(f"/api/workers/{worker_id}/drain", json={"timeout_s": 0})
            assert drained.status_code == 202
            ended = await wait_for_status(api, sid, {"ended", "failed"}, timeout=20)
            await asyncio.wait_for(client.closed.wait(), 10)
        finally:
            await client.close()
    assert (ended["status"], ended["reason"]) == ("ended", "worker_draining")
    # The whole sentence came back, not the part played before the drain.
    assert _loud_seconds(client) >= SPOKEN_S * 0.85, _loud_seconds(client)
