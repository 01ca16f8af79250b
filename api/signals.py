"""Control messages from the API to the worker that owns a session (``shared.control``).

Media never passes through the API; only small messages do: an SDP offer
(answered with the worker's SDP answer), trickled ICE candidates, an end
request, a drain, a meeting token. Each goes onto the worker's list and the
answer comes back on a list of its own, so the API needs no route to any worker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from api.errors import ApiError, not_ready
from shared import control

MOVE_CHECK_S = 0.25
"""While waiting for a worker's reply, how often to look whether the call left it."""


class WorkerSignals:
    def __init__(self, redis: aioredis.Redis, *, timeout: float):
        self.redis = redis
        self.timeout = timeout

    async def request(
        self,
        worker_id: str,
        message: control.ControlMessage,
        *,
        moved: Callable[[], Awaitable[bool]] | None = None,
    ) -> Any:
        """Send one message and wait for the worker's reply; raise ``ApiError`` on failure.

        ``moved`` says whether the call has left this worker (it died and the call is on
        its way to another): then the wait ends at once with 409 ``not_ready`` instead of
        a ``worker_timeout`` from a worker that will never answer."""
        reply_key = await control.send(self.redis, worker_id, message)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(
                    504, "worker_timeout", "the worker running this session did not answer in time"
                )
            wait = min(left, MOVE_CHECK_S) if moved is not None else left
            got = await control.wait_reply(self.redis, [reply_key], wait)
            if got is not None:
                break
            if moved is not None and await moved():
                raise not_ready("the call is moving to another worker; offer again when ready")
        _, reply = got
        if not reply.ok:
            message_text = reply.message or "the worker refused the request"
            raise ApiError(reply.status or 502, reply.code or "worker_error", message_text)
        return reply.result
