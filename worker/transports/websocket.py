"""WebSocket: a client streams protobuf frames (Pipecat's JS and Python clients) to the worker.

One listener per worker process, not one port per session: a worker then has
one fixed, advertised port to publish through NAT, a firewall or a container
(``VOICEPOOL_WS_PORT``, ``VOICEPOOL_WORKER_PUBLIC_HOST``), sessions need no
port range, and there is no bind race when sessions start at once. The
connection's single-use token (``shared.ws_tokens``) is both its credential
and its route: the listener consumes it, finds the session it opens among this
worker's sessions, and hands the socket to that session's transport, which
wraps it in Pipecat's ``FastAPIWebsocketTransport`` with the protobuf serializer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from shared import ws_tokens
from worker.options import WorkerOptions
from worker.transports import SignalError

log = logging.getLogger(__name__)

WS_PATH = "/ws"
# Pipecat's JS WebSocketTransport plays bot audio at 24 kHz whatever the frame says;
# the output transport resamples the profile's audio to it.
CLIENT_PLAYBACK_RATE = 24_000
REFUSED = 4003  # close code before accept: the handshake is answered with HTTP 403
SHUTDOWN_GRACE_S = 2  # whole seconds: uvicorn's timeout_graceful_shutdown is an int


class WebSocketSessionTransport:
    kind = "websocket"
    pipeline_before_client = False  # the pipeline is built around the client's socket

    def __init__(self, session_id: str, options: WorkerOptions):
        self.session_id = session_id
        self.options = options
        self._websocket: WebSocket | None = None
        self._arrived = asyncio.Event()
        self._closed = asyncio.Event()

    async def prepare(self) -> dict[str, Any]:
        if not self.options.ws_advertised_url:
            raise RuntimeError("this worker has no WebSocket listener")
        return {}  # nothing public: the URL is only useful with a token, which the API mints

    def owner_params(self) -> dict[str, Any]:
        return {"ws_url": self.options.ws_advertised_url}

    def claim(self, websocket: WebSocket) -> bool:
        """Take the session's one client; False if it has one already or has ended."""
        if self._websocket is not None or self._closed.is_set():
            return False
        self._websocket = websocket
        return True

    def release(self) -> None:
        """The claimed client went away before its handshake finished."""
        if not self._arrived.is_set():
            self._websocket = None

    async def serve(self) -> None:
        """Hand the accepted socket to the session and hold it open until the session ends
        (an ASGI WebSocket handler that returns closes its socket)."""
        self._arrived.set()
        await self._closed.wait()

    async def wait_for_client(self) -> None:
        await self._arrived.wait()

    def build(self, params: TransportParams) -> BaseTransport:
        assert self._websocket is not None, "no client yet"
        values = {
            **dict(params),
            "serializer": ProtobufFrameSerializer(),
            "audio_out_sample_rate": CLIENT_PLAYBACK_RATE,
            # The token is the credential; an Origin allow-list would also turn away
            # non-browser clients, which send no Origin.
            "allowed_origins": [],
        }
        return FastAPIWebsocketTransport(self._websocket, FastAPIWebsocketParams(**values))

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        raise SignalError("bad_signal", f"a WebSocket session takes no {kind!r} message", 400)

    async def aclose(self) -> None:
        self._closed.set()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the worker's event loop. The worker owns SIGTERM and SIGINT (drain,
    stop); uvicorn's own handlers would close the listener under live sessions."""

    # No setting turns it off; guarded by tests/unit/test_upstream_hooks.py::test_uvicorn_signals
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def advertised_url(options: WorkerOptions, port: int) -> str:
    """Where clients reach a listener bound to ``port``, per the worker's settings."""
    if options.ws_public_url:
        return options.ws_public_url
    host = options.ws_public_host or options.ws_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"ws://{host}:{port}{WS_PATH}"


def _token_of(websocket: WebSocket) -> str:
    token = websocket.query_params.get("token", "")
    auth = websocket.headers.get("authorization", "")
    if not token and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    return token


class WebSocketListener:
    """The worker's one WebSocket endpoint; routes each connection to its session by token."""

    def __init__(
        self,
        redis: aioredis.Redis,
        find: Callable[[str], WebSocketSessionTransport | None],
        options: WorkerOptions,
    ):
        self.redis = redis
        self.find = find
        self.options = options
        self.port = 0
        self.url = ""
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listen, and return the URL clients reach this listener at."""
        # Tokens in the handshake lines uvicorn logs are masked by shared/logs.py.
        family = socket.AF_INET6 if ":" in self.options.ws_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.options.ws_host, self.options.ws_port))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[WebSocketRoute(WS_PATH, self._endpoint)])
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,  # the worker's logging stays as configured
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ws-listener")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        self.url = advertised_url(self.options, self.port)
        log.info("WebSocket sessions on %s (listening on port %d)", self.url, self.port)
        return self.url

    async def _endpoint(self, websocket: WebSocket) -> None:
        try:
            session_id = await ws_tokens.consume(self.redis, _token_of(websocket))
        except Exception:
            log.exception("could not check a WebSocket token")
            session_id = None
        transport = self.find(session_id) if session_id else None
        # Unauthenticated, forged, expired, reused, or for a session this worker does not
        # run (or that already has its client): all refused alike, before the handshake.
        if transport is None or not transport.claim(websocket):
            await websocket.close(code=REFUSED)
            return
        try:
            await websocket.accept()
        except Exception:
            transport.release()
            return
        log.info("session %s: WebSocket client connected", transport.session_id)
        await transport.serve()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
