"""Every dependency of every API route is a coroutine function: FastAPI runs a plain
``def`` dependency in its thread pool, a thread hop on each request that uses it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from api.main import create_app
from shared.settings import Settings


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependencies(sub)


def _routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:  # included
            yield from _routes(router.routes)


def test_no_route_runs_a_dependency_in_a_thread(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    app = create_app(Settings(redis_url="redis://unused", database_url=database))  # not started
    routes = list(_routes(app.routes))
    assert len(routes) > 20  # the whole API, not a part of it
    in_threads = set()
    for route in routes:
        for dependency in _dependencies(route.dependant):
            call = dependency.call
            if call is None:
                continue
            # A class instance (FastAPI's HTTPBearer, say) is called through __call__.
            target = call if inspect.isfunction(call) else getattr(call, "__call__", call)  # noqa: B004
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                in_threads.add(f"{route.path}: {getattr(call, '__qualname__', call)}")
    assert not in_threads, sorted(in_threads)
