"""Tokens: stored hashed, checked in constant time, revocable, expiring."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.models import ApiToken, utcnow
from shared.settings import Settings
from shared.store import Store, migrate_async
from shared.users import authenticate, create_user, issue_token


@pytest.fixture
async def db(database_url: str):
    url = Settings(database_url=database_url).sqlalchemy_url
    await migrate_async(url)
    store = Store(url)
    async with store.session() as session:
        yield session
    await store.aclose()


async def test_token_round_trip_and_only_a_hash_is_stored(db) -> None:
    user = await create_user(db, "alice")
    issued = await issue_token(db, user)
    authenticated = await authenticate(db, issued.token)
    assert authenticated is not None and authenticated.id == user.id
    row = await db.get(ApiToken, issued.token_id)
    secret = issued.token.split("_", 2)[2]
    assert secret not in row.hash and secret not in row.salt


async def test_wrong_revoked_and_expired_tokens_are_refused(db) -> None:
    user = await create_user(db, "bob")
    issued = await issue_token(db, user)
    assert await authenticate(db, issued.token[:-1] + "x") is None
    assert await authenticate(db, "vp_unknown_secret") is None
    assert await authenticate(db, "Bearer nonsense") is None

    expired = await issue_token(db, user, expires_at=utcnow() - timedelta(seconds=1))
    assert await authenticate(db, expired.token) is None

    row = await db.get(ApiToken, issued.token_id)
    row.revoked_at = utcnow()
    db.add(row)
    await db.commit()
    assert await authenticate(db, issued.token) is None


async def test_user_names_are_unique(db) -> None:
    await create_user(db, "carol")
    with pytest.raises(ValueError, match="already exists"):
        await create_user(db, "carol")
    with pytest.raises(ValueError, match="role"):
        await create_user(db, "dave", role="root")
