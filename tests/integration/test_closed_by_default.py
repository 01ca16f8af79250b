"""Closed by default where it matters: /metrics behind a token or on its own listener,
/docs and /openapi.json switchable off, and the embedded Redis behind a password."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from harness.api import wait_for_status
from shared.connections import EmbeddedRedis, free_port

METRICS_TOKEN = "metrics-t0ken-for-tests"


# --- /metrics ---------------------------------------------------------------------------


async def test_metrics_are_open_without_a_token(api) -> None:
    """The default is today's: Prometheus scrapes /metrics with no credential."""
    scraped = await api.client.get("/metrics")
    assert scraped.status_code == 200
    assert "voicepool_http_requests_total" in scraped.text


async def test_metrics_need_the_token_when_one_is_set(make_api) -> None:
    async with make_api(metrics_token=METRICS_TOKEN) as api:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": "Bearer"},
        ):
            refused = await api.client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["detail"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "voicepool_" not in refused.text
        scraped = await api.client.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert scraped.status_code == 200
        assert "voicepool_http_requests_total" in scraped.text
        # Only /metrics: health checks stay open for load balancers and compose.
        assert (await api.client.get("/healthz")).status_code == 200


async def test_metrics_on_a_listener_of_their_own(make_api) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    async with make_api(metrics_bind=f"127.0.0.1:{port}", metrics_token=METRICS_TOKEN) as api:
        # Not on the API's own port any more, not even through the web app's catch-all.
        assert (await api.client.get("/metrics")).status_code == 404
        async with httpx.AsyncClient(timeout=5) as scraper:
            assert (await scraper.get(url)).status_code == 401
            wrong = await scraper.get(url, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            scraped = await scraper.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert scraped.status_code == 200
            assert "voicepool_http_requests_total" in scraped.text
    # The listener goes with the app.
    async with httpx.AsyncClient(timeout=2) as scraper:
        with pytest.raises(httpx.ConnectError):
            await scraper.get(url)


async def test_metrics_listener_without_a_token_is_open(make_api) -> None:
    port = free_port()
    async with make_api(metrics_bind=f"127.0.0.1:{port}"), httpx.AsyncClient() as scraper:
        scraped = await scraper.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200 and "voicepool_" in scraped.text


def test_metrics_bind_must_be_host_and_port() -> None:
    from pydantic import ValidationError

    from shared.settings import Settings

    for wrong in ("9101", "127.0.0.1", "127.0.0.1:http", ":9101", "127.0.0.1:70000"):
        with pytest.raises(ValidationError):
            Settings(metrics_bind=wrong)
    assert Settings(metrics_bind="[::1]:9101").metrics_address == ("::1", 9101)
    # compose passes an unset variable as "": that is "no token", not an empty one.
    assert Settings(metrics_token="", metrics_bind="").metrics_token is None


# --- /docs and /openapi.json ------------------------------------------------------------


@pytest.fixture
def built_web_app(tmp_path: Path) -> Path:
    """A web app build, so the catch-all route answers unknown paths with 200."""
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>voicepool</title>")
    return dist


async def test_web_app_files_routes_and_missing_chunks(make_api, built_web_app) -> None:
    (built_web_app / "assets").mkdir()
    (built_web_app / "assets" / "index-abc123.js").write_text("export {};")
    async with make_api(frontend_dir=built_web_app) as api:
        chunk = await api.client.get("/assets/index-abc123.js")
        assert chunk.status_code == 200 and "immutable" in chunk.headers["cache-control"]
        # An app route survives a reload: index.html, looked at afresh each time.
        route = await api.client.get("/history")
        assert route.status_code == 200 and "<title>voicepool</title>" in route.text
        assert route.headers["cache-control"] == "no-cache"
        # A chunk of an earlier build, asked for by a page opened before an update.
        gone = await api.client.get("/assets/pipecat-old999.js")
        assert gone.status_code == 404 and "Reload the page" in gone.text
        escape = await api.client.get("/assets/..%2f..%2fetc%2fpasswd")
        assert escape.status_code == 404


async def test_docs_are_served_by_default(make_api, built_web_app) -> None:
    async with make_api(frontend_dir=built_web_app) as api:
        schema = await api.client.get("/openapi.json")
        assert schema.status_code == 200 and "/api/sessions" in schema.json()["paths"]
        docs = await api.client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_docs_can_be_switched_off(make_api, built_web_app) -> None:
    async with make_api(api_docs=False, frontend_dir=built_web_app) as api:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            gone = await api.client.get(path)
            assert gone.status_code == 404, path
            assert gone.json()["detail"]["code"] == "not_found"
        # The rest is unchanged: the web app and the API answer as before.
        assert (await api.client.get("/history")).status_code == 200
        assert (await api.client.get("/healthz")).status_code == 200


# --- the embedded Redis -------------------------------------------------------------------


async def test_embedded_redis_refuses_clients_without_its_password(redis_server) -> None:
    assert redis_server.password
    assert redis_server.url == (f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0")
    anonymous = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    with pytest.raises(AuthenticationError):  # redis-py's name for NOAUTH
        await anonymous.ping()
    await anonymous.aclose()
    guessing = aioredis.Redis(host="127.0.0.1", port=redis_server.port, password="guess")
    with pytest.raises((AuthenticationError, ResponseError)):  # WRONGPASS
        await guessing.ping()
    await guessing.aclose()

    with_url = aioredis.Redis.from_url(redis_server.url)
    assert await with_url.ping()
    await with_url.aclose()


def test_embedded_redis_password_stays_off_the_command_line(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", password="chosen-password").start()
    try:
        assert server.url.startswith("redis://:chosen-password@127.0.0.1:")
        assert server.process is not None
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert b"chosen-password" not in cmdline  # every local user can read that
        assert os.stat(server.auth_file).st_mode & 0o077 == 0
        # stop() and start() again: the same password, so clients' URLs stay valid.
        server.stop()
        server.start()
        import redis

        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()
    with pytest.raises(ValueError):
        EmbeddedRedis(tmp_path / "other", password="has spaces@and:colons")


def test_embedded_redis_without_a_password_when_asked(tmp_path: Path) -> None:
    """For clients that cannot AUTH: an explicit choice, never the default."""
    server = EmbeddedRedis(tmp_path / "redis", require_password=False).start()
    try:
        import redis

        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis(port=server.port) as client:
            assert client.ping()
    finally:
        server.stop()


async def test_the_whole_system_runs_on_the_passworded_redis(make_system) -> None:
    """The API (redis-py and arq), a worker (arq's poll loop, heartbeats) and the test's
    own client all authenticate with the URL; none of them writes the password to a log."""
    system = make_system(workers=1, capacity=1)  # starting waits for /readyz and the worker
    assert system.redis_server.password in system.env["VOICEPOOL_REDIS_URL"]
    token = system.create_user("alice")
    async with httpx.AsyncClient(
        base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}
    ) as api:
        created = await api.post("/api/sessions", json={"transport": "webrtc"})
        assert created.status_code == 202, created.text
        session_id = created.json()["session_id"]
        # The worker took the job from the queue.
        await wait_for_status(api, session_id, {"ready"}, timeout=10)
        await api.delete(f"/api/sessions/{session_id}")
    assert system.redis_server.password not in system.log_tail(lines=10_000)
