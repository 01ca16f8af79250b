"""Control messages from the API to the worker that owns a session (``shared.control``).

Media never passes through the API; only small messages do: an SDP offer
(answered with the worker's SDP answer), trickled ICE candidates, an end
request, a drain, a meeting token. Each goes onto the worker's list and the
answer comes back on a list of its own, so the API needs no route to any worker.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from api.errors import ApiError
from shared import control


class WorkerSignals:
    def __init__(self, redis: aioredis.Redis, *, timeout: float):
        self.redis = redis
        self.timeout = timeout

    async def request(self, worker_id: str, message: control.ControlMessage) -> Any:
        """Send one message and wait for the worker's reply; raise ``ApiError`` on failure."""
        reply_key = await control.send(self.redis, worker_id, message)
        got = await control.wait_reply(self.redis, [reply_key], self.timeout)
        if got is None:
            raise ApiError(
                504, "worker_timeout", "the worker running this session did not answer in time"
            )
        _, reply = got
        if not reply.ok:
            message_text = reply.message or "the worker refused the request"
            raise ApiError(reply.status or 502, reply.code or "worker_error", message_text)
        return reply.result
