"""The FastAPI application and what it runs beside the routes (persister, reaper)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import metrics, retention
from api.deps import AppState
from api.errors import install_error_handlers
from api.events import render
from api.fanout import StreamFanout
from api.frontend import mount_frontend
from api.limits import Leases, too_many_signals, too_many_streams
from api.middleware import (
    BodyLimitMiddleware,
    CredentialConcurrencyMiddleware,
    RequestMetricsMiddleware,
    SecurityHeadersMiddleware,
)
from api.persister import Persister
from api.reaper import Reaper
from api.routes import auth, conversations, health, participants, sessions, start, workers
from api.signals import WorkerSignals
from shared import __version__, keys
from shared.connections import arq_pool, redis_client
from shared.fleet import PROTOCOL
from shared.gc_freeze import freeze_startup_objects
from shared.live import LiveSessions
from shared.settings import Settings, get_settings
from shared.store import Store, migrate_async

log = logging.getLogger(__name__)


def _stopped(task: asyncio.Task[None]) -> None:
    """A long-lived task ended on its own: fatal. Each one retries what can fail (Redis,
    the database) inside its loop, so this is a bug; ``/healthz`` fails from now on, and
    whatever supervises the process (Kubernetes' liveness probe, systemd) restarts it."""
    if task.cancelled():  # shutting down
        return
    error = task.exception()
    log.critical(
        "background task %s stopped (%s); /healthz fails from now on",
        task.get_name(),
        repr(error) if error else "it returned",
        exc_info=error,
    )


def create_app(settings: Settings | None = None, *, background: bool = True) -> FastAPI:
    """Build the app. ``background=False`` leaves the persister and reaper off (for tests)."""
    settings = settings or get_settings()
    redis_url = settings.redis_url
    if redis_url is None:
        raise ValueError("the API needs VOICEPOOL_REDIS_URL (voicepool dev sets it)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate_async(settings.sqlalchemy_url)
        redis = redis_client(redis_url)
        live = LiveSessions(
            redis,
            heartbeat_ttl=settings.heartbeat_ttl,
            stream_retention=settings.stream_retention,
            stream_maxlen=settings.session_stream_maxlen,
        )
        state = AppState(
            settings=settings,
            redis=redis,
            arq=await arq_pool(redis_url),
            live=live,
            store=Store(settings.sqlalchemy_url),
            signals=WorkerSignals(redis, timeout=settings.signal_timeout),
            fanout=StreamFanout(redis, render),
            streams=Leases(redis, "sse", lease_s=settings.stream_lease, refusal=too_many_streams),
            signalling=Leases(
                redis,
                "signal",
                # Held for one request: the wait for ready plus the worker's answer.
                lease_s=settings.ready_wait + settings.signal_timeout + 5,
                refusal=too_many_signals,
            ),
        )
        app.state.voicepool = state
        # Workers of another protocol refuse to start on seeing this (shared/fleet.py).
        await redis.set(keys.PROTOCOL, PROTOCOL)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(state.streams.run(), name="stream-leases"),
            asyncio.create_task(state.tokens.listen(redis), name="revocations"),
        ]
        if background:
            persister = Persister(
                redis,
                state.store,
                batch_size=settings.persister_batch,
                claim_idle_ms=settings.persister_claim_idle_ms,
            )
            reaper = Reaper(
                live,
                queue_ttl=settings.queue_ttl,
                interval=settings.reaper_interval,
                pools=list(settings.pools),
                arq=state.arq,
                max_recoveries=settings.max_recoveries,
                heartbeat_interval=settings.heartbeat_interval,
                fast_worker_loss=settings.fast_worker_loss,
                fallbacks=settings.pool_fallbacks,
            )
            tasks += [
                asyncio.create_task(persister.run(), name="persister"),
                asyncio.create_task(reaper.run(), name="reaper"),
            ]
            if settings.retention_days:
                tasks.append(
                    asyncio.create_task(
                        retention.run(state.store, settings.retention_days), name="retention"
                    )
                )
        state.background = tasks
        for task in tasks:
            task.add_done_callback(_stopped)
        freeze_startup_objects()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            # What one of them raised, before or on the way out, _stopped has logged.
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.streams.aclose()
            await state.signalling.aclose()
            await state.fanout.aclose()
            await state.arq.aclose()
            await redis.aclose()
            await state.store.aclose()

    app = FastAPI(
        title="voicepool",
        version=__version__,
        summary="Real-time voice assistant sessions at scale.",
        lifespan=health.with_metrics_listener(lifespan, settings),
        # Off (production): the schema maps every route; health.mount makes them 404.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    install_error_handlers(app)
    metrics.prime(settings, __version__)
    health.mount(app, settings)  # /healthz, /readyz, /metrics (unless METRICS_BIND moves it)
    app.include_router(auth.router)
    app.include_router(sessions.router)
    app.include_router(participants.router)
    app.include_router(start.router)
    app.include_router(conversations.router)
    app.include_router(workers.router)
    mount_frontend(app, settings.frontend_dir)  # last: it answers every other GET
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "Last-Event-ID"],
        )
    app.add_middleware(CredentialConcurrencyMiddleware, limit=settings.max_requests_per_credential)
    app.add_middleware(RequestMetricsMiddleware)
    return app
