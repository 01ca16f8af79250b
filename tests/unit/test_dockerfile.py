"""deploy/Dockerfile, read by BuildKit's own parser (the ``dockerfile`` package wraps it):
no Docker engine runs here, so what can be checked without building is checked: the
stages, the layer order that keeps dependencies cached across code changes, the lock file
it installs, a non-root user and a health check, and that everything it copies exists."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import dockerfile

ROOT = Path(__file__).parents[2]
COMMANDS = dockerfile.parse_file(str(ROOT / "deploy" / "Dockerfile"))
CODE = {"api", "worker", "shared", "voicepool"}


def stages() -> dict[str, list[dockerfile.Command]]:
    """Commands by stage name (the last, unnamed one: "runtime")."""
    found: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for command in COMMANDS:
        if command.cmd == "FROM":
            name = command.value[2] if len(command.value) == 3 else "runtime"
            current = found.setdefault(name, [])
        current.append(command)
    return found


def test_three_stages_web_build_runtime() -> None:
    assert list(stages()) == ["web", "build", "runtime"]
    web = stages()["web"][0]
    assert web.flags == ("--platform=$BUILDPLATFORM",)  # static files: built once, natively


def test_dependencies_are_installed_from_the_lock_before_the_code_is_copied() -> None:
    build = stages()["build"]
    lines = [(c.cmd, " ".join(c.value)) for c in build]
    lock = next(i for i, (cmd, v) in enumerate(lines) if cmd == "RUN" and "-r requirements/" in v)
    assert "--require-hashes -r requirements/server.txt" in lines[lock][1]
    code = [i for i, (cmd, v) in enumerate(lines) if cmd == "COPY" and v.split()[0] in CODE]
    assert sorted(v.split()[0] for _, v in (lines[i] for i in code)) == sorted(CODE)
    assert lock < min(code)  # a code change leaves the dependency layer cached
    copied_before = [v for cmd, v in lines[:lock] if cmd == "COPY"]
    assert copied_before == ["requirements/server.txt requirements/"]
    install = next(v for cmd, v in lines[lock + 1 :] if cmd == "RUN" and "pip install" in v)
    assert "--no-deps ." in install  # voicepool itself only: its dependencies are locked


def test_the_web_app_is_built_from_its_lock_file_and_served() -> None:
    web = [(c.cmd, " ".join(c.value)) for c in stages()["web"]]
    assert web.index(("COPY", "frontend/package.json frontend/package-lock.json ./")) < web.index(
        ("RUN", "npm ci --no-audit --no-fund")
    ) < web.index(("COPY", "frontend/ ./"))  # fmt: skip
    runtime = stages()["runtime"]
    copies = [c for c in runtime if c.cmd == "COPY"]
    assert ("--from=web",) in [c.flags for c in copies]
    env = next(c for c in runtime if c.cmd == "ENV").value
    assert dict(zip(env[::2], env[1::2], strict=True))["VOICEPOOL_FRONTEND_DIR"] == (
        "/opt/voicepool/web"
    )


def test_it_runs_as_a_user_with_a_health_check() -> None:
    runtime = {c.cmd: c for c in stages()["runtime"]}
    assert runtime["USER"].value == ("voicepool",)
    assert "HEALTHCHECK" in runtime and runtime["HEALTHCHECK"].value[0] == "CMD"
    assert "/readyz" in " ".join(runtime["HEALTHCHECK"].value)
    # No compiler in the image: every locked dependency has a wheel.
    assert not any("build-essential" in " ".join(c.value) for c in COMMANDS)


def test_what_it_copies_is_in_the_build_context() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for command in COMMANDS:
        if command.cmd != "COPY" or any(f.startswith("--from=") for f in command.flags):
            continue
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source.rstrip("/"), p) for p in ignored), source
