"""Shared fixtures: a real redis-server per test session, and the whole system as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.connections import EmbeddedRedis, redis_client
from tests.support.system import System

FIXTURES = Path(__file__).parent / "fixtures"


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
