"""Liveness, readiness and metrics.

``/metrics`` is open by default, as today; ``VOICEPOOL_METRICS_TOKEN`` puts it
behind a bearer token, and ``VOICEPOOL_METRICS_BIND`` moves it to a listener of
its own (a private address, say) so the public API port does not serve it.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from sqlalchemy import literal_column
from sqlmodel import select

from api.deps import StateDep
from api.errors import ApiError, unauthorized
from shared.settings import Settings

router = APIRouter(tags=["health"])

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@router.get("/healthz")
async def healthz(state: StateDep, response: Response) -> dict[str, object]:
    """The process is up and its long-lived tasks (the persister, the reaper, …) run; 503
    naming those that stopped otherwise, for its supervisor to restart it."""
    stopped = sorted(task.get_name() for task in state.background if task.done())
    if stopped:
        response.status_code = 503
        return {"status": "failing", "stopped": stopped}
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep, response: Response) -> dict[str, object]:
    """Redis and the database both answer; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        async with state.store.session() as db:
            await db.exec(select(literal_column("1")))  # SELECT 1
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not_ready", "checks": checks}


def bearer_matches(authorization: str | None, token: str | None) -> bool:
    """No token configured: open. Otherwise ``Bearer <token>``, compared in constant time."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    # Bytes: compare_digest refuses non-ASCII str, and a header may hold anything.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _metrics_token(settings: Settings) -> str | None:
    return settings.metrics_token.get_secret_value() if settings.metrics_token else None


def mount(app: FastAPI, settings: Settings) -> None:
    """The health routes, ``/metrics`` unless it has a listener of its own, and a 404 for
    what is switched off (the web app's catch-all would otherwise answer it with 200)."""
    app.include_router(router)
    closed = [] if settings.api_docs else ["/docs", "/docs/oauth2-redirect", "/redoc"]
    if settings.metrics_bind is None:
        token = _metrics_token(settings)

        @app.get("/metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            if not bearer_matches(request.headers.get("authorization"), token):
                raise unauthorized("send Authorization: Bearer <metrics token>")
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    else:
        closed.append("/metrics")
    if not settings.api_docs:
        closed.append("/openapi.json")

    async def not_found() -> Response:
        raise ApiError(404, "not_found", "no such route")

    for path in closed:
        app.add_api_route(path, not_found, methods=["GET", "HEAD"], include_in_schema=False)


# --- metrics on a listener of their own ---------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr is noise


def _guarded(app: Callable[..., Iterable[bytes]], token: str | None) -> Callable[..., Any]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"send Authorization: Bearer <metrics token>\n"]
        return app(environ, start_response)

    return guarded


def start_metrics_server(host: str, port: int, token: str | None) -> WSGIServer:
    """prometheus-client's metrics app on its own thread, behind the token when there is one
    (its ``start_http_server`` has no way to ask for one)."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(
        host, port, _guarded(make_wsgi_app(), token), Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def with_metrics_listener(lifespan: Lifespan, settings: Settings) -> Lifespan:
    """The app's lifespan, plus the metrics listener of METRICS_BIND while it runs."""
    address = settings.metrics_address
    if address is None:
        return lifespan

    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        # Before the app's own start-up: a port already taken stops the process at once.
        server = start_metrics_server(*address, _metrics_token(settings))
        try:
            async with lifespan(app):
                yield
        finally:
            await asyncio.to_thread(server.shutdown)  # waits out one poll (0.5 s)
            server.server_close()

    return serving
