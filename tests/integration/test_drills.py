"""The fault drills (ops/drills/drills.py), run as tests: what users do next works, and
nothing stored is lost."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "drills", Path(__file__).parents[2] / "ops" / "drills" / "drills.py"
)
assert _spec is not None and _spec.loader is not None
drills = importlib.util.module_from_spec(_spec)
sys.modules["drills"] = drills  # dataclasses look their module up there
_spec.loader.exec_module(drills)

CALL_STATES = ["queued", "starting", "ready", "connected", "ended"]


@pytest.mark.parametrize("name", ["kill_api", "postgres_restart", "sqlite_disk_full"])
async def test_drill_loses_nothing(name: str) -> None:
    if name == "sqlite_disk_full" and os.geteuid() != 0:
        pytest.skip("filling a disk needs a tmpfs mount, which needs root")
    (row,) = await drills.run([name])
    assert row.lost == 0, row
    assert row.recovery_s < 30, row


async def test_a_killed_workers_calls_are_taken_up_by_the_other_worker() -> None:
    (row,) = await drills.run(["kill_worker"])
    assert row.facts["moved"] >= 1, row
    assert row.facts["outcomes"] == ["ready/recovered"], row
    assert row.lost == 0, row
    assert row.recovery_s < drills.HEARTBEAT_TTL, row  # seen before the heartbeats expire


@pytest.mark.parametrize(
    "name",
    ["redis_kill_0.3s", "redis_kill_2s", "redis_kill_10s", "redis_kill_30s", "redis_restart"],
)
async def test_calls_outlive_a_redis_outage(name: str) -> None:
    (row,) = await drills.run([name])
    facts = row.facts
    assert set(facts["statuses"].values()) == {"connected"}, row  # never failed or ended
    assert facts["call_states"] == [CALL_STATES, CALL_STATES], row
    assert facts["echo_after"], row
    if facts["echoed_while_down"] is not None:
        assert facts["echoed_while_down"], row  # media needs no Redis
    assert row.lost == 0 and facts["duplicates"] == 0 and facts["disorder"] == 0, row
    assert row.recovery_s < 3.0, row  # the queued one and a new one ready, from Redis back


async def test_a_worker_whose_poll_loop_fails_exits_and_is_never_capacity() -> None:
    (row,) = await drills.run(["poll_loop_fails"])
    assert row.facts["returncode"] == 1, row
    assert row.facts["free_while_failing"] == 0, row


async def test_abandoned_event_streams_give_their_slots_back() -> None:
    (row,) = await drills.run(["sse_abandoned"])
    facts = row.facts
    assert facts["codes"] == [200] * 50 and facts["after_reloads"] == 200, row
    assert facts["refused"] == 429, row  # the limit still holds
    assert facts["reopened"] == 200, row
    assert row.recovery_s < facts["lease"] + 10, row  # a dead process's slots lapse


async def test_an_offer_flood_is_refused_and_others_are_served() -> None:
    (row,) = await drills.run(["offer_flood"])
    codes = row.facts["codes"]
    assert codes.get(0, 0) == 0 and not any(code >= 500 for code in codes), row
    assert set(codes) <= {429, 409} and codes.get(429, 0) > 0, row
    assert row.facts["busy"] > 0, row  # another user's requests all answered below 500


async def test_bad_requests_are_refused_and_leave_nothing_behind() -> None:
    (row,) = await drills.run(["bad_requests"])
    facts = row.facts
    assert facts["codes"] == [202] * 3 + [429] * 5, row
    assert facts["conversations"] == 3, row  # no ghost from the refused creates
    assert facts["offer_codes"] == [(400, "invalid_offer")], row
    assert facts["before"] == facts["after"] == "queued", row
