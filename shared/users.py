"""Users and bearer tokens.

A token reads ``vp_<id>_<secret>``: the id finds the row, the secret is
checked against a salted SHA-256 hash. Secrets are 32 random bytes, so a
fast hash is enough (there is nothing to brute-force); the plain token is
shown once, at creation, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.models import ApiToken, User, as_utc, utcnow

TOKEN_PREFIX = "vp"
ROLES = ("user", "admin")


def new_id() -> str:
    return secrets.token_hex(16)


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str  # the only time the plain token exists
    token_id: str
    user: User


async def create_user(db: AsyncSession, name: str, *, role: str = "user") -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    existing = (await db.exec(select(User).where(User.name == name))).first()
    if existing:
        raise ValueError(f"a user named {name!r} already exists")
    user = User(id=new_id(), name=name, role=role)
    db.add(user)
    await db.commit()
    return user


async def issue_token(
    db: AsyncSession, user: User, *, expires_at: datetime | None = None
) -> IssuedToken:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    db.add(
        ApiToken(
            id=token_id, user_id=user.id, salt=salt, hash=_hash(salt, secret), expires_at=expires_at
        )
    )
    await db.commit()
    return IssuedToken(token=f"{TOKEN_PREFIX}_{token_id}_{secret}", token_id=token_id, user=user)


async def authenticate(db: AsyncSession, token: str) -> User | None:
    """The user a bearer token belongs to, or None if it is unknown, revoked or expired."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    _, token_id, secret = parts
    row = await db.get(ApiToken, token_id)
    if row is None or not hmac.compare_digest(row.hash, _hash(row.salt, secret)):
        return None
    if row.revoked_at is not None:
        return None
    if row.expires_at is not None and as_utc(row.expires_at) <= utcnow():
        return None
    return await db.get(User, row.user_id)


async def get_user_by_name(db: AsyncSession, name: str) -> User | None:
    return (await db.exec(select(User).where(User.name == name))).first()
