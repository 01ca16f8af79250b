"""The API process's long-lived tasks are watched: one that stops is fatal, and says so."""

from __future__ import annotations

import asyncio
import logging

from api.reaper import Reaper


async def test_a_background_task_that_stops_fails_the_liveness_check(
    make_api, monkeypatch, caplog
) -> None:
    async with make_api() as api:
        healthy = await api.client.get("/healthz")
        assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
        names = {task.get_name() for task in api.state.background}
        assert {"persister", "reaper", "revocations", "stream-leases"} <= names

    async def broken(self: Reaper) -> None:
        raise RuntimeError("a bug in the sweep")

    monkeypatch.setattr(Reaper, "run", broken)
    caplog.set_level(logging.CRITICAL, logger="api.main")
    async with make_api() as api:
        reaper = next(t for t in api.state.background if t.get_name() == "reaper")
        await asyncio.wait({reaper}, timeout=5)
        failing = await api.client.get("/healthz")
        assert failing.status_code == 503
        assert failing.json() == {"status": "failing", "stopped": ["reaper"]}
        assert "background task reaper stopped (RuntimeError('a bug in the sweep'))" in (
            caplog.text
        )
    # Shutting down cancels them all: that is no failure.
    assert not [r for r in caplog.records if "persister" in r.getMessage()]
