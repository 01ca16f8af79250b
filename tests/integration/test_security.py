"""Who sees what, and limits: every per-session route checked against its owner."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.sdp import VALID_OFFER
from harness.waiting import eventually
from shared import keys
from shared.logs import RedactingFormatter, add_secret, redact
from shared.models import ApiToken, utcnow
from shared.users import get_user_by_name, issue_token

ROOT = Path(__file__).parents[2]


async def _setup(api):
    alice = await api.token("alice")
    bob = await api.token("bob")
    admin = await api.token("root", role="admin")
    made = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(alice)
    )
    assert made.status_code == 202
    return alice, bob, admin, made.json()


async def test_access_matrix(api) -> None:
    alice, bob, admin, session = await _setup(api)
    sid, cid = session["session_id"], session["conversation_id"]
    offer = {"sdp": VALID_OFFER, "type": "offer"}
    ice = {"pc_id": "p", "candidates": []}
    # (method, path, body) → expected status for (owner, other user, admin)
    matrix = [
        ("GET", f"/api/sessions/{sid}", None, (200, 404, 200)),
        ("GET", f"/api/sessions/{sid}/events?after=99999999999999-0", None, (None, 404, None)),
        # Only the owner may connect: a single-connection call cannot be taken over.
        ("POST", f"/api/sessions/{sid}/offer", offer, (409, 404, 404)),
        ("PATCH", f"/api/sessions/{sid}/offer", ice, (409, 404, 404)),
        ("GET", f"/api/conversations/{cid}", None, (200, 404, 200)),
        ("GET", f"/api/conversations/{cid}/export?format=md", None, (200, 404, 200)),
        ("GET", f"/api/conversations/{cid}/export?format=json", None, (200, 404, 200)),
        # Daily channels: this is a WebRTC session, so the owner learns that; nobody
        # else learns it exists.
        ("POST", f"/api/sessions/{sid}/participants", {}, (409, 404, 404)),
        ("POST", f"/api/sessions/{sid}/invites", {"user": "bob"}, (409, 404, 404)),
        ("GET", "/api/workers", None, (403, 403, 200)),
        ("GET", "/api/pools", None, (403, 403, 200)),
        ("POST", "/api/workers/nobody/drain", {}, (403, 403, 404)),
        ("DELETE", f"/api/sessions/{sid}", None, (200, 404, 200)),
    ]
    for method, path, body, expected in matrix:
        for token, status in zip((alice, bob, admin), expected, strict=True):
            if status is None:
                continue  # a live stream: only its refusal is checked here
            response = await api.client.request(method, path, json=body, headers=api.auth(token))
            assert response.status_code == status, (method, path, token[:8], response.text)
            if status == 404:
                assert sid not in response.text and cid not in response.text
    # Connection secrets (ws_url tokens, Daily tokens) are the owner's alone: an
    # admin reading the session does not get them.
    ws = await api.client.post(
        "/api/sessions", json={"transport": "websocket"}, headers=api.auth(alice)
    )
    assert ws.status_code == 202
    seen_by_admin = await api.client.get(
        f"/api/sessions/{ws.json()['session_id']}", headers=api.auth(admin)
    )
    assert seen_by_admin.status_code == 200 and not seen_by_admin.json().get("connect")
    # Another user's conversations never appear in their list.
    listed = await api.client.get("/api/conversations", headers=api.auth(bob))
    assert listed.json() == []
    # Nor can they continue it.
    refused = await api.client.post(
        "/api/sessions",
        json={"transport": "webrtc", "conversation_id": cid},
        headers=api.auth(bob),
    )
    assert refused.status_code == 404


async def test_session_creation_and_sign_in_are_rate_limited(make_api) -> None:
    async with make_api(sessions_per_minute=2, logins_per_minute=3, max_sessions_per_user=0) as api:
        token = await api.token("eager")
        answers = [
            await api.client.post(
                "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
            )
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert answers[2].json()["detail"]["code"] == "rate_limited"
        assert int(answers[2].headers["Retry-After"]) >= 1
        made = [k async for k in api.state.redis.scan_iter(keys.session("*"), _type="hash")]
        assert len(made) == 2  # the refused one made nothing
        logins = [
            (await api.client.post("/api/auth/login", json={"token": "vp_bad_guess"})).status_code
            for _ in range(4)
        ]
        assert logins == [401, 401, 401, 429]
        limited = await api.client.post("/api/auth/login", json={"token": token})
        assert limited.status_code == 429  # even a right token waits out the window
        assert int(limited.headers["Retry-After"]) >= 1


async def test_event_streams_per_user_are_bounded(make_api) -> None:
    async with make_api(max_streams_per_user=0) as api:  # 0: unbounded
        assert api.state.settings.max_streams_per_user == 0
    async with make_api(max_streams_per_user=1) as api:
        token = await api.token("watcher")
        session = (
            await api.client.post(
                "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
            )
        ).json()
        await api.state.streams.take(await _user_id(api, "watcher"), limit=1)  # another tab
        refused = await api.client.get(session["events_url"], headers=api.auth(token))
        assert refused.status_code == 429
        assert refused.json()["detail"]["code"] == "too_many_streams"


async def _user_id(api, name: str) -> str:
    from shared.users import get_user_by_name

    async with api.state.store.session() as db:
        user = await get_user_by_name(db, name)
    assert user is not None, name
    return user.id


async def test_deep_json_is_refused_not_a_500(api) -> None:
    token = await api.token("nester")
    deep = b'{"transport": "webrtc", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await api.client.post(
        "/api/sessions", content=deep,
        headers={**api.auth(token), "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "too_deep"


async def test_cors_is_off_unless_configured(make_api) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
    }
    async with make_api() as api:
        response = await api.client.options("/api/sessions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with make_api(cors_origins=["https://app.example"]) as api:
        ok = await api.client.options(
            "/api/sessions", headers={**preflight, "Origin": "https://app.example"}
        )
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        evil = await api.client.options("/api/sessions", headers=preflight)
        assert "access-control-allow-origin" not in evil.headers


async def test_trusted_proxy_identity_only_from_the_proxy(make_api) -> None:
    async with make_api(trusted_proxy_header="X-Remote-User", trusted_proxies=["10.9.9.9"]) as api:
        await api.token("proxied")
        # The test client is 127.0.0.1, not the configured proxy: the header is ignored.
        response = await api.client.get("/api/me", headers={"X-Remote-User": "proxied"})
        assert response.status_code == 401
    async with make_api(trusted_proxy_header="X-Remote-User", trusted_proxies=["127.0.0.1"]) as api:
        response = await api.client.get("/api/me", headers={"X-Remote-User": "proxied"})
        assert response.status_code == 200 and response.json()["name"] == "proxied"
        unknown = await api.client.get("/api/me", headers={"X-Remote-User": "nobody"})
        assert unknown.status_code == 401


async def _revoke(api, name: str, *, redis: bool = True) -> subprocess.CompletedProcess[str]:
    """``voicepool users revoke NAME`` as an operator runs it, beside the running API."""
    env = {"VOICEPOOL_DATABASE_URL": api.state.settings.sqlalchemy_url, "PATH": "/usr/bin:/bin"}
    if redis:
        env["VOICEPOOL_REDIS_URL"] = api.state.settings.redis_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voicepool", "users", "revoke", name],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip


def _browser(api) -> httpx.AsyncClient:
    """Another client of the same app, with a cookie jar of its own."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://voicepool.test"
    )


