"""Signing in and out of the web app, who am I, and what this server offers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from api import limits, web_sessions
from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import ApiError
from api.schemas import Strict
from shared.users import authenticate

router = APIRouter(prefix="/api", tags=["auth"])


class SignIn(Strict):
    token: str = Field(min_length=1, max_length=256)


class Me(BaseModel):
    id: str
    name: str
    role: str
    csrf_token: str | None = None


class ServerConfig(BaseModel):
    profiles: list[str]
    default_profile: str
    transports: list[str]
    pools: list[str]
    default_pool: str
    ice_servers: list[str]
    grafana_url: str | None


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.post("/auth/login", response_model=Me)
async def sign_in(body: SignIn, request: Request, response: Response, db: SessionDep,
                  state: StateDep) -> Me:  # fmt: skip
    """Exchange a bearer token for an HttpOnly session cookie (and a CSRF token)."""
    client = request.client.host if request.client else "unknown"
    await limits.hit(state.redis, "login", client, limit=state.settings.logins_per_minute, per_s=60)
    user = await authenticate(db, body.token)
    if user is None:
        raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired")
    cookie, csrf = await web_sessions.open_session(state.redis, user.id)
    response.set_cookie(
        web_sessions.COOKIE, cookie, max_age=web_sessions.LIFETIME_S, httponly=True,
        samesite="strict", secure=_secure(request), path="/",
    )  # fmt: skip
    return Me(id=user.id, name=user.name, role=user.role, csrf_token=csrf)


@router.post("/auth/logout", status_code=204)
async def sign_out(request: Request, state: StateDep) -> Response:
    cookie = request.cookies.get(web_sessions.COOKIE)
    if cookie:
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


@router.get("/config", response_model=ServerConfig)
async def server_config(_user: CurrentUser, state: StateDep) -> ServerConfig:
    """What a client may choose here: profiles, transports, pools, ICE servers."""
    settings = state.settings
    return ServerConfig(
        profiles=settings.available_profiles,
        default_profile=settings.default_profile,
        transports=settings.available_transports,
        pools=list(settings.pools),
        default_pool=settings.default_pool,
        ice_servers=list(settings.ice_servers),
        grafana_url=settings.grafana_url,
    )
