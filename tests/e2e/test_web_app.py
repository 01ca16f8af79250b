"""The web app end to end: the built frontend served by the real system, driven in
headless Chromium by ``tests/e2e/web_app.e2e.mjs`` (playwright-core, no downloaded browser).

The echo profile over SmallWebRTC; the assistant profile against the OpenAI Realtime
double with a tool (the nested-team double), for transcript lines and tool cards; then,
with the model double stopped, a session whose model is unreachable; with every worker
stopped, a start refused in plain words. Apart: an echo call that survives a reload of
its page; its user may have one live call, so a second tab meets the cap (and the slot
comes back once the call ends).

Needs ``frontend/dist`` (``npm --prefix frontend run build``; ``make test`` builds it),
``frontend/node_modules`` (``npm --prefix frontend ci``), Node and Debian's ``chromium``
(``ops/scripts/install-test-deps.sh``). Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from harness.doubles.nested_team import NestedTeam
from harness.doubles.openai_realtime import FakeRealtimeServer, Turn
from harness.system import ROOT

pytestmark = pytest.mark.slow

DIST = ROOT / "frontend" / "dist"
SCRIPT = Path(__file__).with_name("web_app.e2e.mjs")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("VOICEPOOL_E2E_CHROMIUM", "/usr/bin/chromium")
SCRIPT_TIMEOUT_S = 180
GRAFANA_URL = "http://127.0.0.1:3000/d/voicepool"  # only linked to, never opened


def _require_tools() -> str:
    if not (DIST / "index.html").is_file():
        pytest.fail(
            f"{DIST} has no built web app: run `npm --prefix frontend ci && "
            "npm --prefix frontend run build` (or `make test`, which builds it)"
        )
    if not (ROOT / "frontend" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed: run `npm --prefix frontend ci`")
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the browser test (node not found on PATH)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `ops/scripts/install-test-deps.sh` as root "
            "(Debian package chromium), or set VOICEPOOL_E2E_CHROMIUM"
        )
    return node


async def _run_browser(node: str, env: dict[str, str], system, script: Path = SCRIPT) -> str:
    """Run the script (the model doubles keep serving meanwhile); fail with its output."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"the browser test ran over {SCRIPT_TIMEOUT_S} s\n{out.decode()}")
    print(out.decode())
    if proc.returncode != 0:
        pytest.fail(
            f"the browser test ({env.get('SCENARIO', script.name)}) failed "
            f"(exit {proc.returncode}); "
            f"screenshots in {ARTIFACTS}\n--- output ---\n{out.decode()}\n"
            f"--- stderr ---\n{err.decode()}\n--- system logs ---\n{system.log_tail()}"
        )
    return out.decode()


async def test_web_app_in_chromium(make_system, hello_wav: Path, tmp_path: Path) -> None:
    node = _require_tools()
    turn = Turn(
        transcript="Ask the team to find flights to Oslo",
        tool_call=("send_to_nested", {"text": "find flights to Oslo"}),
        answer="The team found three flights.",
    )
    async with NestedTeam(progress=["Planning", "Searching"]) as team:
        fake = FakeRealtimeServer(turns=[turn], typed_answer="You wrote: {text}")
        await fake.start()
        try:
            tools = tmp_path / "tools.toml"
            team.write_tools_file(tools)
            system = make_system(
                workers=2,
                capacity=2,
                VOICEPOOL_FRONTEND_DIR=str(DIST),
                OPENAI_API_KEY="sk-test-web-app",
                VOICEPOOL_OPENAI_BASE_URL=fake.base_url,
                VOICEPOOL_TOOLS_FILE=str(tools),
                VOICEPOOL_GRAFANA_URL=GRAFANA_URL,
            )
            env = {
                **os.environ,
                "BASE_URL": system.api_url,
                "USER_TOKEN": system.create_user("alice"),
                "OTHER_TOKEN": system.create_user("bob"),
                "ADMIN_TOKEN": system.create_user("root", admin=True),
                "FIXTURE_WAV": str(hello_wav),  # absolute (tests/conftest.py)
                "ARTIFACTS_DIR": str(ARTIFACTS),
                "CHROMIUM": CHROMIUM,
                "ASSISTANT": "1",
                "GRAFANA_URL": GRAFANA_URL,
                "SCENARIO": "main",
            }
            await _run_browser(node, env, system)
        finally:
            await fake.stop()
        # The model is gone now (its port closed): assistant sessions must fail, visibly.
        await _run_browser(node, {**env, "SCENARIO": "model-down"}, system)
        # Then every worker: Start is refused at once, in plain words (no_workers).
        for proc in system.workers:
            proc.terminate()  # a drain with nothing live: out in a moment
        for proc in system.workers:
            await asyncio.to_thread(proc.wait, 30)
        await _run_browser(node, {**env, "SCENARIO": "no-workers"}, system)


def _workers_hold_lost_clients() -> bool:
    """Whether workers hold a call whose client went away (``reconnecting``, for
    ``VOICEPOOL_RECONNECT_GRACE``) and take a new offer for it: the worker side of
    resuming, which the web app's reload needs."""
    from shared.settings import Settings

    return any(name.startswith("reconnect_grace") for name in Settings.model_fields)


@pytest.mark.skipif(
    not _workers_hold_lost_clients(),
    reason="pending: workers do not hold a call for its client yet (VOICEPOOL_RECONNECT_GRACE)",
)
async def test_web_app_call_survives_a_reload(make_system, hello_wav: Path) -> None:
    node = _require_tools()
    system = make_system(
        workers=1,
        capacity=2,
        VOICEPOOL_FRONTEND_DIR=str(DIST),
        VOICEPOOL_MAX_SESSIONS_PER_USER="1",  # a second tab meets the cap
    )
    env = {
        **os.environ,
        "BASE_URL": system.api_url,
        "USER_TOKEN": system.create_user("alice"),
        "OTHER_TOKEN": system.create_user("bob"),
        "FIXTURE_WAV": str(hello_wav),
        "ARTIFACTS_DIR": str(ARTIFACTS),
        "CHROMIUM": CHROMIUM,
        "SCENARIO": "reload",
    }
    await _run_browser(node, env, system)


def test_pages_load_the_voice_sdk_only_for_a_call() -> None:
    """The chunk every page loads has neither the Pipecat SDK nor daily-js; a SmallWebRTC
    call's chunk has the SDK without daily-js (the build stubs it: vite.config.ts)."""
    _require_tools()
    entry = re.search(r'src="/assets/([^"]+\.js)"', (DIST / "index.html").read_text())
    assert entry is not None, "index.html names no script"
    chunks = {p.name: p.read_text(errors="replace") for p in (DIST / "assets").glob("*.js")}
    daily, sdk = "DailyIframe", "PipecatClient"  # names each bundle keeps, minified or not
    assert daily not in chunks[entry[1]] and sdk not in chunks[entry[1]]
    call_chunks = [name for name, text in chunks.items() if sdk in text and daily not in text]
    assert call_chunks, f"no chunk has the SDK without daily-js: {sorted(chunks)}"
