"""A protocol-faithful fake of the OpenAI Realtime WebSocket API (GA), as Pipecat 1.14 speaks it.

Point ``OpenAIRealtimeLLMService(base_url=server.base_url, api_key="sk-test")`` at it. The
fake behaves like the hosted model with server-side VAD: it listens to the PCM16 24 kHz
audio the client appends, decides deterministically when the user has finished speaking
(an energy detector, not a model), and answers from a script of :class:`Turn` objects —
with tone/noise audio, transcripts, tool calls and usage, in the event order the real API
uses. :class:`Fault` makes it misbehave in the ways a session watcher must notice.

Server event sequences (``→`` server to client):

* connect: → ``session.created``; each ``session.update`` → ``session.updated`` (whole
  session echoed back, the update deep-merged into it).
* user utterance (server VAD): → ``input_audio_buffer.speech_started`` once 200 ms of
  speech are heard, then after 500 ms of quiet → ``input_audio_buffer.speech_stopped``,
  ``input_audio_buffer.committed``, ``conversation.item.added`` (user message),
  ``conversation.item.done``, and, if the session asks for input transcription,
  ``conversation.item.input_audio_transcription.delta`` + ``.completed``; then the turn's
  response (unless ``turn_detection.create_response`` is false: then it waits for
  ``response.create``).
* audio answer: → ``response.created``, ``response.output_item.added``,
  ``conversation.item.added`` (assistant message), ``response.content_part.added``,
  ``response.output_audio.delta`` (N of them, paced in real time) interleaved with
  ``response.output_audio_transcript.delta`` (one per word), ``response.output_audio.done``,
  ``response.output_audio_transcript.done``, ``response.content_part.done``,
  ``response.output_item.done``, ``conversation.item.done``, ``response.done`` (usage with
  input/output token details).
* tool call: → ``response.created``, ``response.output_item.added`` (function_call),
  ``conversation.item.added`` (function_call, with call_id and name),
  ``response.function_call_arguments.delta`` (two), ``response.function_call_arguments.done``,
  ``response.output_item.done``, ``conversation.item.done``, ``response.done``; the next
  ``response.create`` (after the client's ``function_call_output``) gets the turn's answer.
* manual turns (``turn_detection: null``): the client's ``input_audio_buffer.commit`` ends
  the utterance (same committed/added/transcription events, no VAD events) and its
  ``response.create`` gets the response.
* barge-in: speech heard while answering cancels the answer (``response.output_item.done``
  with status ``incomplete``, ``conversation.item.done``, ``response.done`` with status
  ``cancelled``), as ``interrupt_response`` does; ``response.cancel`` does the same. With
  the ``words_after_barge_in`` fault the answer's next chunk and word still come after
  ``speech_started``, as events the real API has in flight do.
* a user's text message (``conversation.item.create``, role ``user``, ``input_text``), when
  ``typed_answer`` is set: the next ``response.create`` answers it with that (an audio
  answer, as a turn's).
* ``response.create`` with no user turn pending (Pipecat's opening ``LLMRunFrame``): an
  audio answer saying ``greeting``.
* other client events: ``conversation.item.create`` → ``conversation.item.added`` +
  ``.done`` (same item id); ``conversation.item.truncate`` → ``.truncated``;
  ``input_audio_buffer.clear`` → ``.cleared``; ``conversation.item.delete``/``.retrieve``.
  Misuse gets the real API's ``error`` codes (``response_cancel_not_active``,
  ``conversation_already_has_active_response``, ``input_audio_buffer_commit_empty``, ...).

Run standalone for benchmarks: ``python -m harness.doubles.openai_realtime --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import re
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

SAMPLE_RATE = 24000  # PCM16 mono, both directions
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
CHUNK_MS = 60  # one output audio delta per character of the answer
VAD_WINDOW_MS = 20
SPEECH_RMS = 500.0  # int16 RMS above which a window counts as speech (about -36 dBFS)
MIN_SPEECH_MS = 200  # speech needed before an utterance counts
END_SILENCE_MS = 500  # quiet that ends an utterance
MIN_COMMIT_MS = 100  # the real API refuses to commit less than this
PATH = "/v1/realtime"

Event = dict[str, Any]


@dataclass
class Turn:
    """What the fake model does when it hears the user finish speaking."""

    transcript: str = "hello there"  # sent as input transcription of the user's audio
    # (function name, arguments): the model calls a tool first; after the client sends
    # function_call_output and response.create, it answers with `answer`
    tool_call: tuple[str, dict[str, Any]] | None = None
    # assistant transcript; audio = one ~60 ms tone/noise chunk per character
    answer: str = "Hi! How can I help?"


FaultKind = Literal[
    "none",
    "error_on_session_update",  # `error` instead of each session.updated (socket stays open)
    "error_after_turn",  # `error` right after the first user turn's answer (response.done)
    "close_mid_answer",  # socket closed halfway through the connection's first answer audio
    "malformed_event",  # unparseable event right after the connection's first response.created
    "reject_handshake",  # HTTP error instead of the WebSocket upgrade
    "words_after_barge_in",  # a barged-in answer's next chunk and word after speech_started
]


@dataclass
class Fault:
    """How to misbehave, for failure tests."""

    kind: FaultKind = "none"
    status: int = 401  # HTTP status for reject_handshake (401 = key rejected)
    close_code: int = 1011  # close code for close_mid_answer (1000 would be a clean close)
    # Strike only the first N connections (reject_handshake: the first N handshakes), so a
    # client that reconnects finds the model well again; None strikes every one.
    connections: int | None = None

    def strikes(self, kind: FaultKind, number: int) -> bool:
        """Whether this fault is ``kind`` and strikes the server's ``number``-th connection
        (1-based; for reject_handshake, the ``number``-th handshake)."""
        return self.kind == kind and (self.connections is None or number <= self.connections)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def answer_audio(text: str) -> list[bytes]:
    """The answer's audio: one 60 ms chunk per character, a tone plus a little noise.

    Deterministic (same text, same bytes) and never silent, so tests can assert that
    real audio came out.
    """
    n = SAMPLE_RATE * CHUNK_MS // 1000
    rng = np.random.default_rng(len(text))
    chunks: list[bytes] = []
    for i, ch in enumerate(text or " "):
        t = (np.arange(n) + i * n) / SAMPLE_RATE
        freq = 180.0 + (ord(ch) % 24) * 15.0  # vary the pitch a little per character
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.03 * rng.standard_normal(n)
        chunks.append((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
    return chunks


class EnergyVAD:
    """A deterministic stand-in for server VAD, clocked by the audio itself, not wall time.

    Speech is a 20 ms window whose RMS exceeds ``SPEECH_RMS``; an utterance starts once
    200 ms of speech have been heard and ends after 500 ms of quiet.
    """

    def __init__(self) -> None:
        self._pending = b""
        self.now_ms = 0  # audio time since the connection opened
        self.reset()

    def reset(self) -> None:
        self._pending = b""
        self.speaking = False
        self._start_ms: int | None = None
        self._speech_ms = 0
        self._quiet_ms = 0

    def feed(self, pcm: bytes) -> list[tuple[Literal["started", "stopped"], int]]:
        """Take more audio; return ``("started", start_ms)`` / ``("stopped", end_ms)``."""
        out: list[tuple[Literal["started", "stopped"], int]] = []
        data = self._pending + pcm
        size = VAD_WINDOW_MS * BYTES_PER_MS
        usable = len(data) - len(data) % size
        self._pending = data[usable:]
        for offset in range(0, usable, size):
            window = np.frombuffer(data[offset : offset + size], dtype="<i2").astype(np.float64)
            loud = math.sqrt(float(np.mean(window * window))) > SPEECH_RMS
            if loud:
                if self._start_ms is None:
                    self._start_ms = self.now_ms
                self._speech_ms += VAD_WINDOW_MS
                self._quiet_ms = 0
            elif self._start_ms is not None:
                self._quiet_ms += VAD_WINDOW_MS
            self.now_ms += VAD_WINDOW_MS
            if not self.speaking and self._start_ms is not None:
                if self._speech_ms >= MIN_SPEECH_MS:
                    self.speaking = True
                    out.append(("started", self._start_ms))
                elif self._quiet_ms >= END_SILENCE_MS:  # a blip, not an utterance
                    self._start_ms, self._speech_ms, self._quiet_ms = None, 0, 0
            elif self.speaking and self._quiet_ms >= END_SILENCE_MS:
                out.append(("stopped", self.now_ms))
                self.speaking = False
                self._start_ms, self._speech_ms, self._quiet_ms = None, 0, 0
        return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a session.update into the session: given fields replace, nested objects
    merge, an explicit null clears (e.g. ``turn_detection: null`` turns server VAD off)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _default_session(model: str) -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": _id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": pcm,
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": pcm, "voice": "alloy", "speed": 1.0},
        },
    }


def _usage(
    *, input_text: int, input_audio_ms: int, output_text: int, output_audio_ms: int
) -> dict[str, Any]:
    # Rates like the real model's: input audio ~1 token/100 ms, output audio ~1 token/50 ms.
    in_audio = math.ceil(input_audio_ms / 100)
    out_audio = math.ceil(output_audio_ms / 50)
    inputs, outputs = input_text + in_audio, output_text + out_audio
    return {
        "total_tokens": inputs + outputs,
        "input_tokens": inputs,
        "output_tokens": outputs,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": out_audio},
    }


class _Connection:
    """One client session: its config, input buffer, VAD and the response being streamed."""

    def __init__(
        self, server: FakeRealtimeServer, ws: ServerConnection, model: str, number: int
    ) -> None:
        self.server = server
        self.ws = ws
        self.number = number  # the server's n-th accepted connection, from 1
        self.session = _default_session(model)
        self.conversation_id = _id("conv")
        self.vad = EnergyVAD()
        self.turn_index = 0
        self.buffer_ms = 0.0  # audio appended since the last commit/clear
        self.user_audio_ms = 0  # committed user audio, for usage
        self.last_item_id: str | None = None
        self.items: dict[str, Event] = {}
        self.speech_item_id: str | None = None
        self.pending_turn: Turn | None = None  # committed, waiting for response.create
        self.typed_pending: str | None = None  # a user's text message, waiting likewise
        self.queued_turn: Turn | None = None  # heard while answering, answered next
        self.pending_answer: Turn | None = None  # tool called, waiting for its output
        self.response_task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.cancelled = asyncio.Event()
        # close_mid_answer and malformed_event strike the connection's first response (a
        # greeting, if the client asks for one); error_after_turn the first user turn's.
        self.responses = 0
        self.answers = 0
        self.turn_answers = 0

    # -- plumbing ---------------------------------------------------------------------

    async def send(self, type_: str, **fields: Any) -> None:
        event = {"event_id": _id("event"), "type": type_, **fields}
        await self.ws.send(json.dumps(event))
        if self.server.record:
            if type_ == "response.output_audio.delta":  # keep the size, not the audio
                event = event | {"delta": len(fields["delta"]) * 3 // 4}
            self.server.sent.append(event)
            if type_ != "response.output_audio.delta":
                self.server.exchange.append(("<", type_))

    async def error(
        self,
        message: str,
        *,
        code: str | None,
        type_: str = "invalid_request_error",
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        error = {"type": type_, "code": code, "message": message, "param": param}
        await self.send("error", error=error | {"event_id": event_id})

    def _audio_input(self) -> dict[str, Any]:
        return (self.session.get("audio") or {}).get("input") or {}

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self._audio_input().get("turn_detection")
        return td if isinstance(td, dict) else None  # null: manual turns

    def _transcribes(self) -> bool:
        return bool(self._audio_input().get("transcription"))

    def _text_only(self, response: dict[str, Any] | None = None) -> bool:
        modalities = (response or {}).get("output_modalities") or self.session.get(
            "output_modalities"
        )
        return modalities == ["text"]

    def _next_turn(self) -> Turn:
        turns = self.server.turns
        turn = turns[min(self.turn_index, len(turns) - 1)]  # after the last, repeat the last
        self.turn_index += 1
        return turn

    @property
    def responding(self) -> bool:
        return self.response_task is not None and not self.response_task.done()

    async def _add_item(self, item: Event) -> None:
        previous, self.last_item_id = self.last_item_id, item["id"]
        self.items[item["id"]] = item
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)

    # -- client events ----------------------------------------------------------------

    async def run(self) -> None:
        await self.send("session.created", session=self.session)
        try:
            async for raw in self.ws:
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    await self.error("The server could not parse the event.", code="invalid_json")
                    continue
                await self.server._record(event)
                if event["type"] == "session.update":
                    self.server.update_connections.append(self.number)
                await self.handle(event)
        except ConnectionClosed:
            pass
        finally:
            if self.response_task:
                self.response_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await self.response_task

    async def handle(self, event: Event) -> None:
        kind, event_id = event["type"], event.get("event_id")
        if kind == "input_audio_buffer.append":
            await self._append(base64.b64decode(event.get("audio", "")))
        elif kind == "session.update":
            if self.server.fault.strikes("error_on_session_update", self.number):
                await self.error(
                    "Invalid value: 'bogus'. Supported values are: 'near_field' and 'far_field'.",
                    code="invalid_value",
                    param="session.audio.input.noise_reduction.type",
                    event_id=event_id,
                )
                return
            self.session = _merge(self.session, event.get("session") or {})
            await self.send("session.updated", session=self.session)
        elif kind == "input_audio_buffer.commit":
            if self.buffer_ms < MIN_COMMIT_MS:
                await self.error(
                    "Error committing input audio buffer: buffer too small. Expected at "
                    f"least {MIN_COMMIT_MS}ms of audio, but buffer only has "
                    f"{self.buffer_ms:.2f}ms of audio.",
                    code="input_audio_buffer_commit_empty",
                    event_id=event_id,
                )
                return
            self.vad.reset()
            self.pending_turn = await self._commit(self.speech_item_id or _id("item"))
        elif kind == "input_audio_buffer.clear":
            self.buffer_ms = 0
            self.vad.reset()
            await self.send("input_audio_buffer.cleared")
        elif kind == "conversation.item.create":
            sent = event.get("item") or {}
            if sent.get("type") == "function_call_output":
                self.server.function_outputs.append(sent)
            item = {"id": _id("item")} | sent | {"object": "realtime.item", "status": "completed"}
            await self._add_item(item)
            typed = _typed_text(sent) if self.server.typed_answer is not None else None
            if typed is not None:  # a user's text message: the next response answers it
                self.typed_pending = typed
        elif kind == "conversation.item.truncate":
            await self.send(
                "conversation.item.truncated",
                item_id=event.get("item_id"),
                content_index=event.get("content_index", 0),
                audio_end_ms=event.get("audio_end_ms", 0),
            )
        elif kind == "conversation.item.delete":
            self.items.pop(event.get("item_id", ""), None)
            await self.send("conversation.item.deleted", item_id=event.get("item_id"))
        elif kind == "conversation.item.retrieve":
            stored = self.items.get(event.get("item_id", ""))
            if stored is None:
                await self.error(
                    f"Item with item_id not found: {event.get('item_id')}",
                    code="item_retrieve_invalid_item_id",
                    event_id=event_id,
                )
            else:
                await self.send("conversation.item.retrieved", item=stored)
        elif kind == "response.create":
            if self.responding:
                await self.error(
                    "Conversation already has an active response in progress.",
                    code="conversation_already_has_active_response",
                    event_id=event_id,
                )
                return
            text_only = self._text_only(event.get("response"))
            if self.pending_answer is not None:  # the tool's output is in: answer now
                turn, self.pending_answer = self.pending_answer, None
                self._start(self._answer(turn.answer, text_only=text_only, turn=True))
            elif self.pending_turn is not None:
                turn, self.pending_turn = self.pending_turn, None
                self._start_turn(turn, text_only=text_only)
            elif self.typed_pending is not None and self.server.typed_answer is not None:
                typed, self.typed_pending = self.typed_pending, None
                self.server.typed.append(typed)
                answer = self.server.typed_answer.format(text=typed)
                self._start(self._answer(answer, text_only=text_only, turn=True))
            else:  # nothing said yet (e.g. the greeting Pipecat asks for at the start)
                self._start(self._answer(self.server.greeting, text_only=text_only, turn=False))
        elif kind == "response.cancel":
            if not self.responding:
                await self.error(
                    "Cancellation failed: no active response found",
                    code="response_cancel_not_active",
                    event_id=event_id,
                )
                return
            self._cancel("client_cancelled")
        else:
            await self.error(
                f"Invalid value: '{kind}'.", code="invalid_value", param="type", event_id=event_id
            )

    # -- user audio ---------------------------------------------------------------------

    async def _append(self, pcm: bytes) -> None:
        self.buffer_ms += len(pcm) / BYTES_PER_MS
        td = self._turn_detection()
        if td is None:  # manual turns: the client commits
            return
        for what, at_ms in self.vad.feed(pcm):
            if what == "started":
                self.speech_item_id = _id("item")
                padding = int(td.get("prefix_padding_ms") or 300)
                await self.send(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=max(0, at_ms - padding),
                    item_id=self.speech_item_id,
                )
                if self.responding and td.get("interrupt_response", True) is not False:
                    self._cancel("turn_detected")
            else:
                item_id = self.speech_item_id or _id("item")
                await self.send(
                    "input_audio_buffer.speech_stopped", audio_end_ms=at_ms, item_id=item_id
                )
                turn = await self._commit(item_id)
                if td.get("create_response", True) is False:
                    self.pending_turn = turn
                elif self.responding:  # still answering (or winding down a cancel)
                    self.queued_turn = turn
                else:
                    self._start_turn(turn, text_only=self._text_only())

    async def _commit(self, item_id: str) -> Turn:
        """Close the user's utterance: commit the buffer into a user item, transcribe it."""
        turn = self._next_turn()
        self.user_audio_ms += int(self.buffer_ms)
        self.buffer_ms = 0
        self.speech_item_id = None
        await self.send(
            "input_audio_buffer.committed", previous_item_id=self.last_item_id, item_id=item_id
        )
        await self._add_item(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            }
        )
        if self._transcribes():
            await self.send(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=turn.transcript,
            )
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=turn.transcript,
                usage={
                    "type": "tokens",
                    "total_tokens": 10,
                    "input_tokens": 8,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": 8},
                    "output_tokens": 2,
                },
            )
        return turn

    # -- responses ----------------------------------------------------------------------

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self.cancel_reason = None
        self.cancelled.clear()
        self.response_task = asyncio.create_task(self._respond(coro))

    async def _respond(self, coro: Coroutine[Any, Any, None]) -> None:
        await coro
        if self.queued_turn is not None:
            turn, self.queued_turn = self.queued_turn, None
            self._start_turn(turn, text_only=self._text_only())

    def _start_turn(self, turn: Turn, *, text_only: bool) -> None:
        if turn.tool_call is not None:
            self._start(self._tool_call(turn))
        else:
            self._start(self._answer(turn.answer, text_only=text_only, turn=True))

    def _cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self.cancelled.set()

    def _response(self, response_id: str, status: str, **fields: Any) -> Event:
        modalities = self.session.get("output_modalities") or ["audio"]
        output = self.session.get("audio", {}).get("output", {})
        return {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id,
            "output_modalities": modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": output.get("format"), "voice": output.get("voice")}},
            "usage": None,
            "metadata": None,
        } | fields

    def _input_text_tokens(self) -> int:
        return 100 + len(self.session.get("instructions") or "") // 4

    async def _created(self, response_id: str) -> None:
        self.responses += 1
        await self.send("response.created", response=self._response(response_id, "in_progress"))
        if self.server.fault.strikes("malformed_event", self.number) and self.responses == 1:
            # Protocol drift: a known event type whose fields don't match the schema.
            await self.ws.send(json.dumps({"type": "response.output_audio.delta", "delta": 7}))

    async def _tool_call(self, turn: Turn) -> None:
        assert turn.tool_call is not None
        name, arguments = turn.tool_call
        response_id, call_id = _id("resp"), _id("call")
        args = json.dumps(arguments)
        item = {
            "id": _id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        where = {"response_id": response_id, "item_id": item["id"], "output_index": 0}
        await self._created(response_id)
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )
        previous, self.last_item_id = self.last_item_id, item["id"]
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            await self.send(
                "response.function_call_arguments.delta", **where, call_id=call_id, delta=piece
            )
        await self.send(
            "response.function_call_arguments.done",
            **where,
            call_id=call_id,
            name=name,
            arguments=args,
        )
        item = item | {"status": "completed", "arguments": args}
        self.items[item["id"]] = item
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=0, item=item
        )
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        self.pending_answer = turn  # answered once the output and response.create arrive
        usage = _usage(
            input_text=self._input_text_tokens(),
            input_audio_ms=self.user_audio_ms,
            output_text=max(1, len(args) // 4),
            output_audio_ms=0,
        )
        done = self._response(response_id, "completed", output=[item], usage=usage)
        await self.send("response.done", response=done)

    async def _answer(self, text: str, *, text_only: bool, turn: bool) -> None:
        self.answers += 1
        response_id = _id("resp")
        item: Event = {
            "id": _id("item"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": response_id, "item_id": item["id"], "output_index": 0}
        part_type = "output_text" if text_only else "output_audio"
        await self._created(response_id)
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )
        previous, self.last_item_id = self.last_item_id, item["id"]
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send(
            "response.content_part.added", **where, content_index=0, part={"type": part_type}
        )

        chunks = [b""] if text_only else answer_audio(text)
        transcript_delta = (
            "response.output_text.delta" if text_only else "response.output_audio_transcript.delta"
        )
        words = re.findall(r"\S+\s*", text) or [text]
        sent_words, said = 0, ""
        started = time.monotonic()
        for i, chunk in enumerate(chunks):
            if self.cancel_reason is not None:
                if self.cancel_reason == "turn_detected" and self.server.fault.strikes(
                    "words_after_barge_in", self.number
                ):  # what the real API had in flight when it heard the caller
                    audio = None if text_only else chunk
                    await self._late_words(where, audio, words[sent_words:][:1], transcript_delta)
                break
            if not text_only:
                delta = base64.b64encode(chunk).decode()
                await self.send(
                    "response.output_audio.delta", **where, content_index=0, delta=delta
                )
            # Words keep pace with the audio, spread evenly over its chunks.
            due = len(words) if text_only else math.ceil(len(words) * (i + 1) / len(chunks))
            for word in words[sent_words:due]:
                said += word
                await self.send(transcript_delta, **where, content_index=0, delta=word)
            sent_words = due
            if (
                self.server.fault.strikes("close_mid_answer", self.number)
                and self.answers == 1
                and i + 1 >= max(1, len(chunks) // 2)
            ):
                await self.ws.close(code=self.server.fault.close_code, reason="internal error")
                return
            if self.server.pace > 0 and not text_only:
                wake_at = started + (i + 1) * CHUNK_MS / 1000 * self.server.pace
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.cancelled.wait(), timeout=max(0.0, wake_at - time.monotonic())
                    )

        audio_ms = 0 if text_only else len(chunks) * CHUNK_MS
        if self.cancel_reason is not None:
            # Cut short (barge-in or response.cancel): no *.done for the content, the item
            # is incomplete and the response cancelled, as the real API reports it.
            item = item | {
                "status": "incomplete",
                "content": [{"type": part_type, "transcript": said}],
            }
            self.items[item["id"]] = item
            await self.send(
                "response.output_item.done", response_id=response_id, output_index=0, item=item
            )
            await self.send("conversation.item.done", previous_item_id=previous, item=item)
            details = {"type": "cancelled", "reason": self.cancel_reason}
            done = self._response(response_id, "cancelled", status_details=details, output=[item])
            await self.send("response.done", response=done)
            return

        if text_only:
            await self.send("response.output_text.done", **where, content_index=0, text=text)
            part = {"type": "output_text", "text": text}
        else:
            await self.send("response.output_audio.done", **where, content_index=0)
            await self.send(
                "response.output_audio_transcript.done", **where, content_index=0, transcript=text
            )
            part = {"type": "output_audio", "transcript": text}
        await self.send("response.content_part.done", **where, content_index=0, part=part)
        item = item | {"status": "completed", "content": [part]}
        self.items[item["id"]] = item
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=0, item=item
        )
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        usage = _usage(
            input_text=self._input_text_tokens(),
            input_audio_ms=self.user_audio_ms,
            output_text=len(words),
            output_audio_ms=audio_ms,
        )
        done = self._response(response_id, "completed", output=[item], usage=usage)
        await self.send("response.done", response=done)
        if turn:
            self.turn_answers += 1
            if (
                self.server.fault.strikes("error_after_turn", self.number)
                and self.turn_answers == 1
            ):
                await self.error(
                    "The server had an error while processing your request. Sorry about that!",
                    code="server_error",
                    type_="server_error",
                )

    async def _late_words(
        self, where: dict[str, Any], chunk: bytes | None, words: list[str], kind: str
    ) -> None:
        if chunk is not None:
            delta = base64.b64encode(chunk).decode()
            await self.send("response.output_audio.delta", **where, content_index=0, delta=delta)
        for word in words:
            await self.send(kind, **where, content_index=0, delta=word)


def _typed_text(item: dict[str, Any]) -> str | None:
    """The text of a user's text message item (``conversation.item.create``), else None."""
    if item.get("type") != "message" or item.get("role") != "user":
        return None
    texts = [c.get("text", "") for c in item.get("content") or [] if c.get("type") == "input_text"]
    return " ".join(texts) if texts else None


class FakeRealtimeServer:
    """A local stand-in for ``wss://api.openai.com/v1/realtime``; use with ``async with``.

    ``received`` holds every client event in order, except that a run of consecutive
    ``input_audio_buffer.append`` events is kept as one summary entry
    ``{"type": "input_audio_buffer.append", "count": n, "bytes": total}`` (updated in
    place) so memory stays bounded; ``audio_appends``/``audio_bytes`` count them all.
    ``connection_starts`` says where each accepted connection's events begin in it.
    ``session_updates`` holds the ``session`` object of each ``session.update``,
    ``function_outputs`` each ``function_call_output`` item the client created. ``sent``
    holds every server event sent (``response.output_audio.delta`` with ``delta`` replaced
    by the number of audio bytes).
    """

    def __init__(
        self,
        turns: list[Turn] | None = None,
        fault: Fault | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        greeting: str = "Hello! How can I help you today?",
        typed_answer: str | None = None,
        pace: float = 1.0,
        record: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``greeting`` answers a ``response.create`` with no user turn pending (Pipecat
        asks for one at the start when the pipeline runs the LLM); ``pace`` scales the
        real-time pacing of output audio (0 = as fast as possible); ``record=False`` keeps
        ``received`` empty, for long benchmark runs; ``tls``: serve ``wss://`` with it, a
        handshake like a real provider's."""
        self.turns = list(turns) if turns else [Turn()]
        self.fault = fault or Fault()
        self.host, self.port = host, port
        self.greeting = greeting
        # Answers a user's text message ({text}: its text); None: such a message is taken
        # in like any item (Pipecat also sends a replayed conversation as one).
        self.typed_answer = typed_answer
        self.typed: list[str] = []  # the user text messages answered, in order
        self.pace = pace
        self.record = record
        self.tls = tls
        self.received: list[Event] = []
        self.sent: list[Event] = []  # server events, audio deltas as their decoded size
        # Both ways in the order they happened, but for the audio: ">" from the client.
        self.exchange: list[tuple[str, str]] = []
        self.session_updates: list[dict[str, Any]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.connections = 0  # accepted WebSocket sessions
        self.handshakes = 0  # upgrade requests with the right path and an Authorization header
        self.rejected = 0  # refused handshakes (fault, missing Authorization, wrong path)
        self.deflate_offers = 0  # handshakes whose client asked to compress (permessage-deflate)
        # Where each accepted connection's client events begin in `received`.
        self.connection_starts: list[int] = []
        self.models: list[str] = []  # the ?model= of each accepted connection
        self.update_connections: list[int] = []  # the connection of each session.update
        self.audio_appends = 0
        self.audio_bytes = 0
        self._server: Server | None = None
        self._live: set[_Connection] = set()
        self._changed = asyncio.Condition()

    @property
    def base_url(self) -> str:
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{PATH}"

    @property
    def open_connections(self) -> int:
        return len(self._live)

    async def start(self) -> None:
        # A short close_timeout: a client that stopped reading (Pipecat after an `error`
        # event) never answers a close, and stop() shouldn't wait websockets' default 10 s.
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            process_request=self._check_request,
            close_timeout=1.0,
            ssl=self.tls,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # closes live sessions with 1001 (going away)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10) -> Event:
        """Wait until some received client event matches ``predicate``; return it."""

        def match() -> Event | None:
            return next((e for e in self.received if predicate(e)), None)

        async with self._changed:
            try:
                found = await asyncio.wait_for(self._changed.wait_for(match), timeout)
            except TimeoutError:
                seen = [e["type"] for e in self.received]
                raise TimeoutError(
                    f"no matching client event within {timeout}s; got {seen}"
                ) from None
        assert found is not None
        return found

    def count(self, type_: str) -> int:
        """How many client events of a type arrived (appends: every single one)."""
        if type_ == "input_audio_buffer.append":
            return self.audio_appends
        return sum(1 for e in self.received if e["type"] == type_)

    # -- internals ----------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if "permessage-deflate" in request.headers.get("Sec-WebSocket-Extensions", ""):
            self.deflate_offers += 1
        refusal: tuple[int, str, str] | None = None
        if url.path != PATH:
            refusal = (404, "invalid_request_error", f"Unknown path {url.path}")
        elif not request.headers.get("Authorization", "").startswith("Bearer "):
            refusal = (401, "missing_api_key", "You didn't provide an API key.")
        else:
            self.handshakes += 1
            if self.fault.strikes("reject_handshake", self.handshakes):
                code = "invalid_api_key" if self.fault.status == 401 else "server_error"
                refusal = (self.fault.status, code, f"Rejected with HTTP {self.fault.status}.")
        if refusal is None:
            return None
        self.rejected += 1
        status, code, message = refusal
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        response = connection.respond(HTTPStatus(status), json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        model = parse_qs(urlsplit(ws.request.path).query).get("model", [""])[0]
        self.connections += 1
        self.models.append(model)
        self.connection_starts.append(len(self.received))
        conn = _Connection(self, ws, model, self.connections)
        self._live.add(conn)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)

    async def _record(self, event: Event) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            size = len(event.get("audio", "")) * 3 // 4  # decoded size of the base64
            self.audio_appends += 1
            self.audio_bytes += size
            if not self.record:
                return
            last = self.received[-1] if self.received else None
            if last is not None and last["type"] == kind:
                last["count"] += 1
                last["bytes"] += size
            else:
                self.received.append({"type": kind, "count": 1, "bytes": size})
        else:
            if kind == "session.update":
                self.session_updates.append(event.get("session") or {})
            if self.record:
                self.received.append(event)
                self.exchange.append((">", kind))
        async with self._changed:
            self._changed.notify_all()


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--transcript", default=Turn.transcript)
    parser.add_argument("--answer", default=Turn.answer)
    parser.add_argument("--pace", type=float, default=1.0, help="1 = real time, 0 = no pacing")
    parser.add_argument("--tls-cert", help="serve wss:// with this certificate (PEM) ...")
    parser.add_argument("--tls-key", help="... and its key (PEM)")
    args = parser.parse_args()
    turn = Turn(transcript=args.transcript, answer=args.answer)
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    server = FakeRealtimeServer(
        [turn], host=args.host, port=args.port, pace=args.pace, record=False, tls=tls
    )
    async with server:
        print(f"fake OpenAI Realtime listening on {server.base_url}", flush=True)
        await asyncio.Future()  # until interrupted


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
