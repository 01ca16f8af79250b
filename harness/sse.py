"""A small Server-Sent Events reader for tests (parses the wire format by hand)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SSEEvent:
    id: str | None
    event: str
    data: dict[str, Any]


def is_final_state(event: SSEEvent) -> bool:
    return event.event == "session.state" and event.data["data"]["state"] in {
        "ended",
        "failed",
        "expired",
        "cancelled",
    }


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    limit: int | None = None,
) -> list[SSEEvent]:
    """Read until the server closes the stream (after the final state) or ``limit`` events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[SSEEvent] = []
    fields: dict[str, str] = {}
    data_lines: list[str] = []
    async with client.stream("GET", url, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line == "":
                if data_lines:
                    events.append(
                        SSEEvent(
                            id=fields.get("id"),
                            event=fields.get("event", "message"),
                            data=json.loads("\n".join(data_lines)),
                        )
                    )
                    if limit is not None and len(events) >= limit:
                        break
                fields, data_lines = {}, []
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data_lines.append(value)
            else:
                fields[name] = value
    return events