async def _sign_in(browser: httpx.AsyncClient, token: str) -> str:
    response = await browser.post("/api/auth/login", json={"token": token})
    assert response.status_code == 200, response.text
    return response.json()["csrf_token"]


async def _streams_open(api, user: str, count: int) -> bool:
    """Whether the user holds ``count`` event streams open (by their leases)."""
    return await api.state.redis.zcard(keys.leases("sse", await _user_id(api, user))) == count


async def test_revoked_tokens_stop_working(api, tmp_path) -> None:
    token = await api.token("leaver")
    assert (await api.client.get("/api/me", headers=api.auth(token))).status_code == 200
    out = await _revoke(api, "leaver")
    assert out.returncode == 0, out.stderr
    assert "revoked 1 token" in out.stdout and "ended 0 live session(s)" in out.stdout
    assert (await api.client.get("/api/me", headers=api.auth(token))).status_code == 401
    # Without the API's Redis the command cannot sign anyone out, and says so.
    await api.token("other")
    partial = await _revoke(api, "other", redis=False)
    assert partial.returncode == 1 and "VOICEPOOL_REDIS_URL" in partial.stderr


async def test_a_cached_token_stops_working_within_a_second_of_its_revocation(api) -> None:
    token = await api.token("cached")
    await eventually(lambda: api.state.tokens.listening, what="revocations heard")
    assert (await api.client.get("/api/me", headers=api.auth(token))).status_code == 200
    checked = api.state.tokens.get(token)
    assert checked is not None  # the next request needs no database
    async with api.state.store.session() as db:  # what `voicepool users revoke` does
        row = await db.get(ApiToken, token.split("_")[1])
        row.revoked_at = utcnow()
        await db.commit()
    await api.state.redis.publish(keys.REVOCATIONS, checked.user.id)

    async def refused() -> bool:
        return (await api.client.get("/api/me", headers=api.auth(token))).status_code == 401

    await eventually(refused, timeout=1.0, what="the revoked token refused")


