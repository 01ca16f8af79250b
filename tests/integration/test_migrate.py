"""Concurrent migrators as real processes: API replicas and `voicepool migrate` start at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import shared.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from harness.postgres import PostgresServer
from harness.waiting import eventually
from shared.settings import Settings
from shared.store import Store, alembic_config

ROOT = Path(__file__).resolve().parents[2]
MIGRATORS = 3
SQLITE_SEARCH_TABLES = {
    "transcript_search", "transcript_search_config", "transcript_search_content",
    "transcript_search_data", "transcript_search_docsize", "transcript_search_idx",
}  # fmt: skip


def _start_migrators(database_url: str, tmp_path: Path) -> list[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
    env |= {"VOICEPOOL_DATABASE_URL": database_url, "VOICEPOOL_DATA_DIR": str(tmp_path / "var")}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "voicepool", "migrate"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(MIGRATORS)
    ]


def _assert_all_succeed(procs: list[subprocess.Popen[str]]) -> None:
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output


async def _assert_at_head_once(store: Store) -> None:
    head = ScriptDirectory.from_config(alembic_config(store.url)).get_current_head()
    async with store.engine.connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    assert [v for (v,) in versions] == [head]
    # SQLite's full-text index is a virtual table with shadow tables of its own.
    search = {t for t in tables if t.startswith("transcript_search")}
    assert search == (set() if store.url.startswith("postgresql") else SQLITE_SEARCH_TABLES)
    assert tables - search == set(SQLModel.metadata.tables) | {"alembic_version"}


async def _lock_waiters(store: Store) -> int:
    async with store.engine.connect() as conn:
        query = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return (await conn.execute(query)).scalar_one()


async def test_concurrent_migrate_reaches_head_once(database_url: str, tmp_path: Path) -> None:
    procs = _start_migrators(database_url, tmp_path)
    try:
        _assert_all_succeed(procs)
    finally:
        for proc in procs:
            proc.kill()
    store = Store(Settings(database_url=database_url).sqlalchemy_url)
    try:
        await _assert_at_head_once(store)
    finally:
        await store.aclose()


async def test_migrators_arriving_mid_migration_wait(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The race made certain: all three arrive while another migration is in flight.

    A transaction here creates ``alembic_version`` and stays open, as a migrator busy
    creating tables would. Unserialized migrators all queue on that CREATE and, once it
    rolls back, two collide with the third (UniqueViolationError); serialized ones wait
    their turn and find the schema at head.
    """
    database_url = postgres_server.create_database()
    store = Store(Settings(database_url=database_url).sqlalchemy_url)
    procs: list[subprocess.Popen[str]] = []
    try:
        async with store.engine.connect() as gate:
            await gate.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            procs = _start_migrators(database_url, tmp_path)

            async def all_waiting() -> bool:
                exited = [proc for proc in procs if proc.poll() is not None]
                if exited:
                    pytest.fail(exited[0].communicate()[0])  # ends the wait at once
                count = await _lock_waiters(store)
                assert count >= MIGRATORS, f"{count} of {MIGRATORS} migrators waiting"
                return True

            await eventually(all_waiting, timeout=60, what="every migrator waiting on the lock")
            await gate.rollback()
        _assert_all_succeed(procs)
        await _assert_at_head_once(store)
    finally:
        for proc in procs:
            proc.kill()
        await store.aclose()
