"""Errors users see: a stable ``code`` and a plain message, never a stack trace.

Every error body has the same shape: ``{"detail": {"code": ..., "message": ...}, "info": message}``
(``info`` repeats the message where Pipecat's client SDK reads it).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.connections import REDIS_AWAY
from shared.live import AdmissionRefused


class ApiError(HTTPException):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(status, {"code": code, "message": message, **extra}, headers=headers)
        self.code = code


def not_found(what: str = "session") -> ApiError:
    # The same answer whether it does not exist or belongs to someone else.
    return ApiError(404, f"{what}_not_found", f"no such {what}")


def session_ended(how: str) -> ApiError:
    return ApiError(409, "session_ended", f"the session has already {how}")


def not_ready(
    message: str = "the session is still waiting for a worker; try again",
    *,
    session_id: str | None = None,
) -> ApiError:
    # 409, not 503: the server is fine, the session is just not there yet.
    if session_id is None:
        return ApiError(409, "not_ready", message, headers={"Retry-After": "2"})
    headers = {"Retry-After": "2", "X-Session-Id": session_id}
    return ApiError(409, "not_ready", message, headers=headers, session_id=session_id)


def unauthorized(message: str, code: str = "unauthorized") -> ApiError:
    """401 that names the scheme to answer with (RFC 9110 asks for WWW-Authenticate)."""
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def not_offered(kind: str, value: str, available: list[str]) -> ApiError:
    """422 ``{kind}_unavailable``: a profile or transport this deployment does not offer."""
    offered = ", ".join(available)
    return ApiError(
        422, f"{kind}_unavailable", f"{kind} {value!r} is not available here; available: {offered}"
    )


def too_many(code: str, message: str, retry_after_s: float) -> ApiError:
    """429 for a caller over a limit: a stable code, a plain message, when to try again."""
    return ApiError(429, code, message, headers={"Retry-After": _seconds(retry_after_s)})


# What a worker lacks to run a profile or serve a transport (a setting's name, never its
# value).
PROFILE_NEEDS = {"assistant": "OPENAI_API_KEY on the workers"}
TRANSPORT_NEEDS = {"daily": "DAILY_API_KEY on the workers"}

# With no worker in a pool, when one comes is the operator's doing: a worker that is
# starting joins within about this long.
NO_WORKERS_RETRY_S = 10.0


def refused(
    pool: str,
    refusal: AdmissionRefused,
    queue_ttl: float,
    profile: str,
    transport: str = "",
    lacking: str = "profile",
) -> ApiError:
    """503 when the pool can't take a session now, for anyone: ``no_workers``,
    ``queue_full`` or ``no_capacity``, with a ``Retry-After`` from the pool's numbers;
    422 ``profile_unavailable`` (or ``transport_unavailable``, per ``lacking``) when none
    of its workers runs the session's profile with its transport."""
    code, amount = refusal.code, refusal.value
    if code == "no_profile":
        what = transport if lacking == "transport" else profile
        table = TRANSPORT_NEEDS if lacking == "transport" else PROFILE_NEEDS
        needs = table.get(what, "")
        verb = "serves" if lacking == "transport" else "runs"
        return ApiError(
            422,
            f"{lacking}_unavailable",
            f"no worker of pool {pool!r} {verb} {lacking} {what!r}"
            + (f" (it needs {needs})" if needs else ""),
        )
    if code == "no_workers":
        message = (
            f"pool {pool!r} has no worker taking sessions"
            + (f" ({amount:.0f} draining or stalled)" if amount else "")
            + "; try again later"
        )
        retry = NO_WORKERS_RETRY_S
    elif code == "queue_full":
        message = f"pool {pool!r} has {amount:.0f} sessions waiting, all it queues; try again later"
        # Every start frees a place, and within the TTL every waiting session has
        # started or expired.
        retry = min(1 / refusal.starts_per_s, queue_ttl) if refusal.starts_per_s else queue_ttl
    else:
        message = (
            f"pool {pool!r} is busy: a new session would wait about {amount:.0f} s, "
            f"longer than the {queue_ttl:.0f} s a session waits; try again later"
        )
        retry = amount - queue_ttl  # when the expected wait is back within the TTL
    return ApiError(503, code, message, headers={"Retry-After": _seconds(retry)})


def _seconds(value: float) -> str:
    return str(max(math.ceil(value), 1))


def already_connected() -> ApiError:
    return ApiError(409, "already_connected", "the session is no longer waiting for a client")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    message = "; ".join(_describe(e) for e in errors) or "invalid request"
    return JSONResponse(
        status_code=422,
        content={
            "detail": {"code": "invalid_request", "message": message, "errors": errors},
            "info": message,
        },
    )


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail: object = exc.detail  # typed str; FastAPI's HTTPException carries any JSON value
    if not isinstance(detail, dict):
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        detail = {"code": code, "message": str(detail)}
    return JSONResponse(
        status_code=exc.status_code, content={"detail": detail}, headers=exc.headers
    )


async def _redis_away(_request: Request, _exc: Exception) -> JSONResponse:
    # Redis restarting or failing over: a pause to retry after, not a server fault.
    message = "the session service is briefly unavailable; try again in a moment"
    return JSONResponse(
        status_code=503,
        content={"detail": {"code": "redis_unavailable", "message": message}, "info": message},
        headers={"Retry-After": "2"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]  # starlette: handlers typed for Exception, not a subclass
    for error in REDIS_AWAY:
        app.add_exception_handler(error, _redis_away)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]  # starlette: handlers typed for Exception, not a subclass
