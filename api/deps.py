"""Route dependencies as ``Annotated`` aliases: app state, database session, the caller."""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, cast

import redis.asyncio as aioredis
from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from api import web_sessions
from api.errors import ApiError, unauthorized
from api.fanout import StreamFanout
from api.limits import Leases
from api.services import ownership
from api.services.ownership import is_admin
from api.signals import WorkerSignals
from api.token_cache import TokenCache
from shared.live import LiveSessions
from shared.models import Conversation, User, VoiceSession, as_utc
from shared.settings import Settings
from shared.store import Store
from shared.users import get_user_by_name, signout_generation, valid_token


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
    tokens: TokenCache = field(default_factory=TokenCache)
    """Bearer tokens checked lately (revocations evict them through Redis at once)."""
    refused_lately: dict[str, float] = field(default_factory=dict)
    """Pools, and users at their live-session limit, that refused a session lately: when
    (monotonic). A create for them looks at admission before it writes anything."""
    background: list[asyncio.Task[None]] = field(default_factory=list)
    """The process's long-lived tasks (persister, reaper, …): one that stops is fatal."""


# Dependencies are ``async def`` even when they await nothing: FastAPI runs a plain ``def``
# one in a thread pool, a thread hop on every request (a fifth of dependency solving, py-spy).
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.voicepool  # set by the lifespan (api.main)
    return state


async def get_db(state: Annotated[AppState, Depends(get_state)]) -> AsyncIterator[AsyncSession]:
    async with state.store.session() as session:
        yield session


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="A token from `voicepool users create`.")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# --- reverse proxies -------------------------------------------------------------------

PEER = "voicepool.peer"
"""Scope key: the socket peer (host, port), kept before X-Forwarded-For replaces ``client``."""


class _KeepPeer:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[PEER] = scope.get("client")
        await self.app(scope, receive, send)


def behind_proxies(app: ASGIApp, trusted: Sequence[str]) -> ASGIApp:
    """``app`` believing X-Forwarded-For/-Proto from the ``trusted`` peers only (none: nobody).

    uvicorn's own proxy handling must be off (``proxy_headers=False``): it runs
    outermost, so the app could no longer tell the proxy's connection from an
    address a client merely claimed. The same middleware runs here, inside a
    step that records the real peer first.
    """
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    if not trusted:
        return _KeepPeer(app)
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))  # type: ignore[arg-type]  # uvicorn types ASGI apps by its own TypedDict scopes, starlette's ASGIApp by mappings
    return _KeepPeer(cast(ASGIApp, proxied))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted_proxy(host: str | None, trusted: Sequence[str]) -> bool:
    """Whether ``host`` (an address) is in ``trusted`` (addresses and CIDR networks)."""
    if not host or not trusted:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers this way
    return any(address in network for network in _networks(tuple(trusted)))


def socket_peer(request: Request) -> str | None:
    """The address of the connection itself, whatever X-Forwarded-For says."""
    peer = request.scope.get(PEER, request.scope.get("client"))
    return peer[0] if peer else None


def _proxied_user_name(request: Request, settings: Settings) -> str | None:
    """Trusted-proxy mode: the user an authenticating proxy vouches for, if configured
    and only on a connection from one of the configured proxies (the socket peer: a
    forwarded address is only what somebody claimed)."""
    header = settings.trusted_proxy_header
    if not header or not is_trusted_proxy(socket_peer(request), settings.trusted_proxies):
        return None
    name = request.headers.get(header)
    return name if name and len(name) <= 64 else None


# --- the caller --------------------------------------------------------------------------


@dataclass
class Caller:
    """Who is calling and with which credential, so a long response (an event stream)
    can check now and then that the credential still holds."""

    user: User
    via: Literal["proxy", "cookie", "token"]
    credential: str = field(default="", repr=False)
    """The session cookie or the bearer token (kept out of reprs, and so of logs)."""
    expires_at: float | None = None
    """Unix time the bearer token expires, if it does."""
    generation: int | None = None
    """The user's sign-out generation when last checked (None: not yet)."""

    async def still_valid(self, state: AppState) -> bool:
        """False once the credential was revoked, signed out or expired.

        Cheap in the common case: a cookie is its session's lookup in Redis; a
        token is its expiry and the user's sign-out generation, and the database
        only when that changed (the first check always looks: a revocation may have landed
        between identifying the caller and reading the generation).
        """
        if self.via == "cookie":
            return await web_sessions.lookup(state.redis, self.credential) is not None
        if self.via != "token":
            return True  # the proxy vouches per request; it has no credential to revoke here
        if self.expires_at is not None and time.time() >= self.expires_at:
            return False
        generation = await signout_generation(state.redis, self.user.id)
        if generation == self.generation:
            return True
        async with state.store.session() as db:
            if await valid_token(db, self.credential) is None:
                return False
        self.generation = generation
        return True


