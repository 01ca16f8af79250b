"""WebSocket: a client streams protobuf frames (Pipecat's JS and Python clients) to the worker.

One listener per worker process, not one port per session: a worker then has
one fixed, advertised port to publish through NAT, a firewall or a container
(``VOICEPOOL_WS_PORT``, ``VOICEPOOL_WORKER_PUBLIC_HOST``), sessions need no
port range, and there is no bind race when sessions start at once. The
connection's single-use token (``shared.ws_tokens``) is both its credential
and its route: the listener reads the session it names, and that session's
transport checks it (signed with the session's key, for this listener, unexpired,
unused; no Redis on the way) and takes the socket, which it wraps in Pipecat's
``FastAPIWebsocketTransport`` with the protobuf serializer.

Pipecat's transport holds one socket for the session's life: it gets a
``SessionSocket`` that stays while client sockets come and go behind it. A
client whose socket closes is lost (``reconnecting``); one that connects again,
with a fresh token from ``POST /api/sessions/{id}/connect``, is attached to the
same pipeline. One client at a time: another is refused while one is attached.

The pipeline is built and started as soon as the session is ready, behind a
socket with nobody attached yet, while the API answers and the client connects:
a client's first message meets a running pipeline (the RTVI ``bot-ready`` comes
one round trip after ``client-ready``), instead of waiting for the pipeline to
be built around its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import uvicorn
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketState

from shared import ws_tokens
from shared.http_server import MAX_HEAD_BYTES, QuietServer, bounded_http
from worker.options import WS_PATH, WorkerOptions
from worker.transports import ClientPresence, SignalError

log = logging.getLogger(__name__)

# Pipecat's JS WebSocketTransport plays bot audio at 24 kHz whatever the frame says;
# the output transport resamples the profile's audio to it.
CLIENT_PLAYBACK_RATE = 24_000
REFUSED = 4003  # close code before accept: the handshake is answered with HTTP 403
SHUTDOWN_GRACE_S = 2  # whole seconds: uvicorn's timeout_graceful_shutdown is an int
# A socket whose peer vanished (no close, no FIN) is found by ping: uvicorn's default
# 20 s + 20 s would hold a dead client for most of the reconnect grace.
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 3.0  # a send that blocks this long (a full buffer): the client is gone


_DISCONNECT: Message = {"type": "websocket.disconnect", "code": 1000, "reason": ""}


class SessionSocket:
    """The socket Pipecat's ``FastAPIWebsocketClient`` holds for the session's life (the
    part of Starlette's ``WebSocket`` it uses), with the client's sockets behind it.

    ``receive`` reads the attached socket; when it closes, the client is lost and
    ``receive`` waits for the next one instead of ending Pipecat's read loop (it
    ends only at ``close``). While no socket is attached, ``client_state`` says
    DISCONNECTED, so Pipecat's output drops what it would send.
    """

    def __init__(self) -> None:
        self.presence: ClientPresence | None = None
        """Told of every attach and every loss (Pipecat's own ``on_client_connected``
        fires as the pipeline starts, before any client)."""
        self._current: WebSocket | None = None
        self._gone = asyncio.Event()  # the current socket went
        self._attached = asyncio.Event()
        self._closing = False

    @property
    def attached(self) -> bool:
        return self._current is not None

    def attach(self, websocket: WebSocket) -> asyncio.Event:
        """Put a client's accepted socket behind this one; returns an event set when it goes."""
        self._current, self._gone = websocket, asyncio.Event()
        self._attached.set()
        if self.presence is not None:
            self.presence.client_back()
        return self._gone

    def _detach(self, websocket: WebSocket) -> None:
        if self._current is not websocket:
            return
        self._current = None
        self._attached.clear()
        self._gone.set()
        if self.presence is not None and not self._closing:
            self.presence.client_lost()

    @property
    def client_state(self) -> WebSocketState:
        if self._current is None or self._closing:
            return WebSocketState.DISCONNECTED
        return self._current.client_state

    @property
    def application_state(self) -> WebSocketState:
        if self._current is None or self._closing:
            return WebSocketState.DISCONNECTED
        return self._current.application_state

    async def receive(self) -> Message:
        while not self._closing:
            websocket = self._current
            if websocket is None:
                await self._attached.wait()
                continue
            try:
                message = await websocket.receive()
            except Exception:  # closed under us
                message = _DISCONNECT
            if message["type"] != "websocket.disconnect":
                return message
            self._detach(websocket)
        return _DISCONNECT

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def send_text(self, data: str) -> None:
        await self._send(data)

    async def _send(self, data: bytes | str) -> None:
        websocket = self._current
        if websocket is None:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                if isinstance(data, bytes):
                    await websocket.send_bytes(data)
                else:
                    await websocket.send_text(data)
        except Exception as exc:  # a socket that cannot take it is as good as gone
            log.info("WebSocket client dropped: sending failed (%s)", type(exc).__name__)
            self._detach(websocket)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):  # a dead peer may not take the close either
                    await websocket.close(code=1011)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """The session is over: close the client's socket, end Pipecat's read loop."""
        self._closing = True
        self._attached.set()  # wakes a receive waiting for a client
        websocket = self._current
        if websocket is not None and websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code=code, reason=reason)


