"""Tool kinds against local stand-ins: the nested team, a `claude` script, an HTTP endpoint.

The model's arguments are untrusted: they are values, never options, flags,
URLs or headers, and every failure is a ToolError the model hears.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from harness.doubles import CLAUDE
from harness.doubles.nested_team import NestedTeam
from harness.waiting import eventually
from worker.tools.config import ToolSpec, load_tools
from worker.tools.runners import ToolError, ToolTimeout, fill, run_tool

EXAMPLE = Path(__file__).parents[2] / "deploy" / "tools.example.toml"
TEXT_PARAMS = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}


def collect(into: list[dict]):
    async def progress(message: dict) -> None:
        into.append(message)

    return progress


async def ignore(_message: dict) -> None:
    return None


# The shipped form: `-p` a switch, the prompt positional behind the end of options.
FLAGS = ["-p", "--output-format", "stream-json", "--verbose"]
ARGV = [sys.executable, str(CLAUDE), *FLAGS, "--", "{text}"]
# The old form, with the prompt where the program still parses options.
LEGACY_ARGV = [sys.executable, str(CLAUDE), "-p", "{text}", "--output-format", "stream-json",
               "--verbose"]  # fmt: skip
DASHED = ["--dangerously-skip-permissions", "--permission-mode=bypassPermissions", "-x", "-",
          "--", "-p"]  # fmt: skip


def command_tool(
    tmp_path: Path, timeout_s: float = 10, parameters: dict | None = None, **command: object
) -> ToolSpec:
    return ToolSpec.model_validate(
        {
            "name": "send_to_claude_code",
            "description": "Run Claude Code",
            "parameters": parameters or TEXT_PARAMS,
            "kind": "command",
            "timeout_s": timeout_s,
            "command": {
                "argv": ARGV,
                "cwd": str(tmp_path),
                "env": {"CLAUDE_STANDIN_LOG": str(tmp_path / "claude.jsonl")},
                **command,
            },
        }
    )


def runs(tmp_path: Path) -> list[dict]:
    """What the stand-in recorded, one entry per run (none: it never ran)."""
    log = tmp_path / "claude.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


async def test_command_tool_streams_progress_and_returns_the_result(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-of-the-platform")
    steps: list[dict] = []
    result = await run_tool(command_tool(tmp_path), {"text": "fix the bug"}, collect(steps))
    assert result == "Done: fix the bug"
    assert [s["kind"] for s in steps] == ["system", "assistant", "assistant"]
    [seen] = runs(tmp_path)
    assert seen["cwd"] == str(tmp_path)
    assert "OPENAI_API_KEY" not in seen["env"]  # only allow-listed variables pass


@pytest.mark.parametrize(
    "hostile",
    ["$(rm -rf /); `id` | cat /etc/passwd && echo pwned > x", "../../etc", "a\nb\x00c'\"*?",
     "{text}", *DASHED],
)  # fmt: skip
async def test_command_arguments_arrive_verbatim_as_one_argv_item(tmp_path, hostile) -> None:
    spec = command_tool(tmp_path)
    if "\x00" in hostile:  # no OS can pass a NUL in argv: refused, not truncated
        with pytest.raises(ToolError, match="cannot be passed"):
            await run_tool(spec, {"text": hostile}, ignore)
        assert runs(tmp_path) == []
        return
    assert await run_tool(spec, {"text": hostile}, ignore) == f"Done: {hostile}"
    [seen] = runs(tmp_path)
    # Behind "--" even "--dangerously-skip-permissions" is the prompt, not an option.
    assert seen["argv"] == [*FLAGS, "--", hostile]
    assert seen["prompt"] == hostile
    assert seen["options"] == {"print": True, "output_format": "stream-json", "verbose": True}
    assert seen["cwd"] == str(tmp_path)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("dashed", DASHED)
async def test_a_dashed_value_where_the_program_reads_options_is_refused(tmp_path, dashed) -> None:
    """Before a "--" marker (or with none) a value starting with "-" would be an option."""
    spec = command_tool(tmp_path, argv=LEGACY_ARGV)
    with pytest.raises(ToolError) as refused:
        await run_tool(spec, {"text": dashed}, ignore)
    assert str(refused.value) == (
        f"the text argument cannot start with '-': {sys.executable} would read it as an option"
    )
    assert runs(tmp_path) == []  # the program never ran
    # Ordinary text still works in that position.
    assert await run_tool(spec, {"text": "fix the bug"}, ignore) == "Done: fix the bug"
    assert runs(tmp_path)[0]["argv"] == ["-p", "fix the bug", "--output-format", "stream-json",
                                         "--verbose"]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "error"),
    [({}, "the text argument is required but was not given"),
     ({"text": ""}, "the text argument is required but was empty"),
     ({"text": "   "}, "the text argument is required but was empty"),
     ({"text": None}, "the text argument is required but was empty"),
     ({"text": 42}, "the text argument must be of type string"),
     ({"text": "hi", "cwd": "/"}, "unknown arguments: cwd (send_to_claude_code takes text)")],
)  # fmt: skip
async def test_missing_empty_or_unknown_arguments_never_reach_the_program(
    tmp_path, arguments, error
) -> None:
    with pytest.raises(ToolError) as refused:
        await run_tool(command_tool(tmp_path), arguments, ignore)
    assert str(refused.value) == error
    assert runs(tmp_path) == []  # never a literal "{text}" run, nor an empty prompt


async def test_an_optional_argument_left_out_drops_its_argv_item(tmp_path) -> None:
    params = {"type": "object", "required": ["text"],
              "properties": {"text": {"type": "string"}, "model": {"type": "string"}}}  # fmt: skip
    argv = [sys.executable, str(CLAUDE), "-p", "--model={model}", "--", "{text}"]
    spec = command_tool(tmp_path, parameters=params, argv=argv)
    await run_tool(spec, {"text": "hi"}, ignore)
    await run_tool(spec, {"text": "hi", "model": None}, ignore)
    await run_tool(spec, {"text": "hi", "model": "sonnet"}, ignore)
    assert [r["argv"] for r in runs(tmp_path)] == [
        ["-p", "--", "hi"], ["-p", "--", "hi"], ["-p", "--model=sonnet", "--", "hi"],
    ]  # fmt: skip
    with pytest.raises(ToolError, match="the model argument cannot start with '-'"):
        await run_tool(spec, {"text": "hi", "model": "-x"}, ignore)
    assert len(runs(tmp_path)) == 3


async def test_a_ten_megabyte_line_fails_the_call_and_kills_the_process_group(tmp_path) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError) as stopped:
        await run_tool(command_tool(tmp_path), {"text": "--long-line"}, ignore)
    assert str(stopped.value) == (
        f"{sys.executable} wrote a line longer than 1000000 bytes, so it was stopped"
    )
    assert time.monotonic() - started < 5  # not the 10 s timeout
    [seen] = runs(tmp_path)
    assert seen["pgid"] == seen["pid"] and seen["child"]  # its own group, with a child in it
    await eventually(
        lambda: not alive(seen["pid"]) and not alive(seen["child"]),
        timeout=5,
        what="the program and its child gone",
    )


async def test_output_over_the_total_cap_fails_the_call(tmp_path) -> None:
    steps: list[dict] = []
    with pytest.raises(ToolError) as stopped:
        await run_tool(command_tool(tmp_path), {"text": "--flood"}, collect(steps))
    assert str(stopped.value) == (
        f"{sys.executable} wrote more than 1000000 bytes, so it was stopped"
    )
    assert 900 <= len(steps) < 1000  # it streamed up to the cap, then stopped
    [seen] = runs(tmp_path)
    assert not alive(seen["pid"])


async def test_a_hanging_command_hits_its_timeout(tmp_path) -> None:
    with pytest.raises(ToolTimeout, match=r"did not finish within 0\.5 s"):
        await run_tool(command_tool(tmp_path, timeout_s=0.5), {"text": "--hang"}, ignore)


async def test_a_failing_command_reports_its_status(tmp_path) -> None:
    with pytest.raises(ToolError, match="status 3: something broke"):
        await run_tool(command_tool(tmp_path), {"text": "--fail"}, ignore)


async def test_a_missing_program_is_a_clear_error(tmp_path) -> None:
    spec = command_tool(tmp_path)
    assert spec.command is not None
    spec.command.argv[0] = str(tmp_path / "no-such-program")
    with pytest.raises(ToolError, match="could not start"):
        await run_tool(spec, {"text": "x"}, ignore)


def test_the_program_cannot_be_a_template(tmp_path) -> None:
    with pytest.raises(ValueError, match="argv\\[0\\]"):
        command_tool(tmp_path, argv=["{text}", "-p"])


@pytest.mark.parametrize(
    ("tool", "error"),
    [({"kind": "command", "command": {"argv": ["claude", "-p", "--", "{prompt}"]}},
      "command.argv names {prompt}, which is not a declared parameter"),
     ({"kind": "websocket",
       "websocket": {"url": "ws://h/team", "message": {"type": "task", "to": "{who}"}}},
      "websocket.message names {who}, which is not a declared parameter"),
     ({"kind": "websocket", "websocket": {"url": "ws://h/{text}"}},
      "websocket.url is fixed by the config and cannot take arguments"),
     ({"kind": "http", "http": {"url": "http://h/{text}"}},
      "http.url is fixed by the config and cannot take arguments"),
     ({"kind": "http", "http": {"url": "http://h/", "headers": {"X-Task": "{text}"}}},
      "http.headers is fixed by the config and cannot take arguments"),
     ({"kind": "http", "http": {"url": "http://h/"},
       "parameters": {"type": "object", "properties": {}, "required": ["text"]}},
      "parameters.required must list declared properties")],
)  # fmt: skip
def test_templates_are_checked_when_the_config_loads(tool, error) -> None:
    with pytest.raises(ValueError, match=error):
        ToolSpec.model_validate(
            {"name": "t", "description": "d", "parameters": TEXT_PARAMS, **tool}
        )


def test_fill_substitutes_declared_arguments_only_and_in_one_pass() -> None:
    template = {"type": "task", "text": "{text}", "note": "about {text} for {who}",
                "fixed": "{secret}", "opt": "{opt}", "items": ["{opt}", "{text}"]}  # fmt: skip
    arguments = {"text": "{who}", "who": "ana", "secret": "leaked"}
    assert fill(template, arguments, ["text", "who", "opt"]) == {
        "type": "task",
        "text": "{who}",  # a value is never searched for placeholders itself
        "note": "about {who} for ana",
        "fixed": "{secret}",  # not declared: not a placeholder at all
        "items": ["{who}"],  # the optional "opt" was left out: its items go
    }


async def test_websocket_tool_forwards_progress_and_returns_the_final_answer() -> None:
    spec = ToolSpec.model_validate(
        {"name": "send_to_nested", "description": "Ask the team", "parameters": TEXT_PARAMS,
         "kind": "websocket", "websocket": {"url": "ws://127.0.0.1:1/unused"}}
    )  # fmt: skip
    async with NestedTeam(progress=["Planning", "Researching"]) as team:
        assert spec.websocket is not None
        spec.websocket.url = team.url
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


async def test_websocket_message_takes_declared_arguments_only() -> None:
    params = {"type": "object", "required": ["text"],
              "properties": {"text": {"type": "string"}, "who": {"type": "string"}}}  # fmt: skip
    spec = ToolSpec.model_validate(
        {"name": "send_to_nested", "description": "Ask the team", "parameters": params,
         "kind": "websocket",
         "websocket": {"url": "ws://127.0.0.1:1/unused",
                       "message": {"type": "task", "text": "{text}", "to": "{who}"}}}
    )  # fmt: skip
    async with NestedTeam(progress=[]) as team:
        assert spec.websocket is not None
        spec.websocket.url = team.url
        await run_tool(spec, {"text": "{who} -- --flag"}, ignore)
        with pytest.raises(ToolError, match=r"unknown arguments: type \(send_to_nested takes"):
            await run_tool(spec, {"text": "x", "type": "final"}, ignore)
    # "who" was left out: its key goes; the text is sent as it came.
    assert team.tasks == [{"type": "task", "text": "{who} -- --flag"}]


class Endpoint:
    """A local HTTP endpoint that records what it was sent."""

    def __init__(self, answer: web.Response | None = None) -> None:
        self.answer = answer
        self.received: list[tuple[str, dict, bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.path_qs, dict(request.headers), await request.read()))
        return self.answer or web.json_response({"temperature": 21})

    async def __aenter__(self) -> Endpoint:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()


def http_tool(url: str, properties: dict | None = None) -> ToolSpec:
    return ToolSpec.model_validate(
        {"name": "weather", "description": "Weather", "kind": "http",
         "parameters": {"type": "object", "properties": properties or {}},
         "http": {"url": url, "headers": {"Authorization": "Bearer fixed"},
                  "max_response_bytes": 4096}}
    )  # fmt: skip


async def test_http_tool_posts_arguments_and_returns_json() -> None:
    async with Endpoint() as endpoint:
        spec = http_tool(f"{endpoint.url}/weather", {"city": {"type": "string"}})
        assert await run_tool(spec, {"city": "Oslo"}, ignore) == {"temperature": 21}
    [(path, _headers, body)] = endpoint.received
    assert path == "/weather" and json.loads(body) == {"city": "Oslo"}


async def test_http_arguments_cannot_reach_the_url_or_headers() -> None:
    hostile = "Oslo\r\nX-Injected: 1\r\n\r\n/../admin?x={city}"
    async with Endpoint() as endpoint:
        spec = http_tool(f"{endpoint.url}/weather", {"city": {"type": "string"}})
        await run_tool(spec, {"city": hostile}, ignore)
        with pytest.raises(
            ToolError, match=r"unknown arguments: Authorization, url \(weather takes city\)"
        ):
            await run_tool(spec, {"city": "x", "url": "http://evil/", "Authorization": "x"}, ignore)
        # A tool that declares no arguments takes none, rather than any.
        bare = http_tool(f"{endpoint.url}/ping")
        no_arguments = r"unknown arguments: city \(weather takes no arguments\)"
        with pytest.raises(ToolError, match=no_arguments):
            await run_tool(bare, {"city": "Oslo"}, ignore)
    [(path, headers, body)] = endpoint.received
    assert path == "/weather" and "X-Injected" not in headers
    assert headers["Authorization"] == "Bearer fixed"
    assert json.loads(body) == {"city": hostile}


async def test_http_answers_too_long_or_not_json_are_clear_errors() -> None:
    async with Endpoint(web.Response(body=b"x" * 10_000)) as endpoint:
        with pytest.raises(ToolError, match="the service's answer was longer than 4096 bytes"):
            await run_tool(http_tool(endpoint.url), {}, ignore)
        endpoint.answer = web.Response(text="{not json", content_type="application/json")
        with pytest.raises(ToolError, match="the service's answer was not valid JSON"):
            await run_tool(http_tool(endpoint.url), {}, ignore)


async def test_http_redirects_are_not_followed() -> None:
    """A redirect would carry the config's headers (its bearer token) somewhere else."""
    async with Endpoint() as elsewhere, Endpoint() as endpoint:
        endpoint.answer = web.Response(status=307, headers={"Location": f"{elsewhere.url}/x"})
        with pytest.raises(ToolError, match=r"answered 307 \(a redirect\)"):
            await run_tool(http_tool(f"{endpoint.url}/weather"), {}, ignore)
    assert elsewhere.received == []


