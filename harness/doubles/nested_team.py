"""A stand-in for the nested agent team: a WebSocket server that streams progress, then answers.

Wire shape (voicepool's documented default): the client sends
``{"type": "task", "text": ...}``; the team sends ``{"type": "progress",
"text": ...}`` messages and finally ``{"type": "final", "text": ...}``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets

TOOLS_TOML = """
[[tools]]
name = "send_to_nested"
description = "Hand a task to the agent team."
kind = "websocket"
timeout_s = 30
[tools.parameters]
type = "object"
required = ["text"]
[tools.parameters.properties.text]
type = "string"
[tools.websocket]
url = "{url}"
"""


class NestedTeam:
    def __init__(self, progress: list[str] | None = None, answer: str = "The team says: done.",
                 delay_s: float = 0.05) -> None:  # fmt: skip
        self.progress = progress if progress is not None else ["Planning", "Researching"]
        self.answer = answer
        self.delay_s = delay_s
        self.tasks: list[dict[str, Any]] = []
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/team"

    async def _serve(self, ws: Any) -> None:
        task = json.loads(await ws.recv())
        self.tasks.append(task)
        for step in self.progress:
            await asyncio.sleep(self.delay_s)  # a team at work: progress comes over time
            await ws.send(json.dumps({"type": "progress", "text": step}))
        await ws.send(json.dumps({"type": "final", "text": f"{self.answer} ({task.get('text')})"}))

    def write_tools_file(self, path: Path) -> Path:
        """A tools file (VOICEPOOL_TOOLS_FILE) declaring ``send_to_nested`` against this team."""
        path.write_text(TOOLS_TOML.format(url=self.url))
        return path

    async def start(self) -> NestedTeam:
        self._server = await websockets.serve(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> NestedTeam:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
