"""Bearer tokens this API process has checked lately, so a request needs no database.

Checking a token is two ORM lookups (the token's row, then its user): under a burst of
session starts that was the largest part of the API's CPU (py-spy, ops/bench). A checked
token is kept here for ``TOKEN_CACHE_S``.

Invariant: a revoked token stops working within a Redis round trip, in every API
process. Revoking (shared/users.sign_out_everywhere) publishes the user's id; each
process's ``listen`` drops that user's entries when it arrives. While the subscription
is not up (before it starts, while Redis is away) the cache is neither read nor filled,
and it starts empty each time it is (re)subscribed: a revocation could have passed
unheard. A partition that keeps the subscription open but silent is bounded by the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import keys
from shared.models import User

log = logging.getLogger(__name__)

TOKEN_CACHE_S = 5.0  # how long a checked token is trusted without asking the database
MAX_TOKENS = 10_000  # distinct tokens kept; past it the cache starts over
RESUBSCRIBE_S = 1.0  # after the subscription broke, before trying again


@dataclass(frozen=True)
class CheckedToken:
    user: User
    expires_at: float | None  # the token's own expiry (Unix time), if it has one
    checked_at: float


class TokenCache:
    def __init__(self, ttl: float = TOKEN_CACHE_S, max_tokens: int = MAX_TOKENS):
        self.ttl = ttl
        self.max_tokens = max_tokens
        self.listening = False
        self._tokens: dict[bytes, CheckedToken] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()  # the plain token is not kept

    def get(self, token: str) -> CheckedToken | None:
        if not self.listening:
            return None
        key = self._key(token)
        found = self._tokens.get(key)
        if found is None:
            return None
        now = time.time()
        if now - found.checked_at > self.ttl or (
            found.expires_at is not None and now >= found.expires_at
        ):
            del self._tokens[key]
            return None
        return found

    def put(self, token: str, user: User, expires_at: float | None) -> None:
        if not self.listening:
            return
        if len(self._tokens) >= self.max_tokens:
            self._tokens.clear()
        self._tokens[self._key(token)] = CheckedToken(user, expires_at, time.time())

    def forget_user(self, user_id: str) -> None:
        for key in [k for k, v in self._tokens.items() if v.user.id == user_id]:
            del self._tokens[key]

    async def listen(self, redis: aioredis.Redis) -> None:
        """Hear revocations, forever; the cache is used only while this is subscribed."""
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.REVOCATIONS)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":  # also after redis-py reconnects
                            self._tokens.clear()  # a revocation may have passed meanwhile
                            self.listening = True
                        elif message["type"] == "message":
                            self.forget_user(_text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocations unheard (%s): checking every token in the database", exc)
            finally:
                self.listening = False
                self._tokens.clear()
            await asyncio.sleep(RESUBSCRIBE_S)


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
