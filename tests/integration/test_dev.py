"""``voicepool dev`` as a developer runs it: draining a worker from the Operators page (or
the API) moves on with a fresh worker instead of stopping the API, the other worker and
Redis; a live call on the other worker is not touched."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.waiting import eventually
from harness.ws_client import ProtobufClient
from shared.connections import free_port

pytestmark = pytest.mark.slow

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0


async def test_a_drained_worker_is_replaced_and_nothing_else_stops(
    tmp_path: Path, hello_wav: Path
) -> None:
    port = _free_ports(3)  # the API's, and the two workers' metrics after it
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
    env.pop("OPENAI_API_KEY", None)
    env.update(
        {
            "VOICEPOOL_DATA_DIR": str(tmp_path),
            "VOICEPOOL_HEARTBEAT_INTERVAL": "0.5",
            "VOICEPOOL_HEARTBEAT_TTL": "4",
            "PYTHONUNBUFFERED": "1",
        }
    )
    out = tmp_path / "dev.log"
    dev = _start(["dev", "--port", str(port), "--workers", "2"], env, out)
    try:
        token = await eventually(
            lambda: _token(out.read_text(errors="replace")), timeout=60, what="the banner"
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            contextlib.AsyncExitStack() as stack,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as api,
        ):

            async def workers() -> list[dict]:
                got = await api.get("/api/workers")
                live = got.json() if got.status_code == 200 else []
                return live if len(live) == 2 else []

            before = await eventually(workers, timeout=60, what="two workers")
            # A call with someone on it: an echo over WebSocket, the caller speaking in a loop.
            created = await api.post(
                "/api/sessions", params={"wait": "ready"}, json={"transport": "websocket"}
            )
            assert created.status_code == 201, created.text
            session = created.json()
            ws_url = session["connect"]["ws_url"]
            client = await ProtobufClient.connect(ws_url, hello_wav, loop=True)
            stack.push_async_callback(client.close)
            await eventually(lambda: client.loudest_rms() > ECHO_RMS, timeout=30, what="the echo")
            owner = (await api.get(f"/api/sessions/{session['session_id']}")).json()["worker_id"]
            other = next(w["id"] for w in before if w["id"] != owner)

            drained = await api.post(f"/api/workers/{other}/drain", json={})
            assert drained.status_code == 202, drained.text

            async def replaced() -> bool:
                ids = {w["id"] for w in await workers()}
                return len(ids) == 2 and other not in ids and owner in ids

            await eventually(replaced, timeout=60, what="the drained worker replaced")
            assert dev.poll() is None, out.read_text()
            assert "drained and exited; starting a fresh one" in out.read_text()
            # The call on the other worker goes on (its caller is heard back after the
            # drain), and the API still starts new ones.
            heard = len(client.audio)
            await eventually(
                lambda: client.loudest_rms(since=heard) > ECHO_RMS,
                timeout=30,
                what="the echo after the drain",
            )
            assert (await api.get(f"/api/sessions/{session['session_id']}")).json()[
                "status"
            ] == "connected"
            fresh = (await api.post("/api/sessions", json={"transport": "webrtc"})).json()
            await eventually(
                lambda: _status(api, fresh["session_id"], "ready"), timeout=30, what="a new one"
            )
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


def test_a_busy_port_is_said_plainly_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
        env["VOICEPOOL_DATA_DIR"] = str(tmp_path)
        ran = subprocess.run(
            [sys.executable, "-m", "voicepool", "dev", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert ran.returncode != 0
    # (N+1 may happen to be busy too, then both are named)
    said = re.search(rf"port {port}(, \d+)* on 127\.0\.0\.1 is in use", ran.stderr)
    assert said is not None and "--port" in ran.stderr
    assert "Bearer" not in ran.stdout + ran.stderr  # no token printed for a system not started
    assert not (tmp_path / "redis").exists()  # nothing was started


def _free_ports(count: int) -> int:
    """A port N with N … N+count-1 all free now (``voicepool dev`` takes N and the ones
    after it): a free port alone may have a busy neighbour."""
    while True:
        port = free_port()
        with contextlib.ExitStack() as held:
            try:
                for candidate in range(port, port + count):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        return port


def _start(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "voicepool", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the test stops all of it
        )


def _token(banner: str) -> str | None:
    found = re.search(r"Authorization: Bearer (\S+)", banner)
    return found.group(1) if found else None


async def _status(api: httpx.AsyncClient, session_id: str, status: str) -> bool:
    return bool((await api.get(f"/api/sessions/{session_id}")).json()["status"] == status)
