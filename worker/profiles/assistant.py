"""The ``assistant`` profile: OpenAI's Realtime speech-to-speech model, with tools, recorded.

Pipeline: transport in → user context aggregator → Realtime model → transport
out → assistant context aggregator. Transcripts come from the aggregators'
turn events, usage and latency from Pipecat's observers, tool steps from the
tool handlers; all of it becomes session events as it happens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallResultFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.observers.service_metrics_observer import (
    ServiceLatencyRecord,
    ServiceMetricsObserver,
    ServiceUsageRecord,
)
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
from pipecat.processors.aggregators.llm_context import LLMContext, LLMContextMessage
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
    UserTurnMessageAddedMessage,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi import RTVISendTextFrame
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.turns.user_start import ExternalUserTurnStartStrategy
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.protocol import State

from shared.events import EventType
from shared.lifecycle import Reason
from worker import metrics
from worker.assistant_turn_guard import AssistantTurnGuard
from worker.model_sockets import ModelSockets, open_model_socket
from worker.options import AssistantConfig
from worker.profiles import SessionContext
from worker.profiles.echo import SAMPLE_RATE as VAD_SAMPLE_RATE
from worker.tools.calls import register_tools, tools_schema
from worker.vad import SharedSileroVADAnalyzer

REALTIME_SAMPLE_RATE = 24000  # PCM16 24 kHz both ways
# Reconnecting to the model after its socket drops (or a first connect fails for now):
RECONNECT_DELAYS_S = (0.3, 1.5, 3.0)  # before each of at most three attempts
RECONNECT_ATTEMPT_S = 2.0  # to open a socket and have the new session set up (≈10 s in all)
RECONNECT_STABLE_S = 10.0  # a connection that held this long starts a fresh run of attempts
# A tool's final result that nothing has asked the model to answer this long after it was
# sent, while nobody speaks, is answered anyway (see HeldRealtimeService).
ANSWER_BACKSTOP_S = 1.0
CUT_ANSWER_RECORDED_S = 1.5  # at most, for an answer cut short to reach the context
HELD_AUDIO_BYTES = REALTIME_SAMPLE_RATE * 2 * 15  # user audio a new session may need: 15 s
APPEND_BYTES = REALTIME_SAMPLE_RATE * 2  # re-appended in 1 s events
MIN_COMMIT_BYTES = REALTIME_SAMPLE_RATE * 2 // 10  # the API refuses to commit under 100 ms

log = logging.getLogger(__name__)


def _no_events(_type: str, _data: dict[str, Any]) -> None:
    pass


def _refused(error: Exception) -> bool:
    """Whether connecting would fail the same way again: the key, model or URL is wrong."""
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        return 400 <= status < 500 and status not in (408, 429)
    return isinstance(error, InvalidURI)


class WatchedRealtimeService(OpenAIRealtimeLLMService):
    """The Realtime service, made to survive a dropped socket and report every failure.

    Pipecat 1.14 pushes a non-fatal ErrorFrame when connecting fails or the
    model sends an ``error`` event, and then simply stops reading; a socket the
    server closes or an unreadable event ends the read loop in silence, and it
    never reconnects. Here a dropped socket (or a connect that fails for now:
    refused, timed out, HTTP 5xx) is reconnected up to three times with backoff
    (``model.reconnecting`` / ``model.reconnected`` events): meanwhile nothing is
    sent to the dead socket and the caller's audio is kept; the new session gets
    the settings, the conversation so far (as Pipecat gives the first session
    its context), the user audio it has not heard, and a response if one was cut
    short or is owed. Only then, or at once for a refused key, an ``error``
    event or an unreadable one, ``on_failure`` ends the session with a reason.
    (Overrides private hooks of the pinned pipecat-ai 1.14, each guarded in
    tests/unit/test_upstream_hooks.py; tests/unit/test_openai_fake.py and
    tests/integration/test_assistant.py drive each failure through a fake.)
    """

    def __init__(
        self,
        *,
        on_failure: Callable[[Reason, str], None],
        emit: Callable[[str, dict[str, Any]], None] = _no_events,
        sockets: ModelSockets | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._on_failure = on_failure
        self._emit = emit
        self._sockets = sockets  # opened ahead by the worker, taken before connecting
        self._model_error: str | None = None
        self._failed = False  # on_failure was called: the session is ending
        self._closing = False  # the pipeline is stopping: no more reconnects
        self._reconnect_task: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[bool] | None = None  # the new session's readiness
        self._reconnects = 0  # attempts made in the current run of drops
        self._up_since = 0.0  # when the last reconnect succeeded (monotonic)
        # From a drop until the new session is set up, client events are held back:
        self._holding = False
        self._replay_owed = False  # the new session gets the conversation so far,
        self._respond_owed = False  # a response (one was cut short, or asked for),
        self._commit_owed = False  # and the commit of a user turn (local turns)
        # User audio a new session would need: the last committed turn until its
        # transcript arrives, and everything since (the server's input buffer).
        self._committed = b""
        self._uncommitted = bytearray()
        self._answer_said = False  # the current answer has put words in the transcript

    # -- connecting ----------------------------------------------------------------

    # Upstream's, showing why; guarded by tests/unit/test_upstream_hooks.py::test_rt_connect
    async def _connect(self) -> None:
        if self._websocket is not None or self._closing:
            return
        error = await self._open()
        if error is None or self._disconnecting:
            return
        if _refused(error):
            await self._refuse(error)
        else:
            log.warning("could not connect to the voice model: %s", error)
            self._lost(Reason.MODEL_UNAVAILABLE)

    async def _open(self) -> Exception | None:
        """Open the socket (or take one the worker opened ahead: ``worker.model_sockets``) and
        start reading it, as Pipecat's ``_connect`` does; return what went wrong, if
        anything."""
        socket = self._sockets.take(self.base_url) if self._sockets is not None else None
        try:
            if socket is None:
                socket = await open_model_socket(
                    self.base_url, await self._auth_headers(), open_timeout=RECONNECT_ATTEMPT_S
                )
        except Exception as exc:
            self._websocket = None
            return exc
        self._websocket = socket  # type: ignore[assignment]  # pipecat declares it as None
        self._model_error = None
        self._receive_task = self.create_task(self._receive_task_handler())  # type: ignore[assignment]  # pipecat declares it as None
        return None

    async def _refuse(self, error: Exception) -> None:
        await self.push_error(error_msg=f"Error connecting: {error}", exception=error)
        status = error.response.status_code if isinstance(error, InvalidStatus) else None
        self._fail(
            Reason.MODEL_UNAVAILABLE,
            f"the voice model refused the connection (HTTP {status})"
            if status
            else "the voice model could not be reached",
        )

    def _fail(self, reason: Reason, message: str) -> None:
        if self._failed or self._closing:
            return
        self._failed = True
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(False)
        self._on_failure(reason, message)

    # Keeps what the model said; guarded by tests/unit/test_upstream_hooks.py::test_rt_error
    async def _handle_evt_error(self, evt: Any) -> None:
        self._model_error = getattr(evt.error, "message", None) or "unknown error"
        await super()._handle_evt_error(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_error is unannotated

    # A drop ends it in silence; guarded by tests/unit/test_upstream_hooks.py::test_rt_receive
    async def _receive_task_handler(self) -> None:
        try:
            await super()._receive_task_handler()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._receive_task_handler is unannotated
        except ConnectionClosed:
            pass  # handled below, like a clean close
        except Exception as exc:  # unparseable or unexpected event
            self._fail(
                Reason.MODEL_PROTOCOL_ERROR, f"the voice model sent something unreadable: {exc}"
            )
            return
        if self._disconnecting:
            return
        if self._model_error is not None:
            self._fail(Reason.MODEL_ERROR, f"the voice model reported: {self._model_error}")
        else:
            self._lost(Reason.MODEL_DISCONNECTED)

    # -- reconnecting --------------------------------------------------------------

    def _lost(self, reason: Reason) -> None:
        """The model's socket is gone, or could not be opened: reconnect."""
        if self._failed or self._closing or self._disconnecting:
            return
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(False)  # a new socket went before its session was set up
            return
        if self._reconnect_task is not None and not self._reconnect_task.done():
            return  # between attempts: the next one replaces this socket anyway
        # At once: no audio frame may reach the dead socket (each would push an ErrorFrame),
        # and a response asked for now waits for the new session.
        self._holding = True
        self._api_session_ready = False
        if not self._llm_needs_conversation_setup:  # the lost session had the conversation
            self._replay_owed = True
        self._reconnect_task = self.create_task(self._reconnect(reason), "model_reconnect")

    async def _reconnect(self, reason: Reason) -> None:
        dropped = time.monotonic()
        if dropped - self._up_since >= RECONNECT_STABLE_S:
            self._reconnects = 0  # the last connection held: this is a new run of drops
        messages = len(self._context.get_messages()) if self._context is not None else 0
        said = self._answer_said
        cut = await self._abandon_response()
        if cut:
            self._respond_owed = True
        await_cut_answer = cut and said and self._context is not None
        while self._reconnects < len(RECONNECT_DELAYS_S) and not (self._failed or self._closing):
            delay = RECONNECT_DELAYS_S[self._reconnects]
            self._reconnects += 1
            attempt = self._reconnects
            self._emit(EventType.MODEL_RECONNECTING, {"reason": str(reason), "attempt": attempt})
            if await_cut_answer:  # meanwhile, let what was said reach the context
                await_cut_answer = False
                await asyncio.gather(asyncio.sleep(delay), self._cut_answer_recorded(messages))
            else:
                await asyncio.sleep(delay)
            if await self._try_reconnect():
                self._up_since = time.monotonic()
                seconds = round(self._up_since - dropped, 3)
                log.info("reconnected to the voice model (attempt %d, %.2f s)", attempt, seconds)
                self._emit(EventType.MODEL_RECONNECTED, {"attempt": attempt, "seconds": seconds})
                return
        message = (
            "the voice model closed the connection"
            if reason == Reason.MODEL_DISCONNECTED
            else "the voice model could not be reached"
        )
        self._fail(reason, f"{message}, and reconnecting failed")

    async def _try_reconnect(self) -> bool:
        await self._disconnect()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._disconnect is unannotated
        if self._context is not None:
            # The results the context holds are the new session's through the replay, as
            # Pipecat's reset_conversation has it.
            await self._process_completed_function_calls(send_new_results=False)
        self._attempt = self.get_event_loop().create_future()
        try:
            async with asyncio.timeout(RECONNECT_ATTEMPT_S):
                error = await self._open()
                if error is None:
                    return await self._attempt  # set up in _handle_evt_session_updated
        except TimeoutError:
            log.warning("the voice model's new session was not set up in time")
            return False
        finally:
            self._attempt = None
        if _refused(error):
            await self._refuse(error)
        else:
            log.warning("could not reconnect to the voice model: %s", error)
        return False

    async def _abandon_response(self) -> bool:
        """End the answer the drop cut short, as response.done would (the transcript keeps
        what was said), and forget the lost session's response state. Returns whether an
        answer was cut short."""
        cut = bool(self._response_active or self._current_assistant_response)
        if self._current_audio_response is not None:
            await self.push_frame(TTSStoppedFrame())
        if cut:
            await self.push_frame(LLMFullResponseEndFrame())
        # An interruption would truncate this item, which the new session doesn't know:
        # an `error`, which is fatal.
        self._current_audio_response = None
        self._current_assistant_response = None
        self._pending_function_calls = {}
        self._messages_added_manually = {}
        for futures in self._retrieve_conversation_item_futures.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ConnectionError("the voice model's session was lost"))
        self._retrieve_conversation_item_futures = {}
        await self.stop_all_metrics()  # type: ignore[no-untyped-call]  # pipecat: AIService.stop_all_metrics is unannotated
        return cut

    async def _cut_answer_recorded(self, messages: int) -> None:
        """Wait (a little) for the answer cut short to be in the context, so that the new
        session reads what was said: the assistant aggregator records it once the output
        transport has played its audio."""
        assert self._context is not None
        try:
            async with asyncio.timeout(CUT_ANSWER_RECORDED_S):
                # Polled: the assistant aggregator tells the service nothing when it records.
                while len(self._context.get_messages()) <= messages:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("the answer cut short was not recorded in time; reconnecting without it")

    # A new session is set up; guarded by tests/unit/test_upstream_hooks.py::test_rt_session_updated
    async def _handle_evt_session_updated(self, evt: Any) -> None:
        attempt = self._attempt
        if not self._holding or attempt is None or attempt.done():
            if self._continue_owed and not self._holding:
                await self._continue()
            await super()._handle_evt_session_updated(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_session_updated is unannotated
            return
        self._holding = False
        unanswered = False
        if self._replay_owed:
            await self._replay_conversation()
            unanswered = self._turn_unanswered()
        await self._replay_audio()
        # Ready: this runs a response asked for while reconnecting.
        await super()._handle_evt_session_updated(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_session_updated is unannotated
        if (self._respond_owed or unanswered) and not self._response_active:
            await self._create_response()
        self._respond_owed = False
        if not attempt.done():  # not timed out meanwhile
            attempt.set_result(True)

    _continue_owed = False  # a recovered call's conversation waits for the model's session

    async def continue_conversation(self, context: LLMContext) -> None:
        """Carry on a conversation another worker had with the model (a call taken up
        after its worker was lost or drained): the model's session gets the conversation
        so far as soon as it is set up, with no greeting, and answers only a user turn
        (or a tool result) that was left unanswered."""
        self._context = context
        await self._process_completed_function_calls(send_new_results=False)
        self._continue_owed = True
        if self._api_session_ready and not self._holding:
            await self._continue()

    async def _continue(self) -> None:
        self._continue_owed = False
        await self._replay_conversation()
        if self._turn_unanswered():
            await self._create_response()

    async def _replay_conversation(self) -> None:
        """Give the new session the conversation so far, as Pipecat's ``_create_response``
        gives the first session its context."""
        assert self._context is not None
        params = await self.get_llm_adapter().get_llm_invocation_params(self._context)
        for item in params["messages"]:
            event = rt.ConversationItemCreateEvent(item=item)
            self._messages_added_manually[event.item.id] = True
            await self.send_client_event(event)
        self._llm_needs_conversation_setup = False
        self._replay_owed = False

    def _turn_unanswered(self) -> bool:
        """Whether the conversation ends with a user turn or a tool result not yet answered."""
        assert self._context is not None
        for message in reversed(self._context.get_messages()):
            if not isinstance(message, dict) or message.get("role") in ("system", "developer"):
                continue
            if message.get("role") == "tool":
                return message.get("content") != "IN_PROGRESS"
            return message.get("role") == "user"
        return False

    async def _replay_audio(self) -> None:
        """Re-append the user audio the lost session never turned into a transcript, and
        what was said while reconnecting: no word is lost."""
        committed, uncommitted = self._committed, bytes(self._uncommitted)
        self._committed, self._uncommitted = b"", bytearray()
        await self._append_audio(committed)
        if self._commit_owed:  # local turns: a turn ended while reconnecting
            self._commit_owed = False
            if len(self._uncommitted) >= MIN_COMMIT_BYTES:
                await self.send_client_event(rt.InputAudioBufferCommitEvent())
        await self._append_audio(uncommitted)

    async def _append_audio(self, audio: bytes) -> None:
        for start in range(0, len(audio), APPEND_BYTES):
            payload = base64.b64encode(audio[start : start + APPEND_BYTES]).decode()
            await self.send_client_event(rt.InputAudioBufferAppendEvent(audio=payload))

    # -- what a new session would need -----------------------------------------------

    async def send_client_event(self, event: rt.ClientEvent) -> None:
        """Send an event to the model, keeping the user audio a new session would need.

        From a drop until the new session is set up, events are held back instead: audio
        waits in the buffer, a commit or a response asked for is owed, a settings update
        the new session gets anyway, and the rest (tool results, messages) it reads in
        the replayed conversation.
        """
        socket: ClientConnection | None = self._websocket
        if not self._holding and socket is not None and socket.state is not State.OPEN:
            self._lost(Reason.MODEL_DISCONNECTED)  # before the read loop notices
        self._track_audio(event)
        if self._holding and not (
            isinstance(event, rt.SessionUpdateEvent) and self._attempt is not None
        ):
            if isinstance(event, rt.InputAudioBufferCommitEvent):
                self._commit_owed = True
            elif isinstance(event, rt.ResponseCreateEvent):
                self._respond_owed = True
            return
        await super().send_client_event(event)

    def _track_audio(self, event: rt.ClientEvent) -> None:
        if isinstance(event, rt.InputAudioBufferAppendEvent):
            self._uncommitted += base64.b64decode(event.audio)
            del self._uncommitted[:-HELD_AUDIO_BYTES]
        elif isinstance(event, rt.InputAudioBufferCommitEvent):
            self._audio_committed()
        elif isinstance(event, rt.InputAudioBufferClearEvent):
            self._uncommitted.clear()

    def _audio_committed(self) -> None:
        if self._holding:  # owed: the new session commits the lot
            self._committed = (self._committed + self._uncommitted)[-HELD_AUDIO_BYTES:]
        else:
            self._committed = bytes(self._uncommitted)
        self._uncommitted = bytearray()

    # A turn was committed; guarded by tests/unit/test_upstream_hooks.py::test_rt_speech_stopped
    async def _handle_evt_speech_stopped(self, evt: Any) -> None:
        self._audio_committed()
        await super()._handle_evt_speech_stopped(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_speech_stopped is unannotated

    async def handle_evt_input_audio_transcription_completed(self, evt: Any) -> None:
        """The committed turn is in the context now: a new session reads it there."""
        self._committed = b""
        await super().handle_evt_input_audio_transcription_completed(evt)  # type: ignore[no-untyped-call]  # pipecat: unannotated

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        if isinstance(frame, LLMFullResponseStartFrame):
            self._answer_said = False
        elif isinstance(frame, TTSTextFrame):
            self._answer_said = True
        await super().push_frame(frame, direction)

    # -- ending ---------------------------------------------------------------------

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_reconnecting()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_reconnecting()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        await self._stop_reconnecting()
        await super().cleanup()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService.cleanup is unannotated

    async def _stop_reconnecting(self) -> None:
        self._closing = True
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(False)
        task = self._reconnect_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            await self.cancel_task(task)


class HeldRealtimeService(WatchedRealtimeService):
    """The Realtime service, kept from answering while the caller is away, and silent
    about an answer once it is cut short.

    While the session is ``reconnecting`` nobody hears the model: an answer under
    way is cancelled (with server turn detection Pipecat's interruption only
    truncates it; the transcript keeps what was said, as for an interruption),
    and one asked for meanwhile (a tool's result), or started by the server for
    the turn the caller's silence closed, is cancelled too and owed: it is made
    when the caller is back.

    An answer cut short (the caller spoke over it, so the server cancelled it, or
    it was cancelled here) can still send the audio and words the server had in
    flight. Pipecat 1.14 plays and records those: the caller hears a stray word,
    and the transcript keeps it, in the cut answer or in front of the next one.
    They are dropped here, until the next response begins.

    Pipecat's assistant aggregator decides when a tool's result is answered. Under
    load it sometimes never asked: no ``response.create`` after the
    ``function_call_output``, the caller neither away nor speaking (one cause is
    mended by worker/assistant_turn_guard.py; not every such run was explained).
    A final result still waiting for a response ``ANSWER_BACKSTOP_S`` after it was
    sent, with none under way and the server hearing no speech, is answered here,
    with a warning in the log. If the caller is speaking, the server's answer to
    their turn takes the result in.

    (Overrides ``_create_response``, ``_handle_evt_response_created``,
    ``_handle_evt_speech_started``, ``_handle_evt_speech_stopped``,
    ``_handle_interruption``, ``_handle_function_call_result`` and the three delta
    handlers of the pinned pipecat-ai 1.14, guarded in
    tests/unit/test_upstream_hooks.py::test_rt_response_hold.)
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._client_away = False
        self._answer_owed = False
        self._response_id: str | None = None  # the latest response, from response.created
        self._cut_short: str | None = None  # a cancelled response whose deltas are dropped
        self._server_hears_speech = False  # between speech_started and speech_stopped
        self._backstop: asyncio.Task[None] | None = None

    def _cut_response(self) -> None:
        if self._response_active:
            self._cut_short = self._response_id

    async def client_lost(self) -> None:
        self._client_away = True
        if self._response_active:
            self._cut_response()
            await self.send_client_event(rt.ResponseCancelEvent())

    async def client_back(self) -> None:
        self._client_away = False
        if self._answer_owed:
            self._answer_owed = False
            await self._create_response()

    async def _create_response(self) -> None:
        if self._client_away:
            self._answer_owed = True
            return
        await super()._create_response()

    async def _handle_evt_response_created(self, evt: Any) -> None:
        # The server finishes one response before it starts the next: nothing of an
        # earlier one can follow this.
        self._response_id, self._cut_short = evt.response.id, None
        await super()._handle_evt_response_created(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_response_created is unannotated
        if self._client_away:
            self._answer_owed = True
            self._cut_response()
            await self.send_client_event(rt.ResponseCancelEvent())

    async def _handle_evt_speech_started(self, evt: Any) -> None:
        # Server turn detection cancels the response under way (interrupt_response,
        # left at the API's default).
        self._cut_response()
        self._server_hears_speech = True
        await super()._handle_evt_speech_started(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_speech_started is unannotated

    async def _handle_evt_speech_stopped(self, evt: Any) -> None:
        self._server_hears_speech = False
        await super()._handle_evt_speech_stopped(evt)

    async def _handle_function_call_result(self, frame: FunctionCallResultFrame) -> None:
        await super()._handle_function_call_result(frame)
        final = frame.properties is None or frame.properties.is_final
        if final and (self._backstop is None or self._backstop.done()):
            self._backstop = self.create_task(self._answer_if_unasked(), "answer_backstop")

    async def _answer_if_unasked(self) -> None:
        await asyncio.sleep(ANSWER_BACKSTOP_S)
        if (
            self._results_awaiting_response
            and not self._response_active
            and not self._client_away
            and not self._server_hears_speech
        ):
            log.warning(
                "a tool's result was unanswered for %.1f s: asking the model", ANSWER_BACKSTOP_S
            )
            await self._create_response()

    async def cleanup(self) -> None:
        if self._backstop is not None and not self._backstop.done():
            await self.cancel_task(self._backstop)
        await super().cleanup()

    async def _handle_interruption(self) -> None:
        if self._is_turn_detection_disabled():  # local turns: Pipecat cancels it here
            self._cut_response()
        await super()._handle_interruption()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_interruption is unannotated

    async def _handle_evt_audio_delta(self, evt: Any) -> None:
        if evt.response_id != self._cut_short:
            await super()._handle_evt_audio_delta(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_audio_delta is unannotated

    async def _handle_evt_audio_transcript_delta(self, evt: Any) -> None:
        if evt.response_id != self._cut_short:
            await super()._handle_evt_audio_transcript_delta(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_audio_transcript_delta is unannotated

    async def _handle_evt_text_delta(self, evt: Any) -> None:
        if evt.response_id != self._cut_short:
            await super()._handle_evt_text_delta(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_text_delta is unannotated

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, RTVISendTextFrame):
            await self.typed(frame.text)
        await super().process_frame(frame, direction)

    async def typed(self, text: str) -> None:
        """Words the caller typed (RTVI ``send-text``): the user's message in the model's
        conversation, answered as a spoken turn is, and a line of the transcript.

        Pipecat 1.14 sends an appended message as a ``system`` item (and its user
        aggregator keeps the append from reaching this service at all), so the item is
        made here; the aggregator has the message in the context, which a new model
        session replays. (Uses ``_send_message_item``, guarded in
        tests/unit/test_upstream_hooks.py::test_rt_typed_text.)
        """
        text = text.strip()
        if not text:
            return
        self._emit(
            EventType.USER_TRANSCRIPT,
            {"text": text, "typed": True, "started": datetime.now(UTC).isoformat()},
        )
        if not self._api_session_ready or self._llm_needs_conversation_setup:
            return  # the session's setup sends the context, which has it
        await self._send_message_item(text, role="user")
        await self._create_response()


def _session_properties(config: AssistantConfig, overrides: dict[str, Any]) -> Any:
    turns = overrides.get("turn_detection") or config.turn_detection
    noise = overrides.get("noise_reduction") or config.noise_reduction
    if turns == "local":
        turn_detection: Any = False  # the worker's VAD decides; the service commits turns
    elif turns == "server_vad":
        turn_detection = rt.TurnDetection()
    else:
        turn_detection = rt.SemanticTurnDetection()
    return rt.SessionProperties(
        instructions=config.instructions,
        audio=rt.AudioConfiguration(
            input=rt.AudioInput(
                transcription=rt.InputAudioTranscription(model=config.transcription_model),
                noise_reduction=None if noise == "off" else rt.InputAudioNoiseReduction(type=noise),
                turn_detection=turn_detection,
            ),
            output=rt.AudioOutput(voice=overrides.get("voice") or config.voice),
        ),
        tools=tools_schema(config.tools),
    )


def _history(meta: dict[str, str]) -> list[LLMContextMessage]:
    """Earlier transcript of a resumed conversation, as chat messages (set by the API)."""
    raw = meta.get("history")
    if not raw:
        return []
    messages: list[LLMContextMessage] = []
    for m in json.loads(raw):
        if not m.get("content"):
            continue
        if m.get("role") == "user":
            messages.append({"role": "user", "content": m["content"]})
        elif m.get("role") == "assistant":
            messages.append({"role": "assistant", "content": m["content"]})
    return messages


class AssistantProfile:
    name = "assistant"
    warmable = False  # its model connection, instructions and history are the session's
    audio_in_sample_rate = REALTIME_SAMPLE_RATE
    audio_out_sample_rate = REALTIME_SAMPLE_RATE

    def __init__(self, context: SessionContext):
        self.context = context
        self.config = context.options.assistant
        self.overrides: dict[str, Any] = json.loads(context.meta.get("options") or "{}")
        self.local_turns = (self.overrides.get("turn_detection") or self.config.turn_detection) == (
            "local"
        )
        if self.local_turns:
            self.audio_in_sample_rate = VAD_SAMPLE_RATE  # Silero runs at 16 kHz
        self._llm: HeldRealtimeService | None = None
        self._aggregators: LLMContextAggregatorPair | None = None
        self._vad: SharedSileroVADAnalyzer | None = None

    @staticmethod
    def preload() -> None:
        SharedSileroVADAnalyzer.preload()  # for local turn detection

    def bind(self, context: SessionContext) -> None:
        raise NotImplementedError("the assistant profile is built for its session")

    async def prepare(self) -> None:
        if not self.config.api_key:
            raise RuntimeError("the assistant profile needs OPENAI_API_KEY")
        emit = self.context.emit
        self._llm = HeldRealtimeService(
            api_key=self.config.api_key,
            base_url=self.config.base_url,
            settings=OpenAIRealtimeLLMService.Settings(
                model=self.config.model,
                session_properties=_session_properties(self.config, self.overrides),
            ),
            on_failure=self.context.end,
            emit=emit,
            sockets=self.context.model_sockets,
        )

        def tool_done(tool: str, outcome: str, seconds: float) -> None:
            metrics.TOOL_SECONDS.labels(tool=tool, outcome=outcome).observe(seconds)

        register_tools(self._llm, self.config.tools, emit, tool_done)
        context = LLMContext(messages=_history(self.context.meta))
        self._aggregators = LLMContextAggregatorPair(
            context, realtime_service_mode=True, user_params=self._user_params()
        )
        if self.local_turns:
            self._vad = SharedSileroVADAnalyzer(sample_rate=VAD_SAMPLE_RATE)

        async def _user_said(_aggregator: Any, message: UserTurnMessageAddedMessage) -> None:
            emit(EventType.USER_TRANSCRIPT, {"text": message.content, "started": message.timestamp})

        async def _assistant_said(_aggregator: Any, message: AssistantTurnStoppedMessage) -> None:
            emit(
                EventType.ASSISTANT_TRANSCRIPT,
                {
                    "text": message.content,
                    "interrupted": message.interrupted,
                    "started": message.timestamp,
                },
            )

        self._aggregators.user().add_event_handler("on_user_turn_message_added", _user_said)
        self._aggregators.assistant().add_event_handler(
            "on_assistant_turn_stopped", _assistant_said
        )

    def _user_params(self) -> LLMUserAggregatorParams | None:
        """With the model's own turn detection (the default), the turns its events announce.

        The Realtime service recommends these itself once the pipeline starts, and they
        replace the aggregator's defaults; but those defaults are built first, and they
        load Pipecat's Smart Turn model (an 8.7 MB ONNX session): ~40 ms of CPU and
        ~10 MB per session start, for nothing (ops/bench/assistant_start.py). Given now,
        nothing is loaded. They are what realtime mode makes of the recommendation (no
        waiting for transcripts). With local turns, the defaults (Silero, then Smart
        Turn) are what decides.
        """
        if self.local_turns:
            return None
        return LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                start=[ExternalUserTurnStartStrategy()],
                stop=[ExternalUserTurnStopStrategy(wait_for_transcript=False)],
            )
        )

    def pipeline(self, input: FrameProcessor, output: FrameProcessor) -> list[FrameProcessor]:
        assert self._llm is not None and self._aggregators is not None, "prepare() first"
        front: list[FrameProcessor] = [input]
        if self._vad is not None:
            # In the caller's task, as the echo profile's (see worker/session.py's gate).
            front.append(VADProcessor(vad_analyzer=self._vad, enable_direct_mode=True))
        return [
            *front,
            self._aggregators.user(),
            self._llm,
            output,
            AssistantTurnGuard(),
            self._aggregators.assistant(),
        ]

    def observers(self) -> list[BaseObserver]:
        emit, pool = self.context.emit, self.context.options.pool
        service_metrics = ServiceMetricsObserver()
        latency = UserBotLatencyObserver()

        async def _usage(_observer: Any, record: ServiceUsageRecord) -> None:
            emit(EventType.METRICS_USAGE, record.model_dump(exclude_none=True, mode="json"))

        async def _service_latency(_observer: Any, record: ServiceLatencyRecord) -> None:
            if record.kind == "ttfb":
                metrics.MODEL_TTFB_SECONDS.labels(pool=pool).observe(record.seconds)
            emit(
                EventType.METRICS_LATENCY,
                {"kind": f"model_{record.kind}", "seconds": round(record.seconds, 4)},
            )

        async def _user_bot(_observer: Any, seconds: float) -> None:
            metrics.USER_BOT_LATENCY_SECONDS.labels(pool=pool).observe(seconds)
            emit(EventType.METRICS_LATENCY, {"kind": "user_bot", "seconds": round(seconds, 4)})

        service_metrics.add_event_handler("on_service_usage", _usage)
        service_metrics.add_event_handler("on_service_latency", _service_latency)
        latency.add_event_handler("on_latency_measured", _user_bot)
        return [service_metrics, latency]

    async def on_client_connected(self, queue: Callable[[Any], Any]) -> None:
        if self.context.resumed and self._llm is not None and self._aggregators is not None:
            # Taken up from another worker: the call goes on where it was, no greeting.
            await self._llm.continue_conversation(self._aggregators.user().context)
            return
        # The first context seeds the model with any earlier transcript and lets the
        # assistant greet the caller.
        await queue(LLMRunFrame())

    async def on_client_lost(self) -> None:
        if self._llm is not None:
            await self._llm.client_lost()

    async def on_client_back(self) -> None:
        # No LLMRunFrame: that would greet the caller again; an answer owed is made.
        if self._llm is not None:
            await self._llm.client_back()
