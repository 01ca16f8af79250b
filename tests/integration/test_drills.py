"""The fault drills that no other test covers, run as tests: nothing stored is lost."""

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
drills = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["drills"] = drills  # dataclasses look their module up there
_spec.loader.exec_module(drills)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name", ["kill_api", "restart_redis", "postgres_restart", "sqlite_disk_full"]
)
async def test_drill_loses_nothing(name: str) -> None:
    if name == "sqlite_disk_full" and os.geteuid() != 0:
        pytest.skip("filling a disk needs a tmpfs mount, which needs root")
    (row,) = await drills.run([name])
    assert row.lost == 0, row
    assert row.recovery_s < 30, row
