"""Route dependencies as ``Annotated`` aliases: app state, database session, the caller."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from api import web_sessions
from api.errors import ApiError
from api.fanout import StreamFanout
from api.limits import Leases
from api.signals import WorkerSignals
from shared.live import LiveSessions
from shared.models import User
from shared.settings import Settings
from shared.store import Store
from shared.users import authenticate, get_user_by_name


@dataclass
class AppState:
    """What the API process opens once at start-up and shares across requests."""

    settings: Settings
    redis: aioredis.Redis
    arq: ArqRedis
    live: LiveSessions
    store: Store
    signals: WorkerSignals
    fanout: StreamFanout
    streams: Leases
    """Each user's open event streams (VOICEPOOL_MAX_STREAMS_PER_USER)."""
    signalling: Leases
    """Each user's SDP offers and ICE patches in flight (VOICEPOOL_MAX_SIGNALS_PER_USER)."""


def get_state(request: Request) -> AppState:
    return request.app.state.voicepool


async def get_db(state: Annotated[AppState, Depends(get_state)]) -> AsyncIterator[AsyncSession]:
    async with state.store.session() as session:
        yield session


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="A token from `voicepool users create`.")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _proxied_user_name(request: Request, settings: Settings) -> str | None:
    """Trusted-proxy mode: the user an authenticating proxy vouches for, if configured
    and only when the request comes from one of the configured proxy addresses."""
    header = settings.trusted_proxy_header
    if not header or request.client is None or request.client.host not in settings.trusted_proxies:
        return None
    name = request.headers.get(header)
    return name if name and len(name) <= 64 else None


async def get_current_user(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller, from a bearer token or from the browser's session cookie.

    Cookie-authenticated requests that change something must also carry the
    session's CSRF token in ``X-CSRF-Token`` (on top of SameSite=Strict).
    Uses its own short database session: a long response (an event stream)
    must not hold a pooled connection for its whole life.
    """
    async with state.store.session() as db:
        return await _identify(request, db, state, credentials)


async def _identify(
    request: Request,
    db: AsyncSession,
    state: AppState,
    credentials: HTTPAuthorizationCredentials | None,
) -> User:
    proxied = _proxied_user_name(request, state.settings)
    if proxied is not None:
        user = await get_user_by_name(db, proxied)
        if user is None:
            raise ApiError(401, "unknown_user", "the proxy named a user that does not exist")
        return user
    if credentials is None:
        cookie = request.cookies.get(web_sessions.COOKIE)
        found = await web_sessions.lookup(state.redis, cookie) if cookie else None
        if found is None:
            raise ApiError(
                401, "unauthorized", "sign in, or send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        user_id, csrf = found
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get("X-CSRF-Token", ""), csrf
        ):
            raise ApiError(403, "csrf_failed", "missing or wrong X-CSRF-Token header")
        user = await db.get(User, user_id)
        if user is None:
            raise ApiError(401, "unauthorized", "the signed-in user no longer exists")
        return user
    if credentials.scheme.lower() != "bearer":
        raise ApiError(
            401, "unauthorized", "send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    user = await authenticate(db, credentials.credentials)
    if user is None:
        raise ApiError(
            401, "invalid_token", "the token is unknown, revoked or expired",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def is_admin(user: User) -> bool:
    return user.role == "admin"
