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
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import websockets

from worker.tools.config import (
    CommandOptions,
    FinalMessage,
    HttpOptions,
    ToolSpec,
    WebSocketOptions,
)

Progress = Callable[[dict[str, Any]], Awaitable[None]]
PROGRESS_TEXT_LIMIT = 2000  # a progress event carries at most this much text


class ToolError(Exception):
    """A failure to tell the model about, in plain words."""


class ToolTimeout(ToolError):
    """The tool ran past its ``timeout_s``."""


def fill(template: Any, arguments: dict[str, Any]) -> Any:
    """Replace ``{name}`` in the template's strings with argument values, structurally.

    A string that is exactly ``{name}`` becomes the value itself (any JSON type);
    inside a longer string the value is inserted as text. Nothing is evaluated.
    """
    if isinstance(template, dict):
        return {k: fill(v, arguments) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, arguments) for v in template]
    if isinstance(template, str):
        for name, value in arguments.items():
            placeholder = "{" + name + "}"
            if template == placeholder:
                return value
            if placeholder in template:
                text = value if isinstance(value, str) else json.dumps(value)
                template = template.replace(placeholder, text)
        return template
    return template


def _is_final(message: dict[str, Any], final: FinalMessage) -> bool:
    return str(message.get(final.field)) == final.value


def _progress_entry(message: dict[str, Any], field: str) -> dict[str, Any]:
    text = message.get(field)
    if not isinstance(text, str):
        text = json.dumps(message)[:PROGRESS_TEXT_LIMIT]
    return {"text": text[:PROGRESS_TEXT_LIMIT], "kind": str(message.get("type", ""))[:64]}


async def run_websocket(
    options: WebSocketOptions, arguments: dict[str, Any], progress: Progress
) -> Any:
    try:
        async with websockets.connect(
            options.url, open_timeout=options.open_timeout_s, max_size=4 * 1024 * 1024
        ) as ws:
            await ws.send(json.dumps(fill(options.message, arguments)))
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


def _argv(options: CommandOptions, arguments: dict[str, Any]) -> list[str]:
    argv = [options.argv[0]]
    for item in options.argv[1:]:
        value = fill(item, arguments)
        argv.append(value if isinstance(value, str) else json.dumps(value))
    return argv


def _environment(options: CommandOptions) -> dict[str, str]:
    env = {k: os.environ[k] for k in options.env_allow if k in os.environ}
    env.update(options.env)
    return env


async def run_command(
    options: CommandOptions, arguments: dict[str, Any], progress: Progress
) -> Any:
    """Run the program (no shell: each argument is one argv item) and follow its JSON lines."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(options, arguments),
            cwd=options.cwd,
            env=_environment(options),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=options.max_output_bytes,
        )
    except OSError as exc:
        raise ToolError(f"could not start {options.argv[0]}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a NUL byte, which no argv can carry
        raise ToolError(f"the arguments cannot be passed to {options.argv[0]}: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    result: Any = None
    found = False
    seen = 0
    try:
        async for line in proc.stdout:
            seen += len(line)
            if seen > options.max_output_bytes:
                raise ToolError(f"the program wrote more than {options.max_output_bytes} bytes")
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
    finally:
        if proc.returncode is None:  # cancelled or timed out: stop the whole process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
    if code != 0 and not found:
        stderr = (await proc.stderr.read(2000)).decode(errors="replace").strip()
        raise ToolError(f"{options.argv[0]} exited with status {code}: {stderr or 'no output'}")
    if not found:
        raise ToolError(f"{options.argv[0]} finished without a result line")
    return result


async def run_http(options: HttpOptions, arguments: dict[str, Any], progress: Progress) -> Any:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(options.url, json=arguments, headers=options.headers) as response,
        ):
            body = await response.text()
            if response.status >= 400:
                raise ToolError(f"the service answered {response.status}: {body[:500]}")
            if response.content_type == "application/json":
                return json.loads(body)
            return body
    except aiohttp.ClientError as exc:
        raise ToolError(f"could not reach {options.url}: {exc}") from exc


async def run_tool(spec: ToolSpec, arguments: dict[str, Any], progress: Progress) -> Any:
    """Run one call of ``spec`` with its timeout; raises ``ToolError`` on any failure."""
    unknown = set(arguments) - set(spec.argument_names)
    if unknown and spec.argument_names:
        raise ToolError(f"unknown arguments: {', '.join(sorted(unknown))}")
    try:
        async with asyncio.timeout(spec.timeout_s):
            if spec.kind == "websocket":
                assert spec.websocket is not None
                return await run_websocket(spec.websocket, arguments, progress)
            if spec.kind == "command":
                assert spec.command is not None
                return await run_command(spec.command, arguments, progress)
            assert spec.http is not None
            return await run_http(spec.http, arguments, progress)
    except TimeoutError:
        raise ToolTimeout(f"{spec.name} did not finish within {spec.timeout_s:g} s") from None