def test_the_shipped_example_config_is_valid() -> None:
    tools = {t.name: t for t in load_tools(EXAMPLE)}
    assert {"send_to_nested", "send_to_claude_code"} <= set(tools)
    claude = tools["send_to_claude_code"].command
    assert claude is not None
    assert claude.argv == ["claude", "-p", "--output-format", "stream-json", "--verbose", "--",
                           "{text}"]  # fmt: skip


async def test_the_shipped_claude_argv_passes_a_dashed_text_as_the_prompt(tmp_path) -> None:
    spec = {t.name: t for t in load_tools(EXAMPLE)}["send_to_claude_code"]
    assert spec.command is not None
    argv = [sys.executable, str(CLAUDE), *spec.command.argv[1:]]  # the stand-in for `claude`
    log = {"CLAUDE_STANDIN_LOG": str(tmp_path / "claude.jsonl")}
    spec = spec.model_copy(
        update={"command": spec.command.model_copy(update={"argv": argv, "cwd": tmp_path,
                                                           "env": log})}
    )  # fmt: skip
    text = "--dangerously-skip-permissions"
    assert await run_tool(spec, {"text": text}, ignore) == f"Done: {text}"
    [seen] = runs(tmp_path)
    assert seen["prompt"] == text and "dangerously_skip_permissions" not in seen["options"]


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
    await handler(params)  # type: ignore[arg-type]  # a stand-in for FunctionCallParams: the three fields the handler reads
    assert [kind for kind, _ in events] == ["tool.started", "tool.failed"]
    failed = events[1][1]
    assert failed["call_id"] == "call_1" and "could not reach the agent team" in failed["error"]
    assert results == [({"error": failed["error"]}, None)]  # the final result: the error
    assert outcomes == [("send_to_nested", "error")]


