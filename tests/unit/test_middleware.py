"""The per-credential in-flight limit: who a request claims to be, and the refusal."""

from __future__ import annotations

import asyncio

import httpx

from api.middleware import CredentialConcurrencyMiddleware, credential_key
from harness.waiting import eventually


def _scope(*headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http", "path": "/api/me", "headers": list(headers)}


def test_the_key_names_the_credential_but_never_holds_its_secret() -> None:
    key = credential_key(_scope((b"authorization", b"Bearer vp_abc123_se_cr-et")))
    assert key == "t:vp_abc123"
    cookie = credential_key(_scope((b"cookie", b"voicepool_session=s3cret")))
    assert cookie is not None and cookie.startswith("c:") and "s3cret" not in cookie
    assert credential_key(_scope((b"cookie", b"other=1"))) is None
    assert credential_key(_scope()) is None


async def test_requests_beyond_the_limit_are_refused_and_the_slot_comes_back() -> None:
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = CredentialConcurrencyMiddleware(app, limit=2)
    transport = httpx.ASGITransport(app=limited)
    headers = {"Authorization": "Bearer vp_one_secret"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        held = [asyncio.create_task(client.get("/api/me", headers=headers)) for _ in range(2)]
        await eventually(lambda: limited.in_flight.total() == 2, timeout=5, what="2 in flight")
        refused = await client.get("/api/me", headers=headers)
        other = asyncio.create_task(
            client.get("/api/me", headers={"Authorization": "Bearer vp_two_x"})
        )
        # Another credential gets in while the first one is at its limit.
        await eventually(lambda: limited.in_flight.total() == 3, timeout=5, what="3 in flight")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["detail"]["code"] == "too_many_requests"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held, other)] == [200, 200, 200]
        assert (await client.get("/api/me", headers=headers)).status_code == 200  # slots back
    assert limited.in_flight == {}
