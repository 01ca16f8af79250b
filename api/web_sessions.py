"""Browser sign-in: a bearer token is exchanged for a session cookie.

The cookie holds a random id; Redis maps it to the user and a CSRF token, so
signing out (or expiry) ends it at once, and the bearer token itself never
sits in the browser's cookie jar. Each session also records the user's
sign-out generation when it was opened (``shared.keys.user_signouts``):
revoking the user raises the generation, which ends every session opened
before, however many there are and in whichever browser.
"""

from __future__ import annotations

import json
import secrets

import redis.asyncio as aioredis

from shared import keys
from shared.users import signout_generation

COOKIE = "voicepool_session"
LIFETIME_S = 7 * 24 * 3600


def _key(session_id: str) -> str:
    return f"{keys.PREFIX}:web:{session_id}"


async def open_session(redis: aioredis.Redis, user_id: str) -> tuple[str, str]:
    """Returns (cookie value, CSRF token)."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    generation = await signout_generation(redis, user_id)
    record = {"user": user_id, "csrf": csrf, "gen": generation}
    await redis.set(_key(session_id), json.dumps(record), ex=LIFETIME_S)
    return session_id, csrf


async def lookup(redis: aioredis.Redis, session_id: str) -> tuple[str, str] | None:
    """(user id, CSRF token) of a live session; None if unknown, expired or signed out."""
    if len(session_id) > 128:
        return None
    raw = await redis.get(_key(session_id))
    if raw is None:
        return None
    found = json.loads(raw)
    # Sessions from before generations were recorded count as generation 0.
    if found.get("gen", 0) != await signout_generation(redis, found["user"]):
        await redis.delete(_key(session_id))
        return None
    return found["user"], found["csrf"]


async def close_session(redis: aioredis.Redis, session_id: str) -> None:
    await redis.delete(_key(session_id))
