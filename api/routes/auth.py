"""Signing in and out of the web app, who am I, and what this server offers."""

from __future__ import annotations

import ipaddress
import re

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, field_validator

from api import limits, web_sessions
from api.deps import AppState, CurrentUser, SessionDep, StateDep, check_csrf
from api.errors import PROFILE_NEEDS, ApiError
from api.routes.workers import live_beats
from api.schemas import Strict
from shared import ice
from shared.fleet import PROFILES, PROTOCOL
from shared.ice import IceServer
from shared.settings import Settings
from shared.users import authenticate

router = APIRouter(prefix="/api", tags=["auth"])


_PASTED_PREFIX = re.compile(r"^(authorization:\s*)?(bearer\s+)?", re.IGNORECASE)


class SignIn(Strict):
    token: str = Field(min_length=1, max_length=256)

    @field_validator("token")
    @classmethod
    def _as_printed(cls, token: str) -> str:
        """The token as ``voicepool dev`` and ``voicepool users`` print it may come pasted
        whole: ``Authorization: Bearer vp_…`` or ``Bearer vp_…`` sign in like ``vp_…``."""
        return _PASTED_PREFIX.sub("", token.strip())


class Me(BaseModel):
    id: str
    name: str
    role: str
    csrf_token: str | None = None


class UnavailableProfile(BaseModel):
    name: str
    needs: str = Field(description="What the server lacks to offer it, e.g. a setting's name.")


class ProfileInfo(BaseModel):
    label: str
    description: str = Field(description="One line: what talking to it is like.")


def profile_info(settings: Settings) -> dict[str, ProfileInfo]:
    """What the web app calls each profile, and what it does, in a line."""
    return {
        "echo": ProfileInfo(
            label="Echo test",
            description="Hear yourself back after each turn: checks your microphone and the "
            "connection, no AI involved.",
        ),
        "assistant": ProfileInfo(
            label=f"{settings.assistant_name}, the assistant",
            description="A voice assistant on OpenAI's Realtime model that can use this "
            "deployment's tools; you can also type to it.",
        ),
    }


class PoolOffer(BaseModel):
    profiles: list[str] = Field(description="What the pool's live workers run.")
    transports: list[str] = Field(description="What they serve (and this API offers).")


