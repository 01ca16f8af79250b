"""Tool kinds against local stand-ins: the nested team, a `claude` script, an HTTP endpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.doubles.nested_team import NestedTeam
from worker.tools.config import ToolSpec, load_tools
from worker.tools.runners import ToolError, ToolTimeout, run_tool

CLAUDE = Path(__file__).parents[1] / "doubles" / "claude"
EXAMPLE = Path(__file__).parents[2] / "deploy" / "tools.example.toml"
TEXT_PARAMS = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}


def collect(into: list[dict]):  # type: ignore[no-untyped-def]
    async def progress(message: dict) -> None:
        into.append(message)

    return progress


async def ignore(_message: dict) -> None:
    return None


def command_tool(tmp_path: Path, timeout_s: float = 10, **command: object) -> ToolSpec:
    return ToolSpec.model_validate(
        {
            "name": "send_to_claude_code",
            "description": "Run Claude Code",
            "parameters": TEXT_PARAMS,
            "kind": "command",
            "timeout_s": timeout_s,
            "command": {
                "argv": [sys.executable, str(CLAUDE), "-p", "{text}", "--output-format",
                         "stream-json", "--verbose"],
                "cwd": str(tmp_path),
                "env": {"CLAUDE_STANDIN_LOG": str(tmp_path / "claude.json")},
                **command,
            },
        }
    )  # fmt: skip


async def test_command_tool_streams_progress_and_returns_the_result(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-of-the-platform")
    steps: list[dict] = []
    result = await run_tool(command_tool(tmp_path), {"text": "fix the bug"}, collect(steps))
    assert result == "Done: fix the bug"
    assert [s["kind"] for s in steps] == ["system", "assistant", "assistant"]
    seen = json.loads((tmp_path / "claude.json").read_text())
    assert seen["cwd"] == str(tmp_path)
    assert "OPENAI_API_KEY" not in seen["env"]  # only allow-listed variables pass


@pytest.mark.parametrize(
    "hostile",
    ["$(rm -rf /); `id` | cat /etc/passwd && echo pwned > x", "--dangerously-skip-permissions",
     "../../etc", "a\nb\x00c'\"*?"],
)  # fmt: skip
async def test_command_arguments_arrive_verbatim_as_one_argv_item(tmp_path, hostile) -> None:  # type: ignore[no-untyped-def]
    spec = command_tool(tmp_path)
    if "\x00" in hostile:  # no OS can pass a NUL in argv: refused, not truncated
        with pytest.raises(ToolError):
            await run_tool(spec, {"text": hostile}, ignore)
        return
    await run_tool(spec, {"text": hostile}, ignore)
    seen = json.loads((tmp_path / "claude.json").read_text())
    assert seen["argv"] == ["-p", hostile, "--output-format", "stream-json", "--verbose"]
    assert seen["cwd"] == str(tmp_path)
    assert not (tmp_path / "x").exists()


async def test_a_hanging_command_hits_its_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolTimeout, match=r"did not finish within 0\.5 s"):
        await run_tool(command_tool(tmp_path, timeout_s=0.5), {"text": "--hang"}, ignore)


async def test_a_failing_command_reports_its_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolError, match="status 3: something broke"):
        await run_tool(command_tool(tmp_path), {"text": "--fail"}, ignore)


async def test_a_missing_program_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = command_tool(tmp_path)
    spec.command.argv[0] = str(tmp_path / "no-such-program")  # type: ignore[union-attr]
    with pytest.raises(ToolError, match="could not start"):
        await run_tool(spec, {"text": "x"}, ignore)


def test_the_program_cannot_be_a_template(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="argv\\[0\\]"):
        command_tool(tmp_path, argv=["{text}", "-p"])


async def test_websocket_tool_forwards_progress_and_returns_the_final_answer() -> None:
    spec = ToolSpec.model_validate(
        {"name": "send_to_nested", "description": "Ask the team", "parameters": TEXT_PARAMS,
         "kind": "websocket", "websocket": {"url": "ws://127.0.0.1:1/unused"}}
    )  # fmt: skip
    async with NestedTeam(progress=["Planning", "Researching"]) as team:
        spec.websocket.url = team.url  # type: ignore[union-attr]
        steps: list[dict] = []
        result = await run_tool(spec, {"text": "find flights"}, collect(steps))
    assert result == "The team says: done. (find flights)"
    assert [s["text"] for s in steps] == ["Planning", "Researching"]
    assert team.tasks == [{"type": "task", "text": "find flights"}]


async def test_websocket_tool_down_is_a_clear_error() -> None:
    spec = ToolSpec.model_validate(
        {"name": "send_to_nested", "description": "Ask the team", "parameters": TEXT_PARAMS,
         "kind": "websocket", "websocket": {"url": "ws://127.0.0.1:9/team"}}
    )  # fmt: skip
    with pytest.raises(ToolError, match="could not reach the agent team"):
        await run_tool(spec, {"text": "x"}, ignore)


async def test_http_tool_posts_arguments_and_returns_json() -> None:
    received: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"temperature": 21})

    app = web.Application()
    app.router.add_post("/weather", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        spec = ToolSpec.model_validate(
            {"name": "weather", "description": "Weather", "kind": "http",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
             "http": {"url": f"http://127.0.0.1:{port}/weather"}}
        )  # fmt: skip
        assert await run_tool(spec, {"city": "Oslo"}, ignore) == {"temperature": 21}
        assert received == [{"city": "Oslo"}]
    finally:
        await runner.cleanup()


def test_the_shipped_example_config_is_valid() -> None:
    tools = {t.name: t for t in load_tools(EXAMPLE)}
    assert {"send_to_nested", "send_to_claude_code"} <= set(tools)
    claude = tools["send_to_claude_code"].command
    assert claude is not None and claude.argv[:3] == ["claude", "-p", "{text}"]


async def test_a_failing_tool_is_recorded_and_the_model_hears_why() -> None:
    """The handler the model calls: tool.started, then tool.failed, and an error result."""
    from types import SimpleNamespace

    from worker.tools.calls import make_handler

    spec = ToolSpec.model_validate(
        {"name": "send_to_nested", "description": "Ask the team", "parameters": TEXT_PARAMS,
         "kind": "websocket", "websocket": {"url": "ws://127.0.0.1:9/team"}}
    )  # fmt: skip
    events: list[tuple[str, dict]] = []
    results: list[tuple[object, object]] = []
    outcomes: list[tuple[str, str]] = []

    async def result_callback(result: object, properties: object = None) -> None:
        results.append((result, properties))

    handler = make_handler(
        spec,
        lambda kind, data: events.append((kind, data)),
        lambda tool, outcome, _seconds: outcomes.append((tool, outcome)),
    )
    params = SimpleNamespace(
        arguments={"text": "find flights"}, tool_call_id="call_1", result_callback=result_callback
    )
    await handler(params)  # type: ignore[arg-type]
    assert [kind for kind, _ in events] == ["tool.started", "tool.failed"]
    failed = events[1][1]
    assert failed["call_id"] == "call_1" and "could not reach the agent team" in failed["error"]
    assert results == [({"error": failed["error"]}, None)]  # the final result: the error
    assert outcomes == [("send_to_nested", "error")]
