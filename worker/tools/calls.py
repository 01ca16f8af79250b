"""Wiring tools into a session: schemas for the model, handlers that record every step.

Calls run asynchronously (``cancel_on_interruption=False``): the conversation
goes on while a long tool works; streamed messages become ``tool.progress``
events and intermediate results for the model; the final result or the error
goes back to the model and into ``tool.completed`` / ``tool.failed``. Every
call that starts ends in one of the two, whatever goes wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams, LLMService

from shared.events import EventType
from worker.tools.config import ToolSpec
from worker.tools.runners import ToolError, ToolTimeout, run_tool

RESULT_EVENT_LIMIT = 8000  # characters of a result kept in the tool.completed event

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]
ToolObserver = Callable[[str, str, float], None]  # (tool name, outcome, seconds), for metrics


def tools_schema(specs: list[ToolSpec]) -> ToolsSchema | None:
    if not specs:
        return None
    return ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name=spec.name,
                description=spec.description,
                properties=spec.parameters.get("properties", {}),
                required=spec.parameters.get("required", []),
            )
            for spec in specs
        ]
    )


def _clip(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return value if len(text) <= RESULT_EVENT_LIMIT else text[:RESULT_EVENT_LIMIT] + "…"


def make_handler(
    spec: ToolSpec, emit: Emit, observe: ToolObserver | None = None
) -> Callable[[FunctionCallParams], Any]:
    async def handler(params: FunctionCallParams) -> None:
        arguments = params.arguments if params.arguments is not None else {}
        call = {"name": spec.name, "call_id": params.tool_call_id}
        title = {"title": spec.title} if spec.title else {}
        emit(EventType.TOOL_STARTED, {**call, **title, "arguments": _clip(arguments)})
        started = time.monotonic()
        step = 0

        async def progress(message: dict[str, Any]) -> None:
            nonlocal step
            step += 1
            emit(EventType.TOOL_PROGRESS, {**call, "step": step, **message})
            # The model hears how the work is going, without being asked to answer it.
            await params.result_callback(
                {"progress": message.get("text", "")},
                properties=FunctionCallResultProperties(is_final=False, run_llm=False),
            )

        def failed(error: str, outcome: str) -> None:
            elapsed = time.monotonic() - started
            emit(EventType.TOOL_FAILED, {**call, "error": error, "duration_s": round(elapsed, 3)})
            if observe:
                observe(spec.name, outcome, elapsed)

        try:
            result = await run_tool(spec, arguments, progress)
        except ToolError as exc:
            failed(str(exc), "timeout" if isinstance(exc, ToolTimeout) else "error")
            await params.result_callback({"error": str(exc)})
            return
        except asyncio.CancelledError:
            # The session ended or Pipecat's backstop timeout fired: Pipecat settles
            # the call with the model; the record must not say "running" for good.
            failed("the call was stopped before it finished", "error")
            raise
        except Exception as exc:
            # A bug, not the tool's failure: the details go to the log, plain words
            # to the model and the event.
            log.exception("tool %s (call %s) failed unexpectedly", spec.name, call["call_id"])
            error = f"{spec.name} failed because of an internal error ({type(exc).__name__})"
            failed(error, "error")
            await params.result_callback({"error": error})
            return
        elapsed = time.monotonic() - started
        emit(
            EventType.TOOL_COMPLETED,
            {**call, "result": _clip(result), "duration_s": round(elapsed, 3)},
        )
        if observe:
            observe(spec.name, "ok", elapsed)
        await params.result_callback({"result": result})

    return handler


def register_tools(
    llm: LLMService[Any], specs: list[ToolSpec], emit: Emit, observe: ToolObserver | None = None
) -> None:
    for spec in specs:
        # Our own timeout (in run_tool) answers the model with an error it can read
        # out; Pipecat's is a backstop a little later.
        llm.register_function(
            spec.name,
            make_handler(spec, emit, observe),
            cancel_on_interruption=False,
            timeout_secs=spec.timeout_s + 5,
        )
