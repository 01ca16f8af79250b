"""The tool config file: which tools exist and how each runs.

Only tools declared here can run, and what the model supplies are argument
*values*: it can never change a program, its fixed flags, its working
directory, a URL, a header or an environment. Templates name arguments as
``{name}``; every name must be a declared parameter, checked when the file is
loaded. See ``deploy/tools.example.toml``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")
END_OF_OPTIONS = "--"  # in a command's argv: the program reads later items as values


def placeholders(template: Any) -> set[str]:
    """The argument names a template refers to, in any string inside it."""
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    if isinstance(template, str):
        return set(PLACEHOLDER.findall(template))
    return set()


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
    max_output_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Cap on stdout, in total and so also per line; past it the call fails.",
    )

    @field_validator("argv")
    @classmethod
    def _program_is_fixed(cls, argv: list[str]) -> list[str]:
        if "{" in argv[0]:
            raise ValueError("argv[0] (the program) cannot be a template")
        if argv[0] == END_OF_OPTIONS:
            raise ValueError("argv[0] (the program) cannot be the '--' marker")
        return argv

    @property
    def values_from(self) -> int:
        """The index of the first argv item behind the ``--`` marker (len(argv) if none).

        A template before it may only take values the program cannot read as an option.
        """
        if END_OF_OPTIONS in self.argv:
            return self.argv.index(END_OF_OPTIONS) + 1
        return len(self.argv)


class HttpOptions(Strict):
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    max_response_bytes: int = Field(1_000_000, ge=1024)


class ToolSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    title: str | None = Field(
        None,
        max_length=80,
        description="What people see on the tool's card in the web app (default: the name, "
        "in words).",
    )
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
        properties = self.parameters.get("properties", {})
        required = self.parameters.get("required", [])
        if not isinstance(properties, dict) or not all(
            isinstance(p, dict) for p in properties.values()
        ):
            raise ValueError(f"tool {self.name!r}: parameters.properties must map names to schemas")
        if not isinstance(required, list) or not set(required) <= set(properties):
            raise ValueError(
                f"tool {self.name!r}: parameters.required must list declared properties"
            )
        self._check_templates()
        return self

    def _check_templates(self) -> None:
        # A placeholder nobody declared would reach the program or the team as
        # literal "{name}" text; and where the config says "fixed", nothing may
        # be templated at all.
        templates: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        if self.command is not None:
            templates["command.argv"] = self.command.argv[1:]
        if self.websocket is not None:
            templates["websocket.message"] = self.websocket.message
            fixed["websocket.url"] = self.websocket.url
        if self.http is not None:
            fixed["http.url"] = self.http.url
            fixed["http.headers"] = [*self.http.headers, *self.http.headers.values()]
        for where, template in templates.items():
            undeclared = placeholders(template) - set(self.argument_names)
            if undeclared:
                names = ", ".join("{" + n + "}" for n in sorted(undeclared))
                raise ValueError(
                    f"tool {self.name!r}: {where} names {names}, which is not a declared "
                    "parameter (add it to parameters.properties)"
                )
        for where, value in fixed.items():
            if placeholders(value):
                raise ValueError(
                    f"tool {self.name!r}: {where} is fixed by the config and cannot take "
                    "arguments (an http tool sends them as the JSON body)"
                )

    @property
    def argument_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    @property
    def required_names(self) -> list[str]:
        return list(self.parameters.get("required", []))


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
