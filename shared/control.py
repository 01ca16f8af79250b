"""Control messages between the API and the worker that owns a session, typed.

A message goes onto the worker's Redis list (``keys.worker_signals``) and the
reply comes back on a list of its own (``keys.reply``), so the API needs no
route to any worker. The wire shape is ``{"id", "kind", "session_id",
"payload"}``, one model per kind below; a reply is ``{"ok", "result"}`` or
``{"ok": false, "code", "message", "status"}``. Both sides validate what they
read: a message that is not one of these is refused, never guessed at.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, RootModel

from shared import keys
from shared.lifecycle import Reason

SIGNAL_LIST_TTL_S = 60
"""Messages to a worker that died are not kept forever."""
REPLY_TTL_S = 30
"""A reply nobody waits for any more lapses."""


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class OfferBody(_Body):
    sdp: str
    type: str = "offer"
    pc_id: str | None = None
    restart_pc: bool | None = None
    request_data: dict[str, Any] | None = None


class IceCandidate(_Body):
    candidate: str = ""
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class IceBody(_Body):
    pc_id: str
    candidates: list[IceCandidate]


class EndBody(_Body):
    reason: Reason = Reason.CLIENT_ENDED


class DrainBody(_Body):
    timeout: float | None = None


class ParticipantBody(_Body):
    user_name: str
    user_id: str


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: secrets.token_hex(12))
    session_id: str = ""


class Offer(_Message):
    """An SDP offer for the session's peer connection; the reply is the worker's answer."""

    kind: Literal["offer"] = "offer"
    payload: OfferBody


class Ice(_Message):
    """Trickled ICE candidates for one peer connection."""

    kind: Literal["ice"] = "ice"
    payload: IceBody


class End(_Message):
    """End the session now (DELETE, a revocation)."""

    kind: Literal["end"] = "end"
    payload: EndBody = EndBody()


class Drain(_Message):
    """Take no new sessions; move or finish the running ones (``timeout``: how long)."""

    kind: Literal["drain"] = "drain"
    payload: DrainBody = DrainBody()


class Participant(_Message):
    """A meeting token for one more person in the session's Daily room."""

    kind: Literal["participant"] = "participant"
    payload: ParticipantBody


ControlMessage = Annotated[Offer | Ice | End | Drain | Participant, Field(discriminator="kind")]


class _AnyMessage(RootModel[ControlMessage]):
    pass


def parse(raw: str | bytes) -> ControlMessage:
    """The message, or ``pydantic.ValidationError`` for anything else."""
    return _AnyMessage.model_validate_json(raw).root


class Reply(BaseModel):
    ok: bool
    result: Any = None
    code: str = ""
    message: str = ""
    status: int = 200

    @classmethod
    def refused(cls, code: str, message: str, status: int) -> Reply:
        return cls(ok=False, code=code, message=message, status=status)


async def send(redis: aioredis.Redis, worker_id: str, message: ControlMessage) -> str:
    """Put the message on the worker's list; returns the key its reply will arrive on."""
    signals = keys.worker_signals(worker_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(signals, message.model_dump_json(exclude_none=True))
        pipe.expire(signals, SIGNAL_LIST_TTL_S)
        await pipe.execute()
    return keys.reply(message.id)


async def answer(redis: aioredis.Redis, message_id: str, reply: Reply) -> None:
    """The worker's side: put the reply where the sender waits for it."""
    key = keys.reply(message_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(key, reply.model_dump_json())
        pipe.expire(key, REPLY_TTL_S)
        await pipe.execute()


async def wait_reply(
    redis: aioredis.Redis, reply_keys: list[str], timeout: float
) -> tuple[str, Reply] | None:
    """The first reply on any of ``reply_keys`` within ``timeout`` seconds (with the key
    it came on), or None."""
    got = await cast(
        "Awaitable[list[str] | None]",
        redis.blpop(reply_keys, timeout=timeout),  # type: ignore[arg-type]  # redis-py: timeout typed int; Redis takes float seconds
    )
    return (got[0], Reply.model_validate(json.loads(got[1]))) if got is not None else None


async def take(redis: aioredis.Redis, worker_id: str, block_s: float) -> str | None:
    """The worker's side: the next raw message on its list, waiting up to ``block_s``."""
    got = await cast(
        "Awaitable[list[str] | None]",
        redis.blpop([keys.worker_signals(worker_id)], timeout=block_s),  # type: ignore[arg-type]  # redis-py: timeout typed int; Redis takes float seconds
    )
    return got[1] if got is not None else None
