"""Users and bearer tokens.

A token reads ``vp_<id>_<secret>``: the id finds the row, the secret is
checked against a salted SHA-256 hash. Secrets are 32 random bytes, so a
fast hash is enough (there is nothing to brute-force); the plain token is
shown once, at creation, and never stored.

Revoking also signs the user out: a counter per user in Redis (their sign-out
generation) goes up, which ends every browser session opened before it, and
makes open event streams re-check their credential; the user's live sessions
end with reason ``revoked``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis.asyncio as aioredis
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared import control, keys, queue
from shared.ids import new_id
from shared.lifecycle import OWNED_STATES, Reason
from shared.live import LiveSessions
from shared.models import ApiToken, User, as_utc, utcnow

TOKEN_PREFIX = "vp"
ROLES = ("user", "admin")


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


async def valid_token(db: AsyncSession, token: str) -> ApiToken | None:
    """The row of a bearer token, or None if it is unknown, revoked or expired."""
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
    return row


async def authenticate(db: AsyncSession, token: str) -> User | None:
    """The user a bearer token belongs to, or None if it is unknown, revoked or expired."""
    row = await valid_token(db, token)
    return None if row is None else await db.get(User, row.user_id)


async def get_user_by_name(db: AsyncSession, name: str) -> User | None:
    return (await db.exec(select(User).where(User.name == name))).first()


# --- signing out everywhere -------------------------------------------------------------

END_REPLY_WAIT_S = 5.0  # how long to wait for workers to confirm the ends
STRAGGLER_WAIT_S = 1.0  # before looking again for sessions created during the first look


async def signout_generation(redis: aioredis.Redis, user_id: str) -> int:
    return int(await redis.get(keys.user_signouts(user_id)) or 0)


async def sign_out_everywhere(redis: aioredis.Redis, live: LiveSessions, user_id: str) -> int:
    """End the user's browser sessions (and so their event streams) and live sessions.

    Call it after the tokens are revoked in the database: a sign-in racing it
    either sees the revoked token or stores the old generation. Returns how many
    live sessions were ended (queued ones cancelled, running ones ended by their
    worker, reason ``revoked``).
    """
    await redis.incr(keys.user_signouts(user_id))
    await redis.publish(keys.REVOCATIONS, user_id)  # every API's token cache drops the user
    ended: set[str] = set()
    # The second look catches sessions created by requests that were authenticated
    # just before the revocation and were still in flight during the first.
    for attempt in range(2):
        if attempt:
            await asyncio.sleep(STRAGGLER_WAIT_S)
        replies: set[str] = set()
        live_ids = await cast("Awaitable[set[str]]", redis.smembers(keys.user_live(user_id)))
        # Waiting ones first: a slot the revocation frees must not start one of them.
        for session_id in live_ids - ended:
            if await queue.end_waiting(live, session_id, Reason.REVOKED):
                ended.add(session_id)
        for session_id in live_ids - ended:
            reply = await _ask_worker_to_end(redis, live, session_id)
            if reply is not None:
                ended.add(session_id)
                replies.add(reply)
        # Workers answer at once; a dead one never does (its sessions are the reaper's).
        deadline = time.monotonic() + END_REPLY_WAIT_S
        while replies and (left := deadline - time.monotonic()) > 0:
            got = await control.wait_reply(redis, list(replies), left)
            if got is None:
                break
            replies.discard(got[0])
    return len(ended)


async def _ask_worker_to_end(
    redis: aioredis.Redis, live: LiveSessions, session_id: str
) -> str | None:
    """Ask the worker of a session that is not waiting to end it (reason ``revoked``).

    Returns None if it was already final or had no worker to ask, else the key the
    worker's reply arrives on.
    """
    meta = await live.get(session_id)  # running, final, or a worker took it meanwhile
    worker_id = meta.get("worker_id")
    if meta.get("state") not in OWNED_STATES or not worker_id:
        return None  # final already; one whose worker died is the reaper's
    # The same "end" control message the API's DELETE sends, through the worker's list.
    end = control.End(session_id=session_id, payload=control.EndBody(reason=Reason.REVOKED))
    return await control.send(redis, worker_id, end)