async def test_logout_needs_the_csrf_token(api) -> None:
    token = await api.token("clicker")
    async with _browser(api) as browser:
        csrf = await _sign_in(browser, token)
        session = await browser.post(
            "/api/sessions", json={"transport": "webrtc"}, headers={"X-CSRF-Token": csrf}
        )
        assert session.status_code == 202
        stream = asyncio.create_task(browser.get(session.json()["events_url"], timeout=None))
        await eventually(lambda: _streams_open(api, "clicker", 1), timeout=5, what="the stream")
        # Another site making the browser post here must not sign the user out.
        forged = await browser.post("/api/auth/logout")
        assert forged.status_code == 403 and forged.json()["detail"]["code"] == "csrf_failed"
        assert (await browser.get("/api/me")).status_code == 200
        signed = await browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
        assert signed.status_code == 204
        signed_out = time.monotonic()
        # The open event stream ends with the sign-in.
        await asyncio.wait_for(stream, 6)
        assert time.monotonic() - signed_out <= 5
        assert (await browser.get("/api/me")).status_code == 401


async def test_revoking_signs_out_browsers_ends_streams_and_sessions(api) -> None:
    alice = await api.token("alice")
    root = await api.token("root", role="admin")
    made = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(alice)
    )
    assert made.status_code == 202
    sid, events_url = made.json()["session_id"], made.json()["events_url"]
    async with _browser(api) as browser, _browser(api) as alice_browser:
        await _sign_in(browser, root)
        await _sign_in(alice_browser, alice)
        # The admin watches alice's session, with the cookie and with the token.
        by_cookie = asyncio.create_task(browser.get(events_url, timeout=None))
        by_token = asyncio.create_task(
            api.client.get(events_url, headers=api.auth(root), timeout=None)
        )
        await eventually(lambda: _streams_open(api, "root", 2), timeout=5, what="both streams")

        async def refused_at() -> float | None:
            refused = (await api.client.get("/api/me", headers=api.auth(root))).status_code == 401
            return time.monotonic() if refused else None

        # When the revocation lands (the command itself takes a while to start).
        watcher = asyncio.create_task(
            eventually(refused_at, timeout=60, interval=0.02, what="the token refused")
        )
        out = await _revoke(api, "root")
        assert out.returncode == 0, out.stderr
        revoked_at = await asyncio.wait_for(watcher, 1)
        # The cookie from before is dead too, and the token buys no new one.
        assert (await browser.get("/api/me")).status_code == 401
        assert (await browser.post("/api/auth/login", json={"token": root})).status_code == 401
        for stream in (by_cookie, by_token):
            await asyncio.wait_for(stream, max(revoked_at + 5.5 - time.monotonic(), 0.1))
            assert stream.result().status_code == 200
        assert time.monotonic() - revoked_at <= 5.5  # 5 s, and this test's polling
        # Nobody else was affected: alice's session waits on, her browser is signed in.
        assert (await alice_browser.get("/api/me")).status_code == 200
        still = await api.client.get(f"/api/sessions/{sid}", headers=api.auth(alice))
        assert still.json()["status"] == "queued"

        # Revoking alice cancels her queued session, with the reason.
        out = await _revoke(api, "alice")
        assert (await alice_browser.get("/api/me")).status_code == 401
        live = await api.state.live.get(sid)
        assert (live["state"], live["reason"]) == ("cancelled", "revoked")
        assert "ended 1 live session(s)" in out.stdout, out.stdout + out.stderr

    # What she does next: with a token issued afresh, she starts again.
    async with api.state.store.session() as db:
        user = await get_user_by_name(db, "alice")
        assert user is not None
        fresh = (await issue_token(db, user)).token
    again = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(fresh)
    )
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "queued"


