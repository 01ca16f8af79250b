"""Running one tool call: a WebSocket agent team, a local program, or an HTTP endpoint.

Each runner takes the model's arguments and a ``progress`` callback (called
with a dict per streamed message) and returns the final result, or raises
``ToolError`` with a message the model can read out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import aiohttp
import websockets

from worker.tools.config import (
    PLACEHOLDER,
    CommandOptions,
    FinalMessage,
    HttpOptions,
    ToolSpec,
    WebSocketOptions,
)

Progress = Callable[[dict[str, Any]], Awaitable[None]]
PROGRESS_TEXT_LIMIT = 2000  # a progress event carries at most this much text
STDERR_KEPT = 2000  # bytes of a program's stderr kept for its error message
JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


class ToolError(Exception):
    """A failure to tell the model about, in plain words."""


class ToolTimeout(ToolError):
    """The tool ran past its ``timeout_s``."""


class _Omitted:
    """What a template item becomes when it names an optional argument the model left out."""


OMITTED = _Omitted()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _fill(template: Any, arguments: dict[str, Any], declared: Collection[str]) -> Any:
    if isinstance(template, dict):
        filled = {k: _fill(v, arguments, declared) for k, v in template.items()}
        return {k: v for k, v in filled.items() if v is not OMITTED}
    if isinstance(template, list):
        items = (_fill(v, arguments, declared) for v in template)
        return [v for v in items if v is not OMITTED]
    if not isinstance(template, str):
        return template
    names = [n for n in PLACEHOLDER.findall(template) if n in declared]
    if not names:
        return template
    if any(arguments.get(n) is None for n in names):
        return OMITTED  # never a literal "{name}" left for the program or the team to read
    whole = PLACEHOLDER.fullmatch(template)
    if whole:
        return arguments[whole.group(1)]
    # One pass, so a value that itself looks like "{other}" is never substituted again.
    return PLACEHOLDER.sub(
        lambda m: _text(arguments[m.group(1)]) if m.group(1) in declared else m.group(0),
        template,
    )


def fill(template: Any, arguments: dict[str, Any], declared: Collection[str]) -> Any:
    """Replace ``{name}`` placeholders of *declared* arguments with their values, structurally.

    A string that is exactly ``{name}`` becomes the value itself (any JSON type);
    inside a longer string the value is inserted as text. Nothing is evaluated, and
    a value is never searched for placeholders itself. An item naming an optional
    argument that was left out (or null) is dropped whole from its list or object.
    """
    filled = _fill(template, arguments, declared)
    return None if filled is OMITTED else filled


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_arguments(spec: ToolSpec, arguments: Any) -> dict[str, Any]:
    """The model's arguments, if they fit the tool's declared parameters; else ToolError."""
    if not isinstance(arguments, dict):
        raise ToolError(f"the arguments for {spec.name} must be a JSON object")
    declared = spec.argument_names
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        takes = ", ".join(declared) if declared else "no arguments"
        raise ToolError(f"unknown arguments: {', '.join(unknown)} ({spec.name} takes {takes})")
    for name in spec.required_names:
        if name not in arguments:
            raise ToolError(f"the {name} argument is required but was not given")
        if _is_blank(arguments[name]):
            raise ToolError(f"the {name} argument is required but was empty")
    properties = spec.parameters.get("properties", {})
    for name, value in arguments.items():
        wanted = properties[name].get("type")
        kinds = [wanted] if isinstance(wanted, str) else wanted
        if value is None or not isinstance(kinds, list):  # None: an optional one left out
            continue
        if not any(JSON_TYPES.get(kind, lambda _v: True)(value) for kind in kinds):
            raise ToolError(f"the {name} argument must be of type {' or '.join(kinds)}")
    return arguments


def _is_final(message: dict[str, Any], final: FinalMessage) -> bool:
    return str(message.get(final.field)) == final.value


def _progress_entry(message: dict[str, Any], field: str) -> dict[str, Any]:
    text = message.get(field)
    if not isinstance(text, str):
        text = json.dumps(message)[:PROGRESS_TEXT_LIMIT]
    return {"text": text[:PROGRESS_TEXT_LIMIT], "kind": str(message.get("type", ""))[:64]}


async def run_websocket(
    options: WebSocketOptions,
    arguments: dict[str, Any],
    progress: Progress,
    declared: Collection[str],
) -> Any:
    """Send the configured message (arguments only where it names them), follow the replies."""
    task = fill(options.message, arguments, declared)
    try:
        async with websockets.connect(
            options.url, open_timeout=options.open_timeout_s, max_size=4 * 1024 * 1024
        ) as ws:
            await ws.send(json.dumps(task))
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except (TypeError, ValueError):
                    await progress({"text": str(raw)[:PROGRESS_TEXT_LIMIT], "kind": "text"})
                    continue
                if not isinstance(message, dict):
                    continue
                if _is_final(message, options.final):
                    return message.get(options.final.result_field)
                await progress(_progress_entry(message, options.progress_field))
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        raise ToolError(f"could not reach the agent team: {exc}") from exc
    raise ToolError("the agent team closed the connection without a final answer")


def _argv(
    options: CommandOptions, arguments: dict[str, Any], declared: Collection[str]
) -> list[str]:
    """The argv to run: the configured items, with argument values in their templates.

    Before a ``--`` item the program still parses options, so a value there that
    starts with "-" is refused rather than handed over as a flag.
    """
    argv = [options.argv[0]]
    for index, item in enumerate(options.argv[1:], start=1):
        names = [n for n in PLACEHOLDER.findall(item) if n in declared]
        if index < options.values_from:
            for name in names:
                if arguments.get(name) is not None and _text(arguments[name]).startswith("-"):
                    raise ToolError(
                        f"the {name} argument cannot start with '-': {options.argv[0]} would "
                        "read it as an option"
                    )
        value = fill(item, arguments, declared) if names else item
        if value is not None:  # None: an optional argument that was left out
            argv.append(_text(value))
    return argv


def _environment(options: CommandOptions) -> dict[str, str]:
    env = {k: os.environ[k] for k in options.env_allow if k in os.environ}
    env.update(options.env)
    return env


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    # Read stderr as it comes, so a chatty program never blocks on a full pipe.
    while chunk := await stream.read(65536):
        tail.extend(chunk)
        del tail[:-STDERR_KEPT]


async def run_command(
    options: CommandOptions,
    arguments: dict[str, Any],
    progress: Progress,
    declared: Collection[str],
) -> Any:
    """Run the program (no shell: each argument is one argv item) and follow its JSON lines."""
    program = options.argv[0]
    limit = options.max_output_bytes
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(options, arguments, declared),
            cwd=options.cwd,
            env=_environment(options),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so we can stop all of it
            limit=limit,  # the longest line readuntil() buffers before giving up
        )
    except OSError as exc:
        raise ToolError(f"could not start {program}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a NUL byte, which no argv can carry
        raise ToolError(f"the arguments cannot be passed to {program}: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    stderr = bytearray()
    stderr_task = asyncio.create_task(_keep_tail(proc.stderr, stderr))
    result: Any = None
    found = False
    seen = 0
    try:
        while True:
            try:
                line = await proc.stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial  # the end of the output, maybe without a newline
            except asyncio.LimitOverrunError:
                raise ToolError(
                    f"{program} wrote a line longer than {limit} bytes, so it was stopped"
                ) from None
            if not line:
                break
            seen += len(line)
            if seen > limit:
                raise ToolError(f"{program} wrote more than {limit} bytes, so it was stopped")
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                message = json.loads(text)
            except ValueError:
                await progress({"text": text[:PROGRESS_TEXT_LIMIT], "kind": "text"})
                continue
            if isinstance(message, dict) and _is_final(message, options.final):
                result, found = message.get(options.final.result_field), True
            elif isinstance(message, dict):
                await progress(_progress_entry(message, "text"))
        code = await proc.wait()
        # The stderr tail, for the error message; a child that keeps the pipe open
        # does not hold the answer up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stderr_task), 1.0)
    finally:
        # Whatever ended the call (too much output, a timeout, a cancelled call, a
        # bug here): a program still running is stopped, with its whole group.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        stderr_task.cancel()
    if code != 0 and not found:
        said = stderr.decode(errors="replace").strip()
        raise ToolError(f"{program} exited with status {code}: {said or 'no output'}")
    if not found:
        raise ToolError(f"{program} finished without a result line")
    return result


async def run_http(options: HttpOptions, arguments: dict[str, Any], progress: Progress) -> Any:
    """POST the (already checked) arguments as the JSON body; URL and headers are the config's."""
    limit = options.max_response_bytes
    try:
        async with (
            aiohttp.ClientSession() as session,
            # No redirects: they would carry the config's headers (a bearer token) to
            # wherever the service points; the URL is the config's, and only it.
            session.post(
                options.url, json=arguments, headers=options.headers, allow_redirects=False
            ) as response,
        ):
            if 300 <= response.status < 400:
                raise ToolError(
                    f"the service answered {response.status} (a redirect), which tools don't follow"
                )
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body.extend(chunk)
                if len(body) > limit:
                    raise ToolError(f"the service's answer was longer than {limit} bytes")
            text = body.decode(response.charset or "utf-8", errors="replace")
            if response.status >= 400:
                raise ToolError(f"the service answered {response.status}: {text[:500]}")
            if response.content_type == "application/json":
                try:
                    return json.loads(text)
                except ValueError:
                    raise ToolError("the service's answer was not valid JSON") from None
            return text
    except aiohttp.ClientError as exc:
        raise ToolError(f"could not reach {options.url}: {exc}") from exc


async def run_tool(spec: ToolSpec, arguments: Any, progress: Progress) -> Any:
    """Run one call of ``spec`` with its timeout; raises ``ToolError`` on any failure it
    foresees (anything else is a bug, which the caller reports as a failed call too)."""
    arguments = check_arguments(spec, arguments)
    declared = spec.argument_names
    try:
        async with asyncio.timeout(spec.timeout_s):
            if spec.kind == "websocket":
                assert spec.websocket is not None
                return await run_websocket(spec.websocket, arguments, progress, declared)
            if spec.kind == "command":
                assert spec.command is not None
                return await run_command(spec.command, arguments, progress, declared)
            assert spec.http is not None
            return await run_http(spec.http, arguments, progress)
    except TimeoutError:
        raise ToolTimeout(f"{spec.name} did not finish within {spec.timeout_s:g} s") from None
