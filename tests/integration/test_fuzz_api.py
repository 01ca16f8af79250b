"""Property-based fuzzing of the whole HTTP API from its OpenAPI schema (schemathesis).

With a valid credential — a bearer token, or the web app's session cookie with
its CSRF token — no generated request may produce a 5xx, and the server must
still be healthy afterwards. The event stream is left out: it is a long-lived
response by design, exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ST = Path(sys.executable).parent / "st"
EXAMPLES = 40
# The cookie run repeats the bearer run's routes through another door: fewer examples do.
COOKIE_EXAMPLES = 20
COOKIE_HOOKS = Path(__file__).with_name("fuzz_cookie_hooks.py")
SYSTEM_SETTINGS = {
    "VOICEPOOL_READY_WAIT": "0.2",
    "VOICEPOOL_SIGNAL_TIMEOUT": "0.5",
    "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
    "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
    "VOICEPOOL_LOGINS_PER_MINUTE": "0",
    # A full queue answers 503 queue_full by design; keep the fuzzer clear of it.
    "VOICEPOOL_MAX_QUEUE_LENGTH": "100000",
    # No worker runs here: sessions wait in the queue rather than being refused.
    "VOICEPOOL_ADMIT_WITHOUT_WORKERS": "true",
}


async def _fuzz(
    api_url: str,
    tmp_path: Path,
    headers: list[str],
    *,
    checks: str = "not_a_server_error",
    exclude: str = "/events$",
    examples: int = EXAMPLES,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [
        str(ST), "run", f"{api_url}/openapi.json",
        *(arg for header in headers for arg in ("--header", header)),
        "--checks", checks,
        "--max-examples", str(examples),
        "--exclude-path-regex", exclude,
        "--generation-deterministic",
        "--request-timeout", "10",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    # cwd: schemathesis' cache stays in the test's directory.
    return await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


async def _victim_session(api_url: str, victim: str) -> str:
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {victim}"}
    ) as api:
        return (await api.post("/api/sessions", json={"transport": "webrtc"})).json()["session_id"]


async def _assert_untouched(api_url: str, victim: str, session_id: str) -> None:
    # The victim's session was never exposed to the fuzzer's (admin) credential in a
    # way that changed it: it is still there, still queued (no worker runs here).
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {victim}"}
    ) as api:
        assert (await api.get("/readyz")).status_code == 200
        still = await api.get(f"/api/sessions/{session_id}")
        assert still.status_code == 200


async def test_no_request_makes_a_server_error(make_system, tmp_path) -> None:
    system = make_system(workers=0, **SYSTEM_SETTINGS)
    admin = system.create_user("fuzzer", admin=True)
    victim = system.create_user("victim")
    theirs = await _victim_session(system.api_url, victim)

    result = await _fuzz(system.api_url, tmp_path, [f"Authorization: Bearer {admin}"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    await _assert_untouched(system.api_url, victim, theirs)


async def test_no_cookie_request_makes_a_server_error(make_system, tmp_path) -> None:
    """The same run signed in as the web app is: the session cookie and X-CSRF-Token.

    Cookie requests take their own path through authentication (a Redis lookup,
    the CSRF comparison on every POST, PATCH and DELETE), so it gets fuzzed too.
    Signing in and out are left out: signing out would end the fuzzer's session,
    and neither is cookie-authenticated. The extra check fails on any 401 or
    ``csrf_failed``: every request must have been taken as signed in.
    """
    system = make_system(workers=0, **SYSTEM_SETTINGS)
    admin = system.create_user("cookie-fuzzer", admin=True)
    victim = system.create_user("victim")
    theirs = await _victim_session(system.api_url, victim)
    async with httpx.AsyncClient(base_url=system.api_url) as web:
        signed_in = await web.post("/api/auth/login", json={"token": admin})
        assert signed_in.status_code == 200, signed_in.text
        cookie = signed_in.cookies["voicepool_session"]
        csrf = signed_in.json()["csrf_token"]
    headers = [f"Cookie: voicepool_session={cookie}", f"X-CSRF-Token: {csrf}"]

    result = await _fuzz(
        system.api_url, tmp_path, headers,
        checks="not_a_server_error,cookie_session_accepted",
        exclude="/events$|/auth/log(in|out)$",
        examples=COOKIE_EXAMPLES,
        env={"SCHEMATHESIS_HOOKS": str(COOKIE_HOOKS)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    await _assert_untouched(system.api_url, victim, theirs)
    async with httpx.AsyncClient(
        base_url=system.api_url, cookies={"voicepool_session": cookie}
    ) as web:
        me = await web.get("/api/me")
        assert me.status_code == 200 and me.json()["csrf_token"] == csrf  # still signed in
