"""ASGI middleware: request body size limit, per-credential concurrency, request counting,
security headers."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from api import metrics
from api.web_sessions import COOKIE

# Formatted and masked as uvicorn's access lines are (shared/logs.py); not uvicorn's
# logger, which ``access_log=False`` cuts off from the root handler.
ACCESS = logging.getLogger("api.access")

# The Pipecat client needs: fetch/SSE to this origin, WebRTC media (no CSP
# directive governs RTCPeerConnection), blob: audio for the bot's track, and
# Daily's iframe-free SDK talking to Daily's servers when that transport is used.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self' https://*.daily.co wss://*.daily.co",
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"microphone=(self), camera=(), geolocation=()"),
]


def json_depth(body: bytes) -> int:
    """Deepest nesting of a JSON text, without parsing it (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` (413) and JSON nested deeper than ``max_depth`` (422).

    The body is read here, bounded, before the app sees it: a body without a
    Content-Length is counted as it streams, and a deeply nested JSON text never
    reaches the parser (whose recursion would otherwise fail as a 500).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = 32):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _refuse(send, 413, "body_too_large",
                          f"request bodies are limited to {self.max_bytes} bytes")  # fmt: skip
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, 413, "body_too_large",
                              f"request bodies are limited to {self.max_bytes} bytes")  # fmt: skip
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"") and json_depth(body) > self.max_depth:
            await _refuse(send, 422, "too_deep",
                          f"JSON may nest at most {self.max_depth} levels")  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(
    send: Send, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts requests by route template (never the raw path: ids are unbounded), and
    writes each one's access line once its answer is out.

    uvicorn writes its access line (``access_log``, off for the API) as the answer starts,
    before the headers go out: 54 µs per line in the text format and 83 in JSON, warm
    (shared/logs.py masks and formats it), on every answer's way to its client, and
    between the headers' write and the body's, so that a client could wake for each. This
    line is uvicorn's own, made the same way (logger ``api.access``)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(route=path, status=str(status)).inc()
            if ACCESS.isEnabledFor(logging.INFO):
                ACCESS.info(
                    '%s - "%s %s HTTP/%s" %d', get_client_addr(cast(Any, scope)), scope["method"],
                    get_path_with_query_string(cast(Any, scope)), scope["http_version"], status,
                )  # fmt: skip


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def credential_key(scope: Scope) -> str | None:
    """Who a request claims to be, from its headers alone (not checked here): a bearer
    token's id, or a digest of the session cookie. None for anonymous requests."""
    authorization = cookie = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value
        elif name == b"cookie":
            cookie = value
    if authorization is not None:
        token = authorization.partition(b" ")[2].strip()
        # vp_<id>_<secret> (shared.users): the prefix and id only, as authenticate reads them
        return "t:" + b"_".join(token.split(b"_", 2)[:2])[:48].decode("latin-1")
    if cookie is not None and COOKIE.encode() in cookie:
        return "c:" + hashlib.blake2b(cookie, digest_size=12).hexdigest()
    return None


class CredentialConcurrencyMiddleware:
    """At most ``limit`` requests in flight per credential in this process; 429 beyond.

    This runs before authentication, so a flood from one user is turned away for
    the price of reading a header, instead of each request costing database and
    Redis round trips while other users' requests queue behind it. Event streams
    (long by nature, bounded by their own per-user limit) are not counted.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = credential_key(scope) if scope["type"] == "http" and self.limit > 0 else None
        if key is None or scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        if self.in_flight[key] >= self.limit:
            metrics.REQUESTS_REFUSED.inc()
            await _refuse(
                send, 429, "too_many_requests",
                f"at most {self.limit} requests in flight per user; wait for the others",
                [(b"retry-after", b"1")],
            )  # fmt: skip
            return
        self.in_flight[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key] -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]
