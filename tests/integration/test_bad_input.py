"""Bad input gets a clear 4xx with a stable code, and disturbs nothing else."""

from __future__ import annotations

import pytest

from harness.sdp import VALID_OFFER


@pytest.fixture
async def alice(api) -> str:
    return await api.token("alice")


async def _create(api, token: str) -> dict:
    response = await api.client.post(
        "/api/sessions", json={"transport": "webrtc", "profile": "echo"}, headers=api.auth(token)
    )
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"{not json", "application/json", "invalid_request"),
        (b'{"transport": 5}', "application/json", "invalid_request"),
        (b'{"transport": "carrier-pigeon"}', "application/json", "invalid_request"),
        (b'{"transport": "webrtc", "colour": "blue"}', "application/json", "invalid_request"),
        (
            b'{"transport": "webrtc", "profile": "karaoke"}',
            "application/json",
            "profile_unavailable",
        ),
        (b'{"transport": "webrtc", "pool": "moon"}', "application/json", "unknown_pool"),
        (b"[1, 2, 3]", "application/json", "invalid_request"),
    ],
)
async def test_bad_session_requests_are_422(api, alice, body, content_type, code) -> None:
    response = await api.client.post(
        "/api/sessions",
        content=body,
        headers={**api.auth(alice), "Content-Type": content_type},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == code
    assert detail["message"]


async def test_unknown_ids_are_404(api, alice) -> None:
    for method, path in [
        ("GET", "/api/sessions/nope"),
        ("DELETE", "/api/sessions/nope"),
        ("GET", "/api/sessions/nope/events"),
        ("GET", "/api/conversations/nope"),
        ("GET", "/api/conversations/nope/export"),
        ("GET", "/api/sessions/" + "x" * 500),
    ]:
        response = await api.client.request(method, path, headers=api.auth(alice))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"]["code"].endswith("_not_found")
    offer = {"sdp": "v=0", "type": "offer"}
    response = await api.client.post(
        "/api/sessions/nope/offer", json=offer, headers=api.auth(alice)
    )
    assert response.status_code == 404


async def test_missing_or_wrong_token_is_401(api) -> None:
    assert (await api.client.get("/api/conversations")).status_code == 401
    for token in ("nonsense", "vp_abc_def", "vp_" + "0" * 16 + "_guess"):
        response = await api.client.get(
            "/api/conversations", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.json()["detail"]["code"] == "invalid_token"


async def test_offer_for_an_ended_session_is_409(api, alice) -> None:
    session = await _create(api, alice)  # no worker runs here: it stays queued
    cancelled = await api.client.delete(
        f"/api/sessions/{session['session_id']}", headers=api.auth(alice)
    )
    assert cancelled.json()["status"] == "cancelled"
    for _ in range(2):
        response = await api.client.post(
            f"/api/sessions/{session['session_id']}/offer",
            json={"sdp": VALID_OFFER, "type": "offer"},
            headers=api.auth(alice),
        )
        assert response.status_code == 409
        assert response.json()["detail"]["code"] == "session_ended"


async def test_offer_waits_for_ready_then_says_not_ready(api, alice) -> None:
    session = await _create(api, alice)  # no worker: never ready within ready_wait
    response = await api.client.post(
        f"/api/sessions/{session['session_id']}/offer",
        json={"sdp": VALID_OFFER, "type": "offer"},
        headers=api.auth(alice),
    )
    assert response.status_code == 409
    assert response.json()["detail"]["code"] == "not_ready"
    assert response.headers["Retry-After"]


async def test_bad_offers_are_422(api, alice) -> None:
    session = await _create(api, alice)
    url = f"/api/sessions/{session['session_id']}/offer"
    for body in ({"sdp": "v=0"}, {"sdp": 1, "type": "offer"}, {"sdp": "v=0", "type": "answer"}):
        response = await api.client.post(url, json=body, headers=api.auth(alice))
        assert response.status_code == 422, body
    patch = {"pc_id": "x", "candidates": [{"candidate": "c", "sdp_mline_index": -1}]}
    response = await api.client.patch(url, json=patch, headers=api.auth(alice))
    assert response.status_code == 422


async def test_bad_event_ids_are_422(api, alice) -> None:
    session = await _create(api, alice)
    response = await api.client.get(
        session["events_url"], headers={**api.auth(alice), "Last-Event-ID": "not-an-id"}
    )
    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "invalid_event_id"


async def test_oversize_bodies_are_413_and_nothing_is_disturbed(api, alice) -> None:
    before = await _create(api, alice)
    huge = b'{"transport": "webrtc", "profile": "' + b"x" * 200_000 + b'"}'
    response = await api.client.post(
        "/api/sessions",
        content=huge,
        headers={**api.auth(alice), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["detail"]["code"] == "body_too_large"

    async def chunks():
        for _ in range(100):
            yield b" " * 1024  # no Content-Length: counted while streaming

    response = await api.client.post(
        "/api/sessions",
        content=chunks(),
        headers={**api.auth(alice), "Content-Type": "application/json"},
    )
    assert response.status_code == 413

    # Everything else still works and nothing stored was lost.
    assert (await api.client.get("/readyz")).status_code == 200
    after = await _create(api, alice)
    listed = (await api.client.get("/api/conversations", headers=api.auth(alice))).json()
    ids = {c["conversation_id"] for c in listed}
    assert {before["conversation_id"], after["conversation_id"]} <= ids


async def test_another_users_session_is_404(api, alice) -> None:
    mallory = await api.token("mallory")
    session = await _create(api, alice)
    for method, path in [
        ("GET", f"/api/sessions/{session['session_id']}"),
        ("DELETE", f"/api/sessions/{session['session_id']}"),
        ("GET", session["events_url"]),
        ("GET", f"/api/conversations/{session['conversation_id']}"),
    ]:
        response = await api.client.request(method, path, headers=api.auth(mallory))
        assert response.status_code == 404, (method, path)
    response = await api.client.post(
        "/api/sessions",
        json={"transport": "webrtc", "conversation_id": session["conversation_id"]},
        headers=api.auth(mallory),
    )
    assert response.status_code == 404
    still = await api.client.get(f"/api/sessions/{session['session_id']}", headers=api.auth(alice))
    assert still.json()["status"] == "queued"


async def test_the_per_user_limit_answers_429(api) -> None:
    limited = api.state.settings.max_sessions_per_user
    token = await api.token("greedy")
    sessions = [await _create(api, token) for _ in range(limited)]
    refused = await api.client.post(
        "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
    )
    assert refused.status_code == 429
    assert refused.json()["detail"]["code"] == "too_many_sessions"
    assert refused.headers["Retry-After"]
    await api.client.delete(f"/api/sessions/{sessions[0]['session_id']}", headers=api.auth(token))
    assert (
        await api.client.post(
            "/api/sessions", json={"transport": "webrtc"}, headers=api.auth(token)
        )
    ).status_code == 202


async def test_cookie_sign_in_needs_csrf_for_changes_and_signs_out(api) -> None:
    token = await api.token("browser")
    assert (await api.client.post("/api/auth/login", json={"token": "vp_x_y"})).status_code == 401
    signed_in = await api.client.post("/api/auth/login", json={"token": token})
    assert signed_in.status_code == 200
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    csrf = signed_in.json()["csrf_token"]
    # The client keeps the cookie: reads work without a bearer token.
    me = await api.client.get("/api/me")
    assert me.json()["name"] == "browser" and me.json()["csrf_token"] == csrf
    config = (await api.client.get("/api/config")).json()
    assert config["profiles"] == ["echo"]
    # The assistant is not hidden: the page can say what it needs (a setting's name, no value).
    assert config["unavailable_profiles"] == [
        {"name": "assistant", "needs": "OPENAI_API_KEY on the workers"}
    ]
    body = {"transport": "webrtc"}
    refused = await api.client.post("/api/sessions", json=body)
    assert refused.status_code == 403
    assert refused.json()["detail"]["code"] == "csrf_failed"
    wrong = await api.client.post("/api/sessions", json=body, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    made = await api.client.post("/api/sessions", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 202
    assert (await api.client.post("/api/auth/logout")).status_code == 403  # CSRF here too
    logout = await api.client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert logout.status_code == 204
    assert (await api.client.get("/api/me")).status_code == 401


async def test_security_headers_and_the_app_fallback(api) -> None:
    response = await api.client.get("/healthz")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert (await api.client.get("/api/nothing-here")).status_code == 404
    page = await api.client.get("/history")
    assert page.status_code in (200, 404)  # index.html once the web app is built
    assert (await api.client.get("/../../etc/passwd")).status_code in (200, 404)
    assert "root:" not in (await api.client.get("/..%2F..%2Fetc%2Fpasswd")).text


@pytest.mark.parametrize("pasted", ["Bearer {t}", "  bearer {t}\n", "Authorization: Bearer {t}"])
async def test_a_token_pasted_as_printed_signs_in(api, pasted: str) -> None:
    """``voicepool dev`` prints ``Authorization: Bearer vp_…``: pasted whole, or from
    ``Bearer`` on, it signs in like the bare token; anything else is still refused."""
    token = await api.token("paster")
    signed_in = await api.client.post("/api/auth/login", json={"token": pasted.format(t=token)})
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["name"] == "paster"
    refused = await api.client.post("/api/auth/login", json={"token": f"Token {token}"})
    assert refused.status_code == 401
