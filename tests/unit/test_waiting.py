"""The harness's one way to wait for a condition."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.waiting import eventually


async def test_returns_the_first_truthy_value_of_a_sync_predicate() -> None:
    seen: list[int] = []

    def grows() -> list[int] | None:
        seen.append(len(seen))
        return seen if len(seen) >= 3 else None

    assert await eventually(grows, timeout=2) == [0, 1, 2]


async def test_awaits_an_async_predicate_and_retries_its_exceptions() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)  # a predicate that really awaits something
        if calls < 3:
            raise ConnectionError("not up yet")
        return "up"

    assert await eventually(flaky, timeout=2) == "up"
    assert calls == 3


async def test_times_out_naming_what_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"the answer: not within 0.2 s \(last value 0\)"):
        await eventually(lambda: 0, timeout=0.2, what="the answer")
    assert 0.2 <= time.monotonic() - started < 1


async def test_times_out_with_the_last_exception() -> None:
    def refuses() -> bool:
        raise ConnectionRefusedError("still down")

    with pytest.raises(AssertionError, match="still down") as failed:
        await eventually(refuses, timeout=0.1)
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)
    assert "refuses()" in str(failed.value)  # named after the predicate without `what`


async def test_a_failing_test_is_not_retried() -> None:
    calls = 0

    def gives_up() -> bool:
        nonlocal calls
        calls += 1
        pytest.fail("the process died")

    with pytest.raises(pytest.fail.Exception):
        await eventually(gives_up, timeout=5)
    assert calls == 1
