"""Serving the built web app (``frontend/dist``) at ``/`` (its security headers: api/middleware.py).

Any path that is not an API route and not a built file gets ``index.html``,
so the app's own routes (``/history``, ``/operators``) survive a reload. Under
``assets/`` (Vite's output, each name carrying its content's hash) a file is
cached for good, and a missing one is a 404: after an update, an open page's
lazy import of an old chunk then fails as the missing file it is (the app says
"reload the page"), instead of getting ``index.html`` as JavaScript.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

DEFAULT_DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"
ASSETS = "assets/"
IMMUTABLE = "public, max-age=31536000, immutable"  # a hashed name never changes content


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
            cached = {"Cache-Control": IMMUTABLE} if path.startswith(ASSETS) else None
            return FileResponse(candidate, headers=cached)
        if path.startswith(ASSETS):
            return Response(
                "No such file: the web app was updated. Reload the page.",
                status_code=404,
                media_type="text/plain",
            )
        if index.is_file():
            return FileResponse(index, headers={"Cache-Control": "no-cache"})
        return Response(
            "The web app is not built: run `make dev` (or `npm --prefix frontend run build`).",
            status_code=404,
            media_type="text/plain",
        )
