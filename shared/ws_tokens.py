"""Single-use, expiring tokens that open a session's WebSocket on its worker.

The API mints one for the session's owner on request (never into an event);
the worker's WebSocket listener consumes it with GETDEL, so a token opens at
most one connection, and Redis expires the ones nobody used. Only a hash of
the token is stored: what Redis holds cannot be replayed as a token.
"""

from __future__ import annotations

import hashlib
import secrets

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from shared import keys

TOKEN_BYTES = 24
MAX_TOKEN_CHARS = 128  # longer input is not a token of ours; refuse it before hashing


def _key(token: str) -> str:
    return keys.ws_token(hashlib.sha256(token.encode()).hexdigest())


async def mint(redis: aioredis.Redis, session_id: str, ttl_s: float) -> str:
    """A new token for ``session_id``, valid for ``ttl_s`` seconds or one connection."""
    async with redis.pipeline(transaction=False) as pipe:
        token = mint_in(pipe, session_id, ttl_s)
        await pipe.execute()
    return token


def mint_in(pipe: Pipeline, session_id: str, ttl_s: float) -> str:
    """``mint``, as one command of the caller's pipeline (the token is stored when it runs)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    pipe.set(_key(token), session_id, px=max(int(ttl_s * 1000), 1))
    return token


async def revoke(redis: aioredis.Redis, token: str) -> None:
    """Withdraw a token nobody was given."""
    await redis.delete(_key(token))


async def consume(redis: aioredis.Redis, token: str) -> str | None:
    """The session the token opens, or None if it is unknown, expired or already used."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    session_id: str | None = await redis.getdel(_key(token))
    return session_id