async def test_an_event_stream_ends_when_its_token_expires(api) -> None:
    from datetime import timedelta

    from shared.models import utcnow
    from shared.users import create_user, issue_token

    async with api.state.store.session() as db:
        user = await create_user(db, "brief")
        expires = utcnow() + timedelta(seconds=3)
        token = (await issue_token(db, user, expires_at=expires)).token
    made = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
    )
    assert made.status_code == 202
    stream = asyncio.create_task(
        api.client.get(made.json()["events_url"], headers=api.auth(token), timeout=None)
    )
    await asyncio.wait_for(stream, 3 + 6)
    closed_after = time.time() - expires.timestamp()
    assert -0.1 <= closed_after <= 5, closed_after


def test_trusted_proxies_are_addresses_or_networks() -> None:
    import pytest
    from pydantic import ValidationError

    from api.deps import is_trusted_proxy
    from shared.settings import Settings

    settings = Settings(_env_file=None, trusted_proxies="10.1.0.0/16, 127.0.0.1, fd00::/8")
    trusted = settings.trusted_proxies
    assert is_trusted_proxy("10.1.2.3", trusted) and is_trusted_proxy("127.0.0.1", trusted)
    assert is_trusted_proxy("::ffff:10.1.9.9", trusted) and is_trusted_proxy("fd00::1", trusted)
    assert not is_trusted_proxy("10.2.0.1", trusted) and not is_trusted_proxy("127.0.0.2", trusted)
    assert not is_trusted_proxy("127.0.0.1", []) and not is_trusted_proxy("testclient", trusted)
    with pytest.raises(ValidationError, match="not an IP address"):
        Settings(_env_file=None, trusted_proxies="proxy.internal")


def test_logs_mask_keys_and_tokens() -> None:
    add_secret("my-azure-key-1234567890")
    line = redact(
        "connect wss://x?key=my-azure-key-1234567890 Authorization: Bearer abcdefghijkl "
        "token vp_0123456789abcdef_SECRETsecretSECRET and sk-proj-abcdefghijklmnop"
    )
    for secret in ("my-azure-key", "abcdefghijkl", "SECRETsecret", "sk-proj-abcdefgh"):
        assert secret not in line
    record = logging.LogRecord("x", logging.INFO, "f", 1, "key sk-live-12345678901", None, None)
    assert "sk-live" not in RedactingFormatter(json_lines=True).format(record)
