"""Serving the built web app (``frontend/dist``) at ``/``, with security headers.

Any path that is not an API route and not a built file gets ``index.html``,
so the app's own routes (``/history``, ``/operators``) survive a reload.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

DEFAULT_DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"

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


def mount_frontend(app: FastAPI, dist: Path | None) -> None:
    root = (dist or DEFAULT_DIST).resolve()
    index = root / "index.html"

    @app.get("/{path:path}", include_in_schema=False)
    async def web_app(path: str) -> Response:
        if path.startswith("api/"):
            return Response(
                b'{"detail":{"code":"not_found","message":"no such route"}}',
                status_code=404,
                media_type="application/json",
            )
        candidate = (root / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            return FileResponse(candidate)
        if index.is_file():
            return FileResponse(index, headers={"Cache-Control": "no-cache"})
        return Response(
            "The web app is not built: run `make dev` (or `npm --prefix frontend run build`).",
            status_code=404,
            media_type="text/plain",
        )
