"""Shared fixtures: a real redis-server per test session, and the whole system as processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from harness.postgres import PostgresServer
from harness.system import System
from shared.connections import EmbeddedRedis, redis_client

FIXTURES = Path(__file__).parent / "fixtures"

# As a worker does (worker/__init__.py), before a test imports onnxruntime: nothing it
# reports leaves this machine.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package) in a throwaway cluster on loopback."""
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind the store supports."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def make_system(tmp_path: Path) -> Iterator[object]:
    """Start the whole system with test settings: ``make_system(workers=2, capacity=2, **env)``."""
    systems: list[System] = []

    def start(*, workers: int = 2, capacity: int = 2, **settings: str) -> System:
        system = System(tmp_path / f"system{len(systems)}", settings=dict(settings))
        system.tmp.mkdir()
        systems.append(system)
        return system.start(workers=workers, capacity=capacity)

    yield start
    for system in systems:
        system.stop()


@pytest.fixture
def hello_wav() -> Path:
    return FIXTURES / "hello.wav"


class InProcessAPI:
    """The FastAPI app with its lifespan running, against real Redis and SQLite."""

    def __init__(self, app, client, state) -> None:
        self.app = app
        self.client = client
        self.state = state

    async def token(self, name: str, *, role: str = "user") -> str:
        from shared.users import create_user, issue_token

        async with self.state.store.session() as db:
            user = await create_user(db, name, role=role)
            return (await issue_token(db, user)).token

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_api(redis: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path):
    """``async with make_api(**settings) as api``: the app in-process, real Redis and SQLite."""
    import contextlib

    import httpx

    from api.main import create_app
    from shared.settings import Settings

    @contextlib.asynccontextmanager
    async def start(**overrides: object):
        values: dict[str, object] = {
            "redis_url": redis_server.url,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
            "max_body_bytes": 64 * 1024,
            "ready_wait": 1.0,
            "queue_ttl": 30,
            # No worker runs in-process: sessions queue, as in a pool that scales from zero.
            "admit_without_workers": True,
        }
        values.update(overrides)
        app = create_app(Settings(**values))  # type: ignore[arg-type]  # values of mixed types: Settings validates them
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://voicepool.test"
            ) as client:
                yield InProcessAPI(app, client, app.state.voicepool)

    return start


@pytest.fixture
async def api(make_api):
    async with make_api() as started:
        yield started
