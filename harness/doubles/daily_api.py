"""A local stand-in for Daily's REST API: the parts the worker uses, on 127.0.0.1.

``POST /rooms``, ``POST /meeting-tokens``, ``GET /meeting-tokens/{token}`` (how a
join would check a token: expired or unknown ones are refused) and
``DELETE /rooms/{name}``, each behind ``Authorization: Bearer <key>`` as Daily's.
Room URLs point at this server, so nothing a test does reaches Daily.

``fail(route, status)`` makes the next calls of a route answer with an error
(401, 429, 500, …); ``advance(seconds)`` moves the double's clock, to expire
tokens without waiting.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ERRORS = {
    400: "invalid-request-error",
    401: "authentication-error",
    404: "not-found",
    429: "rate-limit-error",
    500: "server-error",
}


@dataclass
class FakeDaily:
    api_key: str
    host: str = "127.0.0.1"
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> properties
    deleted: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    unauthorized: int = 0
    _failures: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    _offset: float = 0.0
    _runner: web.AppRunner | None = None
    port: int = 0

    # --- control ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail(self, route: str, status: int, times: int = 1) -> None:
        """The next ``times`` calls of ``route`` (e.g. ``"POST /rooms"``) answer ``status``."""
        self._failures[route].extend([status] * times)

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def now(self) -> float:
        return time.time() + self._offset

    def token_valid(self, token: str) -> bool:
        """Would Daily let this token into its room now?"""
        props = self.tokens.get(token)
        return (
            props is not None
            and props.get("room_name") in self.rooms
            and (props.get("exp") is None or props["exp"] > self.now())
        )

    # --- server ------------------------------------------------------------------

    async def start(self) -> FakeDaily:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.post("/v1/rooms", self._create_room),
                web.get("/v1/rooms/{name}", self._get_room),
                web.delete("/v1/rooms/{name}", self._delete_room),
                web.post("/v1/meeting-tokens", self._create_token),
                web.get("/v1/meeting-tokens/{token}", self._check_token),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(status: int, info: str) -> web.Response:
        return web.json_response(
            {"error": ERRORS.get(status, "error"), "info": info}, status=status
        )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return self._error(401, "authorization header missing or invalid")
        route = f"{request.method} {request.path.removeprefix('/v1')}"
        for prefix, statuses in self._failures.items():
            if statuses and route.startswith(prefix):
                return self._error(statuses.pop(0), f"injected failure of {prefix}")
        return await handler(request)

    # --- routes ------------------------------------------------------------------

    async def _create_room(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("name") or secrets.token_hex(8)
        if name in self.rooms:
            return self._error(400, f"a room named {name} already exists")
        room = {
            "id": secrets.token_hex(16),
            "name": name,
            "api_created": True,
            "privacy": body.get("privacy", "public"),
            "url": f"http://{self.host}:{self.port}/{name}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "config": body.get("properties", {}),
        }
        self.rooms[name] = room
        return web.json_response(room)

    async def _get_room(self, request: web.Request) -> web.Response:
        room = self.rooms.get(request.match_info["name"])
        return web.json_response(room) if room else self._error(404, "room not found")

    async def _delete_room(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self.rooms.pop(name, None) is None:
            return self._error(404, "room not found")
        self.deleted.append(name)
        return web.json_response({"deleted": True, "name": name})

    async def _create_token(self, request: web.Request) -> web.Response:
        props = dict((await request.json()).get("properties", {}))
        if props.get("room_name") and props["room_name"] not in self.rooms:
            return self._error(400, f"no room {props['room_name']}")
        token = f"fake-{secrets.token_urlsafe(24)}"
        self.tokens[token] = props
        return web.json_response({"token": token})

    async def _check_token(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in self.tokens:
            return self._error(400, "token is not valid")
        if not self.token_valid(token):
            return self._error(400, "token has expired or its room is gone")
        return web.json_response(self.tokens[token])
