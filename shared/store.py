"""The SQL conversation store: engine, migrations, and session factory.

SQLite by default, PostgreSQL in production; both through SQLAlchemy's async
engine (aiosqlite, asyncpg). The schema is owned by Alembic migrations under
``shared/migrations`` so deployments upgrade in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel.ext.asyncio.session import AsyncSession

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(
            dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry
        ) -> None:
            # WAL lets the persister write while routes read.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (blocking; runs its own event loop).

    Safe from any number of processes at once: migrations/env.py serializes them on a
    database lock, and the ones that waited find the schema already there.
    """
    command.upgrade(alembic_config(url), revision)


async def migrate_async(url: str) -> None:
    await asyncio.to_thread(migrate, url)


class Store:
    """The engine and a session factory, opened once per process."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        self.sessions = session_factory(self.engine)
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold around a write transaction: on SQLite, one at a time in this process.

        SQLite admits one writer and makes the others sleep in its busy handler,
        in steps of up to 100 ms, so under concurrent writes a request waited far
        longer than any write took. Queued on an asyncio lock, the next writer
        starts the moment the last one commits (ops/bench/api.py, session create
        at 8 connections: p99 1.0-1.2 s → 0.11 s). PostgreSQL locks rows, not the
        database: nothing to hold there.
        """
        if self._write_lock is None:
            yield
            return
        async with self._write_lock:
            yield

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def aclose(self) -> None:
        await self.engine.dispose()
