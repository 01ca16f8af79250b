"""Forwarded headers, request limits and revocation against the real API process.

What ``request.client`` is, and how much of a request head is buffered, are
decided by uvicorn as ``voicepool api`` configures it, so these run the API as a
deployment does, not in-process.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness.api import api_client, create_session, wait_for_status
from harness.sse import read_events
from harness.waiting import eventually
from shared import keys

pytestmark = pytest.mark.slow

PROXY_HEADER = "X-Remote-User"


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(make_system) -> None:
    # The proxy lives at 10.9.9.9; this test connects from loopback, which is not it,
    # whatever X-Forwarded-For claims.
    system = make_system(
        workers=0,
        VOICEPOOL_TRUSTED_PROXY_HEADER=PROXY_HEADER,
        VOICEPOOL_TRUSTED_PROXIES="10.9.9.9",
        VOICEPOOL_LOGINS_PER_MINUTE="5",
    )
    system.create_user("root", admin=True)
    spoofed = {"X-Forwarded-For": "10.9.9.9", PROXY_HEADER: "root"}
    async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as client:
        for path in ("/api/me", "/api/workers"):
            response = await client.get(path, headers=spoofed)
            assert response.status_code == 401, (path, response.text)
        # Sign-in attempts count against the connection's address, not a claimed one.
        statuses = [
            (
                await client.post(
                    "/api/auth/login",
                    json={"token": "vp_bad_guess"},
                    headers={"X-Forwarded-For": f"198.51.100.{n}"},
                )
            ).status_code
            for n in range(8)
        ]
    assert statuses == [401] * 5 + [429] * 3
    with system.redis as r:
        assert len(list(r.scan_iter("vp:rate:login:*"))) == 1  # one key, not one per claim


async def test_request_heads_are_bounded(make_system) -> None:
    system = make_system(workers=0)
    async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as client:
        assert (await client.get("/healthz", headers={"X-Pad": "a" * 8000})).status_code == 200
        # A megabyte of headers is refused (h11 stops buffering an unfinished request head
        # past 16 KiB; it parses at most what one socket read brought in beyond that).
        huge = {f"X-Pad-{n}": "a" * 65536 for n in range(16)}
        try:
            status = (await client.get("/healthz", headers=huge)).status_code
        except httpx.TransportError:  # closed while still sending: refused just the same
            status = None
        assert status in (400, None)


async def test_a_proxy_on_loopback_is_trusted_when_configured(make_system) -> None:
    system = make_system(
        workers=0,
        VOICEPOOL_TRUSTED_PROXY_HEADER=PROXY_HEADER,
        VOICEPOOL_TRUSTED_PROXIES="127.0.0.0/8",
        VOICEPOOL_LOGINS_PER_MINUTE="3",
    )
    system.create_user("root", admin=True)
    async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as proxy:
        me = await proxy.get(
            "/api/me", headers={"X-Forwarded-For": "203.0.113.7", PROXY_HEADER: "root"}
        )
        assert me.status_code == 200, me.text
        assert (me.json()["name"], me.json()["role"]) == ("root", "admin")
        assert (await proxy.get("/api/me", headers={PROXY_HEADER: "nobody"})).status_code == 401

        # Behind the proxy, each client is counted by the address the proxy reports.
        async def login(client_address: str) -> int:
            response = await proxy.post(
                "/api/auth/login",
                json={"token": "vp_bad_guess"},
                headers={"X-Forwarded-For": client_address},
            )
            return response.status_code

        assert [await login("203.0.113.7") for _ in range(4)] == [401, 401, 401, 429]
        assert await login("203.0.113.8") == 401


async def test_revoking_a_user_signs_them_out_and_ends_their_sessions(make_system) -> None:
    system = make_system(workers=1, capacity=1)
    token = system.create_user("alice")
    ops = system.create_user("ops", admin=True)
    async with (
        api_client(system, token) as api,
        api_client(system, ops) as admin,
        httpx.AsyncClient(base_url=system.api_url, timeout=30) as browser,
    ):
        running = await create_session(api, profile="echo")
        await wait_for_status(api, running["session_id"], {"ready"})
        queued = await create_session(api, profile="echo")  # the only slot is taken
        assert queued["status"] == "queued"
        signed_in = await browser.post("/api/auth/login", json={"token": token})
        assert signed_in.status_code == 200
        assert (await browser.get("/api/me")).status_code == 200
        # The browser watches the running session.
        events = asyncio.create_task(read_events(browser, running["events_url"]))

        def stream_open() -> bool:  # the API holds a lease per open stream
            with system.redis as r:
                return any(r.zcard(key) for key in r.scan_iter(keys.leases("sse", "*")))

        await eventually(stream_open, what="the browser's event stream open")

        out = await asyncio.to_thread(system.run_cli, "users", "revoke", "alice")
        revoked = time.monotonic()

        await asyncio.wait_for(events, 5)
        assert time.monotonic() - revoked <= 5
        ended = await wait_for_status(admin, running["session_id"], {"ended", "failed"})
        assert (ended["status"], ended["reason"]) == ("ended", "revoked")
        cancelled = (await admin.get(f"/api/sessions/{queued['session_id']}")).json()
        assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "revoked")
        assert (await browser.get("/api/me")).status_code == 401
        assert (await api.get("/api/me")).status_code == 401
        again = await browser.post("/api/auth/login", json={"token": token})
        assert again.status_code == 401
        assert "revoked 1 token" in out and "ended 2 live session(s)" in out, out
