"""Waiting for a condition instead of sleeping for a guessed time.

``await eventually(lambda: ..., what="...")`` polls a predicate until it holds and returns
what it returned; if it never does, the AssertionError says what was awaited and the last
value (or exception) seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

T = TypeVar("T")

POLL_S = 0.03  # between checks: often enough not to add latency, rare enough to cost nothing
DEFAULT_TIMEOUT_S = 10.0


def _describe(predicate: Callable[..., Any], what: str | None) -> str:
    if what:
        return what
    name = getattr(predicate, "__qualname__", None)
    return f"{name}()" if name and name != "<lambda>" else "the condition"


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,
    what: str | None = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None],
    *,
    timeout: float = ...,
    what: str | None = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str | None = None,
    interval: float = POLL_S,
) -> T:
    """Call ``predicate`` (sync or async) every ``interval`` s until it returns something
    truthy, and return that. An exception from it counts as "not yet" (a process still
    starting, a row not there yet), so a predicate may also ``assert`` to say why it is
    not there yet; what is not an Exception (``pytest.fail()``, cancellation) ends the
    wait at once. After ``timeout`` s, raise AssertionError naming ``what`` and the last
    value or exception. The result is typed without ``None``, as None never holds."""
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        try:
            result = predicate()
            value = cast("T | None", await result if inspect.isawaitable(result) else result)
        except Exception as exc:
            error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = f"last error {error!r}" if error else f"last value {value!r}"
            message = f"{_describe(predicate, what)}: not within {timeout:g} s ({seen})"
            raise AssertionError(message) from error
        await asyncio.sleep(min(interval, remaining))
