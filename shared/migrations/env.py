"""Alembic environment: runs migrations on the async engine the app uses.

Any number of API replicas and ``voicepool migrate`` commands may start at once:
each takes a database lock on its migration connection before Alembic reads
``alembic_version``, so one migrates and the rest wait, then find the schema at head.
"""

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlmodel import SQLModel

import shared.models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata

# pg_advisory_xact_lock key shared by every migrator on any host: the ASCII bytes of
# "voicepoo", so it won't collide with other advisory locks in the same database.
MIGRATION_LOCK_KEY = 0x766F_6963_6570_6F6F

# Seconds a SQLite migrator waits for another's write lock before giving up.
SQLITE_BUSY_TIMEOUT = 60


def _modelled(name: str | None, type_: str, _parents: object) -> bool:
    """What autogenerate compares with the models: not the transcript search index, which
    is dialect-specific SQL of migration 0002 (an FTS5 table, a GIN index)."""
    return not (name or "").startswith(("transcript_search", "ix_events_transcript_search"))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=_modelled,
    )
    # The lock opened a transaction, so Alembic runs inside it: our commit ends both.
    with context.begin_transaction():
        context.run_migrations()


async def _lock(connection: AsyncConnection) -> None:
    """Take the migration lock; held until the migration commits or rolls back."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
    elif connection.dialect.name == "sqlite":
        # SQLite's own write lock, taken before the first read of the version table:
        # other migrators wait here on the busy timeout, not in the middle of a CREATE.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")


async def _run_async(url: str) -> None:
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT} if sqlite else {}
    )
    try:
        async with engine.connect() as connection:
            await _lock(connection)
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, include_name=_modelled
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    if not isinstance(url, str):
        raise RuntimeError("no database URL: pass it as the 'url' attribute or sqlalchemy.url")
    asyncio.run(_run_async(url))