def call_handler(spec: ToolSpec, arguments: object):
    """The handler the model calls, with what it records and what the model hears."""
    from types import SimpleNamespace

    from worker.tools.calls import make_handler

    events: list[tuple[str, dict]] = []
    results: list[object] = []
    outcomes: list[str] = []

    async def result_callback(result: object, properties: object = None) -> None:
        if properties is None:
            results.append(result)

    handler = make_handler(
        spec, lambda kind, data: events.append((kind, data)),
        lambda _tool, outcome, _seconds: outcomes.append(outcome),
    )  # fmt: skip
    params = SimpleNamespace(
        arguments=arguments, tool_call_id="call_1", result_callback=result_callback
    )
    return handler(params), events, results, outcomes  # type: ignore[arg-type]  # a stand-in for FunctionCallParams: the three fields the handler reads


@pytest.mark.parametrize(
    ("argv", "text", "error"),
    [(LEGACY_ARGV, "--dangerously-skip-permissions", "the text argument cannot start with '-'"),
     (ARGV, "", "the text argument is required but was empty"),
     (ARGV, "--long-line", "wrote a line longer than 1000000 bytes, so it was stopped")],
)  # fmt: skip
async def test_a_refused_or_stopped_command_ends_in_tool_failed(
    tmp_path, argv, text, error
) -> None:
    call, events, results, outcomes = call_handler(
        command_tool(tmp_path, argv=argv), {"text": text}
    )
    await asyncio.wait_for(call, 10)
    assert [kind for kind, _ in events] == ["tool.started", "tool.failed"]
    assert error in events[1][1]["error"]
    assert results == [{"error": events[1][1]["error"]}]
    assert outcomes == ["error"]


