"""Control messages from the API to the worker that owns a session, through Redis.

Media never passes through the API; only small messages do: an SDP offer
(answered with the worker's SDP answer), trickled ICE candidates, an end
request. Each goes onto the worker's list and the answer comes back on a
list of its own, so the API needs no direct route to any worker.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable
from typing import Any, cast

import redis.asyncio as aioredis

from api.errors import ApiError
from shared import keys

SIGNAL_LIST_TTL_S = 60  # messages to a worker that died are not kept forever


class WorkerSignals:
    def __init__(self, redis: aioredis.Redis, *, timeout: float):
        self.redis = redis
        self.timeout = timeout

    async def request(
        self,
        worker_id: str,
        kind: str,
        *,
        session_id: str = "",
        payload: dict[str, Any] | None = None,
    ) -> Any:
        """Send one message and wait for the worker's reply; raise ``ApiError`` on failure."""
        request_id = secrets.token_hex(12)
        message = {"id": request_id, "kind": kind, "session_id": session_id, "payload": payload}
        queue = keys.worker_signals(worker_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(queue, json.dumps(message))
            pipe.expire(queue, SIGNAL_LIST_TTL_S)
            await pipe.execute()
        reply = await cast(
            "Awaitable[list[str] | None]",
            self.redis.blpop([keys.reply(request_id)], timeout=self.timeout),  # type: ignore[arg-type]  # redis-py: timeout typed int; Redis takes float seconds
        )
        if reply is None:
            raise ApiError(
                504, "worker_timeout", "the worker running this session did not answer in time"
            )
        answer = json.loads(reply[1])
        if not answer.get("ok"):
            status = int(answer.get("status", 502))
            message = answer.get("message", "the worker refused the request")
            raise ApiError(status, answer.get("code", "worker_error"), message)
        return answer.get("result")
