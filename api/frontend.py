"""Serving the built web app (``frontend/dist``) at ``/`` (its security headers: api/middleware.py).

Any path that is not an API route and not a built file gets ``index.html``,
so the app's own routes (``/history``, ``/operators``) survive a reload.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

DEFAULT_DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"


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