async def test_a_bug_in_a_runner_still_ends_in_tool_failed(tmp_path, monkeypatch) -> None:
    from worker.tools import calls

    async def broken(*_args: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(calls, "run_tool", broken)
    call, events, results, outcomes = call_handler(command_tool(tmp_path), {"text": "x"})
    await call
    error = "send_to_claude_code failed because of an internal error (KeyError)"
    kind, failed = events[1]
    assert kind == "tool.failed" and failed["call_id"] == "call_1" and failed["error"] == error
    assert results == [{"error": error}] and outcomes == ["error"]


async def test_a_cancelled_call_is_recorded_as_failed_and_its_program_killed(tmp_path) -> None:
    call, events, results, _outcomes = call_handler(command_tool(tmp_path), {"text": "--hang"})
    task = asyncio.create_task(call)
    await eventually(lambda: runs(tmp_path), timeout=5, what="the program started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [kind for kind, _ in events] == ["tool.started", "tool.failed"]
    assert events[1][1]["error"] == "the call was stopped before it finished"
    assert results == []  # Pipecat settles a cancelled call with the model itself
    assert not alive(runs(tmp_path)[0]["pid"])


async def test_arguments_that_are_not_an_object_end_in_tool_failed(tmp_path) -> None:
    call, events, results, _outcomes = call_handler(command_tool(tmp_path), "fix it")
    await call
    assert events[1][1]["error"] == "the arguments for send_to_claude_code must be a JSON object"
    assert results == [{"error": events[1][1]["error"]}]