async def get_caller(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller, from a bearer token or from the browser's session cookie.

    Cookie-authenticated requests that change something must also carry the
    session's CSRF token in ``X-CSRF-Token`` (on top of SameSite=Strict).
    Uses its own short database session: a long response (an event stream)
    must not hold a pooled connection for its whole life. A bearer token checked lately
    needs none.
    """
    if credentials is not None and credentials.scheme.lower() == "bearer":
        checked = state.tokens.get(credentials.credentials)
        if checked is not None and _proxied_user_name(request, state.settings) is None:
            return Caller(checked.user, "token", credentials.credentials, checked.expires_at)
    async with state.store.session() as db:
        return await _identify(request, db, state, credentials)


async def get_current_user(caller: Annotated[Caller, Depends(get_caller)]) -> User:
    return caller.user


async def _identify(
    request: Request,
    db: AsyncSession,
    state: AppState,
    credentials: HTTPAuthorizationCredentials | None,
) -> Caller:
    proxied = _proxied_user_name(request, state.settings)
    if proxied is not None:
        user = await get_user_by_name(db, proxied)
        if user is None:
            raise ApiError(401, "unknown_user", "the proxy named a user that does not exist")
        return Caller(user, "proxy")
    if credentials is None:
        cookie = request.cookies.get(web_sessions.COOKIE)
        found = await web_sessions.lookup(state.redis, cookie) if cookie else None
        if cookie is None or found is None:
            raise unauthorized("sign in, or send Authorization: Bearer <token>")
        user_id, csrf = found
        check_csrf(request, csrf)
        user = await db.get(User, user_id)
        if user is None:
            raise ApiError(401, "unauthorized", "the signed-in user no longer exists")
        return Caller(user, "cookie", cookie)
    if credentials.scheme.lower() != "bearer":
        raise unauthorized("send Authorization: Bearer <token>")
    token = await valid_token(db, credentials.credentials)
    user = await db.get(User, token.user_id) if token is not None else None
    if token is None or user is None:
        raise unauthorized("the token is unknown, revoked or expired", "invalid_token")
    expires = as_utc(token.expires_at).timestamp() if token.expires_at is not None else None
    state.tokens.put(credentials.credentials, user, expires)
    return Caller(user, "token", credentials.credentials, expires)


def check_csrf(request: Request, csrf: str) -> None:
    """Cookie-authenticated requests that change something carry the session's CSRF token."""
    if request.method not in SAFE_METHODS and not hmac.compare_digest(
        request.headers.get("X-CSRF-Token", ""), csrf
    ):
        raise ApiError(403, "csrf_failed", "missing or wrong X-CSRF-Token header")


CurrentCaller = Annotated[Caller, Depends(get_caller)]
CurrentUser = Annotated[User, Depends(get_current_user)]


async def require_admin(user: CurrentUser) -> User:
    if not is_admin(user):
        raise ApiError(403, "admin_only", "only administrators may see or change the fleet")
    return user


AdminUser = Annotated[User, Depends(require_admin)]


async def get_owned_session_as_read(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> ownership.SessionAsRead:
    return await ownership.owned_session_as_read(state, db, session_id, user)


async def get_owners_session(
    session_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> VoiceSession:
    return await ownership.owned_session(state, db, session_id, user, admins=False)


async def get_owned_conversation(
    conversation_id: str, user: CurrentUser, db: SessionDep, state: StateDep
) -> Conversation:
    return await ownership.owned_conversation(state, db, conversation_id, user)


OwnedSessionAsRead = Annotated[ownership.SessionAsRead, Depends(get_owned_session_as_read)]
"""The path's session, if the caller owns it or is an admin looking on (else 404), with its
live hash as read: what the route does next needs no second read."""
OwnersSession = Annotated[VoiceSession, Depends(get_owners_session)]
"""The path's session, only for its owner (connecting, signalling, inviting); else 404."""
OwnedConversation = Annotated[Conversation, Depends(get_owned_conversation)]
"""The path's conversation, if the caller owns it or is an admin; else 404."""