class WebSocketSessionTransport:
    kind = "websocket"
    pipeline_before_client = True  # warm: running behind the socket before a client comes
    announces_clients = True  # SessionSocket tells of each attach, the first too

    def __init__(self, session_id: str, options: WorkerOptions, meta: dict[str, str]):
        self.options = options
        self.socket = SessionSocket()
        self._claimed: WebSocket | None = None  # a client between its token and its accept
        self._closed = asyncio.Event()
        self.bind(session_id, meta)

    def bind(self, session_id: str, meta: dict[str, str]) -> None:
        """Be ``session_id``'s: its tokens open the socket from now on. (One built ahead of
        any session, ``worker.warm``, has no key: no token opens it.)"""
        self.session_id = session_id
        self.tokens = ws_tokens.TokenGate(
            meta.get(ws_tokens.KEY_FIELD, ""), self.options.ws_listener
        )

    async def prepare(self) -> dict[str, Any]:
        if not self.options.ws_advertised_url:
            raise RuntimeError("this worker has no WebSocket listener")
        # In the ready event: neither opens anything without a token, which only the API
        # mints, and with them the API that waited for ready mints one without a read.
        return self.owner_params()

    def owner_params(self) -> dict[str, Any]:
        return {"ws_url": self.options.ws_advertised_url, "ws_listener": self.options.ws_listener}

    def claim(self, websocket: WebSocket, token: str) -> bool:
        """Take the session's one client (again, after one was lost) if ``token`` opens
        it; False if it does not, or the session has a client already or has ended."""
        if self.socket.attached or self._claimed is not None or self._closed.is_set():
            return False
        if not self.tokens.admit(token):
            return False
        self._claimed = websocket
        return True

    def release(self) -> None:
        """The claimed client went away before its handshake finished."""
        self._claimed = None

    async def serve(self) -> None:
        """Attach the accepted socket to the session and hold it open until it closes or the
        session ends (an ASGI WebSocket handler that returns closes its socket)."""
        websocket, self._claimed = self._claimed, None
        assert websocket is not None, "claim() first"
        gone = self.socket.attach(websocket)
        waits = {asyncio.create_task(gone.wait()), asyncio.create_task(self._closed.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def wait_for_client(self) -> None:
        return None  # the pipeline runs first; the session's connect timeout covers no-shows

    def build(
        self, params: TransportParams, presence: ClientPresence | None = None
    ) -> BaseTransport:
        self.socket.presence = presence
        if presence is not None and self.socket.attached:  # came before the pipeline
            presence.client_back()
        values = {
            **dict(params),
            "serializer": ProtobufFrameSerializer(),
            "audio_out_sample_rate": CLIENT_PLAYBACK_RATE,
            # The token is the credential; an Origin allow-list would also turn away
            # non-browser clients, which send no Origin.
            "allowed_origins": [],
        }
        # What Pipecat uses of a Starlette WebSocket, SessionSocket has (guarded by
        # tests/unit/test_upstream_hooks.py::test_fastapi_socket_surface).
        websocket = cast(WebSocket, self.socket)
        return FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(**values))

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        raise SignalError("bad_signal", f"a WebSocket session takes no {kind!r} message", 400)

    async def aclose(self, *, handing_off: bool = False) -> None:
        self._closed.set()
        await self.socket.close()


class _EmbeddedServer(QuietServer):
    """uvicorn inside the worker's event loop. The worker owns SIGTERM and SIGINT (drain,
    stop); uvicorn's own handlers would close the listener under live sessions."""

    # No setting turns it off; guarded by tests/unit/test_upstream_hooks.py::test_uvicorn_signals
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _token_of(websocket: WebSocket) -> str:
    token = websocket.query_params.get("token", "")
    auth = websocket.headers.get("authorization", "")
    if not token and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    return token


def _not_an_accepted_handshake(record: logging.LogRecord) -> bool:
    """uvicorn's line for a handshake it accepts is written before the handshake's answer,
    on the client's way to its first message (35 µs warm, its token masked); the
    listener says the same (``session …: WebSocket client connected``) once the answer is
    out. Refusals are still uvicorn's to say."""
    return not str(record.msg).endswith("[accepted]")


class WebSocketListener:
    """The worker's one WebSocket endpoint; routes each connection to its session by token."""

    def __init__(
        self,
        find: Callable[[str], Awaitable[WebSocketSessionTransport | None]],
        options: WorkerOptions,
    ):
        self.id = ws_tokens.new_listener()
        """What this listener's tokens are bound to (``WorkerOptions.ws_listener``)."""
        self.find = find
        self.options = options
        self.port = 0
        self.url = ""
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listen, and return the URL clients reach this listener at."""
        # Tokens in the handshake lines uvicorn logs are masked by shared/logs.py.
        logging.getLogger("uvicorn.error").addFilter(_not_an_accepted_handshake)
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
            ws_ping_interval=PING_INTERVAL_S,
            ws_ping_timeout=PING_TIMEOUT_S,
            # Nearly every frame is PCM audio, which deflate cannot shrink: compressing it
            # only costs CPU on both ends (uvicorn accepts a client's offer by default).
            ws_per_message_deflate=False,
            # A handshake's head is bounded, as the API's (h11 where httptools is not installed).
            http=bounded_http(),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ws-listener")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        self.url = self.options.advertised_ws_url(self.port)
        log.info("WebSocket sessions on %s (listening on port %d)", self.url, self.port)
        return self.url

    async def _endpoint(self, websocket: WebSocket) -> None:
        token = _token_of(websocket)
        session_id = ws_tokens.session_of(token)
        transport = await self.find(session_id) if session_id else None
        # Unauthenticated, forged, expired, reused, for another listener, or for a session
        # this worker does not run (or that already has its client): all refused alike,
        # before the handshake.
        if transport is None or not transport.claim(websocket, token):
            await websocket.close(code=REFUSED)
            return
        try:
            await websocket.accept()
        except Exception:
            transport.release()
            return
        log.info("session %s: WebSocket client connected", transport.session_id)
        await transport.serve()
        log.info("session %s: WebSocket client gone", transport.session_id)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.exit()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
