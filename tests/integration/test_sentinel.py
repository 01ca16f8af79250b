"""Redis behind Sentinel: the primary dies in the middle of a call, and the fleet goes on.

A real primary, a replica and three Sentinels (harness/sentinel.py); the API, the
persister and the workers know only the Sentinels (``redis+sentinel://``). The primary is
killed while a call streams audio: Sentinels promote the replica, every client finds it,
the call goes on, a new call starts, and the store has every event of both.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.api import api_client, wait_for_status
from harness.sentinel import SentinelSet
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import WebRTCTestClient, allow_loopback_ice

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0


async def _call(api: httpx.AsyncClient, wav: Path) -> tuple[dict, WebRTCTestClient]:
    """A new echo call over WebRTC, connected, its caller speaking on a loop."""
    created = await api.post("/api/sessions", json={"profile": "echo"})
    assert created.status_code == 202, created.text
    session = created.json()
    peer = WebRTCTestClient(str(wav), loop_audio=True, loop_pause_s=1.0)

    async def send_offer(offer: dict) -> dict:
        answer = await api.post(session["offer_url"], json=offer)
        assert answer.status_code == 200, answer.text
        return answer.json()

    await peer.connect(send_offer)
    await peer.wait_connected(timeout=20)
    await wait_for_status(api, session["session_id"], {"connected"}, timeout=20)
    return session, peer


async def _stored_events(api: httpx.AsyncClient, session: dict) -> list[dict]:
    detail = (await api.get(f"/api/conversations/{session['conversation_id']}")).json()
    return [e for e in detail["events"] if e["session_id"] == session["session_id"]]


@pytest.mark.slow
async def test_the_primary_dies_mid_call_and_calls_go_on(tmp_path: Path, hello_wav) -> None:
    allow_loopback_ice()
    sentinels = SentinelSet(tmp_path / "redis").start()
    system = System(tmp_path / "system", settings={"VOICEPOOL_REDIS_URL": sentinels.url})
    system.tmp.mkdir()
    system.redis_server = sentinels.primary  # the harness's own look at Redis, until it dies
    try:
        system.start(workers=2, capacity=2)
        async with api_client(system, system.create_user("alice")) as api:
            first, first_peer = await _call(api, hello_wav)
            await first_peer.wait_for_audio(min_rms=ECHO_RMS, timeout=20)

            assert sentinels.primary is not None
            old_primary = sentinels.primary.port
            killed_at = time.monotonic()
            heard_before = first_peer.received_seconds()
            sentinels.primary.kill()

            # A new call starts once the replica is promoted (clients retry meanwhile).
            async def new_call() -> tuple[dict, WebRTCTestClient]:
                return await _call(api, hello_wav)

            second, second_peer = await eventually(new_call, timeout=60, what="a new call")
            back_after_s = time.monotonic() - killed_at
            assert sentinels.primary_port() != old_primary  # Sentinels promoted the replica
            await second_peer.wait_for_audio(min_rms=ECHO_RMS, timeout=20)

            # The first call went on through the failover: still connected, echo coming.
            await first_peer.wait_for_audio(min_rms=ECHO_RMS, timeout=20, start_s=heard_before)
            await wait_for_status(api, first["session_id"], {"connected"}, timeout=20)

            for session, peer in ((first, first_peer), (second, second_peer)):
                await api.delete(f"/api/sessions/{session['session_id']}")
                await peer.close()

            # Every event of both calls reaches the store: from 1, none missing, the end last.
            for session in (first, second):

                async def stored(session: dict = session) -> list[dict]:
                    events = await _stored_events(api, session)
                    assert events and events[-1]["type"] == "session.state", events[-1:]
                    assert events[-1]["data"]["state"] == "ended", events[-1]
                    return events

                events = await eventually(stored, timeout=30, what="the stored end")
                seqs = [e["seq"] for e in events]
                assert seqs == list(range(1, len(seqs) + 1)), seqs
                reasons = [e["data"].get("reason") for e in events if e["type"] == "session.state"]
                assert "worker_lost" not in reasons and "redis_unavailable" not in reasons
            print(f"failover: a new call connected {back_after_s:.1f} s after the primary died")
    finally:
        system.stop()
        sentinels.stop()
        await asyncio.sleep(0)


def test_doctor_reaches_the_primary_through_the_sentinels(tmp_path: Path) -> None:
    """A worker host configured with the Sentinels: doctor's Redis check answers from the
    primary they name, and neither password is shown."""
    sentinels = SentinelSet(tmp_path).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
    env.update(VOICEPOOL_REDIS_URL=sentinels.url, VOICEPOOL_WEBRTC_HOST_ADDRESSES="127.0.0.1")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "voicepool", "doctor", "--skip-benchmark", "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        sentinels.stop()
    [check] = [c for c in json.loads(run.stdout)["checks"] if c["name"] == "redis"]
    assert check["status"] == "ok", check
    assert check["found"].startswith("redis+sentinel://:***@127.0.0.1:")
    for secret in (sentinels.password, sentinels.sentinel_password):
        assert secret not in run.stdout + run.stderr
