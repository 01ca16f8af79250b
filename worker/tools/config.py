"""The tool config file: which tools exist and how each runs.

Only tools declared here can run, and what the model supplies are argument
*values*: it can never change a program, its fixed flags, its working
directory, a URL or an environment. See ``deploy/tools.example.toml``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinalMessage(Strict):
    """How to recognise the message that carries the final answer, and where it is."""

    field: str = "type"
    value: str = "final"
    result_field: str = "text"


class WebSocketOptions(Strict):
    url: str = Field(pattern=r"^wss?://")
    message: dict[str, Any] = Field(
        default_factory=lambda: {"type": "task", "text": "{text}"},
        description="JSON sent once connected; string values '{arg}' are replaced by arguments.",
    )
    final: FinalMessage = Field(default_factory=FinalMessage)
    progress_field: str = "text"
    open_timeout_s: float = 10.0


class CommandOptions(Strict):
    argv: list[str] = Field(min_length=1)
    cwd: Path | None = None
    env_allow: list[str] = Field(
        default_factory=lambda: ["PATH", "HOME", "LANG", "LC_ALL"],
        description="Environment variables passed through from the worker (nothing else is).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Fixed extra environment.")
    final: FinalMessage = Field(
        default_factory=lambda: FinalMessage(field="type", value="result", result_field="result")
    )
    max_output_bytes: int = Field(1_000_000, ge=1024)

    @field_validator("argv")
    @classmethod
    def _program_is_fixed(cls, argv: list[str]) -> list[str]:
        if "{" in argv[0]:
            raise ValueError("argv[0] (the program) cannot be a template")
        return argv


class HttpOptions(Strict):
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)


class ToolSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, max_length=2000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}, "required": []}
    )
    kind: Literal["websocket", "command", "http"]
    timeout_s: float = Field(120.0, gt=0, le=3600)
    websocket: WebSocketOptions | None = None
    command: CommandOptions | None = None
    http: HttpOptions | None = None

    @model_validator(mode="after")
    def _options_match_kind(self) -> ToolSpec:
        if getattr(self, self.kind) is None:
            raise ValueError(
                f"tool {self.name!r} of kind {self.kind!r} needs a [{self.kind}] table"
            )
        for other in {"websocket", "command", "http"} - {self.kind}:
            if getattr(self, other) is not None:
                raise ValueError(f"tool {self.name!r} is {self.kind!r} but has a [{other}] table")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema object")
        return self

    @property
    def argument_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))


class ToolsConfig(Strict):
    tools: Annotated[list[ToolSpec], Field(default_factory=list)]

    @model_validator(mode="after")
    def _unique_names(self) -> ToolsConfig:
        names = [t.name for t in self.tools]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"tool names must be unique: {', '.join(sorted(duplicates))}")
        return self


def load_tools(path: Path | str | None) -> list[ToolSpec]:
    """Read and validate the tool file; no path means no tools."""
    if not path:
        return []
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return ToolsConfig.model_validate(data).tools