class ServerConfig(BaseModel):
    profiles: list[str]
    profile_info: dict[str, ProfileInfo] = Field(
        default_factory=dict, description="Per profile: its label and a one-line description."
    )
    unavailable_profiles: list[UnavailableProfile] = Field(
        default_factory=list, description="Profiles this deployment could offer but does not."
    )
    default_profile: str
    transports: list[str]
    pools: list[str]
    pool_offers: dict[str, PoolOffer] = Field(
        default_factory=dict,
        description="Per pool with live workers: the profiles and transports they serve "
        "(a session asking for another is refused with 422).",
    )
    default_pool: str
    ice_servers: list[IceServer] = Field(
        description="`RTCConfiguration.iceServers`: STUN, and TURN with a credential minted "
        "for this request (valid `VOICEPOOL_TURN_TTL`)."
    )
    grafana_url: str | None
    assistant_name: str = Field(description="What the assistant calls itself; its lines' label.")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _client_key(request: Request) -> str:
    """Who a sign-in attempt is counted against: the client's address. That is the socket
    peer unless the peer is a trusted proxy (only then has X-Forwarded-For replaced it);
    an IPv6 client counts by its /64, which one host can fill with addresses at will."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


@router.post("/auth/login", response_model=Me)
async def sign_in(body: SignIn, request: Request, response: Response, db: SessionDep,
                  state: StateDep) -> Me:  # fmt: skip
    """Exchange a bearer token for an HttpOnly session cookie (and a CSRF token)."""
    limit = state.settings.logins_per_minute
    await limits.hit(state.redis, "login", _client_key(request), limit=limit, per_s=60)
    user = await authenticate(db, body.token)
    if user is None:
        raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired")
    cookie, csrf = await web_sessions.open_session(state.redis, user.id)
    # Once more, after the session records the user's sign-out generation: a revocation
    # that landed in between has either raised it (the session is dead on arrival) or
    # revoked the token, seen here.
    async with state.store.session() as fresh:  # a new transaction sees the revocation
        still = await authenticate(fresh, body.token)
    if still is None:
        await web_sessions.close_session(state.redis, cookie)
        raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired")
    response.set_cookie(
        web_sessions.COOKIE, cookie, max_age=web_sessions.LIFETIME_S, httponly=True,
        samesite="strict", secure=_secure(request), path="/",
    )  # fmt: skip
    return Me(id=user.id, name=user.name, role=user.role, csrf_token=csrf)


@router.post("/auth/logout", status_code=204)
async def sign_out(request: Request, state: StateDep) -> Response:
    """End the browser session; like every cookie request that changes something, it
    needs the session's X-CSRF-Token (another site must not sign the user out)."""
    cookie = request.cookies.get(web_sessions.COOKIE)
    found = await web_sessions.lookup(state.redis, cookie) if cookie else None
    if cookie and found is not None:
        check_csrf(request, found[1])
        await web_sessions.close_session(state.redis, cookie)
    response = Response(status_code=204)
    response.delete_cookie(web_sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/me", response_model=Me)
async def me(user: CurrentUser, request: Request, state: StateDep) -> Me:
    """The caller; with a cookie session, also its CSRF token (for a reloaded page)."""
    csrf = None
    cookie = request.cookies.get(web_sessions.COOKIE)
    if cookie and (found := await web_sessions.lookup(state.redis, cookie)):
        csrf = found[1]
    return Me(id=user.id, name=user.name, role=user.role, csrf_token=csrf)


async def offered_profiles(state: AppState) -> list[str]:
    """The profiles the live workers of this API's protocol run (what they can, not what
    the API's own environment holds); before any worker is up, the API's settings'."""
    running = {p for b in await live_beats(state) if b.protocol == PROTOCOL for p in b.profiles}
    if not running:
        return state.settings.available_profiles
    return [p for p in PROFILES if p in running]


async def pool_offers(state: AppState) -> dict[str, PoolOffer]:
    """Per pool, what its live workers of this API's protocol serve; transports only those
    this API offers too (its settings are the ceiling: Daily needs the API's key)."""
    offered = state.settings.available_transports
    offers: dict[str, PoolOffer] = {}
    for beat in await live_beats(state):
        if beat.protocol != PROTOCOL or beat.pool not in state.settings.pools:
            continue
        offer = offers.setdefault(beat.pool, PoolOffer(profiles=[], transports=[]))
        offer.profiles = [p for p in PROFILES if p in {*offer.profiles, *beat.profiles}]
        served = {*offer.transports, *beat.transports}
        offer.transports = [t for t in offered if t in served]
    return offers


@router.get("/config", response_model=ServerConfig)
async def server_config(user: CurrentUser, state: StateDep) -> ServerConfig:
    """What a client may choose here: profiles, transports, pools, ICE servers."""
    settings = state.settings
    offered = await offered_profiles(state)
    return ServerConfig(
        profiles=offered,
        unavailable_profiles=[
            UnavailableProfile(name=name, needs=PROFILE_NEEDS.get(name, "a worker that runs it"))
            for name in PROFILES
            if name not in offered
        ],
        profile_info=profile_info(settings),
        default_profile="assistant" if "assistant" in offered else offered[0],
        assistant_name=settings.assistant_name,
        transports=settings.available_transports,
        pools=list(settings.pools),
        pool_offers=await pool_offers(state),
        default_pool=settings.default_pool,
        ice_servers=ice.for_user(settings, user.id),
        grafana_url=settings.grafana_url,
    )
