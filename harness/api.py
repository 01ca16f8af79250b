"""Helpers for talking to a running system's API (tests, drills, benchmarks)."""

from __future__ import annotations

from typing import Any

import httpx

from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import WebRTCTestClient


def api_client(system: System, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def create_session(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/api/sessions", json={"transport": "webrtc", **body})
    assert response.status_code == 202, response.text
    return response.json()


async def wait_for_status(
    api: httpx.AsyncClient, session_id: str, statuses: set[str], timeout: float = 15
) -> dict[str, Any]:
    """The session, once its status is one of ``statuses``."""

    async def reached() -> dict[str, Any]:
        session: dict[str, Any] = (await api.get(f"/api/sessions/{session_id}")).json()
        assert session["status"] in statuses, f"the session is {session['status']}"
        return session

    return await eventually(reached, timeout=timeout, what=f"a session status in {statuses}")


async def connect_webrtc(
    api: httpx.AsyncClient,
    session_id: str,
    wav: str | None,
    *,
    wait: bool = True,
    loop_pause_s: float | None = None,
) -> WebRTCTestClient:
    """A WebRTC peer playing ``wav`` (again and again, with pauses, if ``loop_pause_s``)."""
    client = WebRTCTestClient(
        wav, loop_audio=loop_pause_s is not None, loop_pause_s=loop_pause_s or 0.0
    )

    async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
        response = await api.post(f"/api/sessions/{session_id}/offer", json=offer)
        assert response.status_code == 200, response.text
        return response.json()

    await client.connect(send_offer)
    if wait:
        await client.wait_connected()
    return client
