"""The ``assistant`` profile: OpenAI's Realtime speech-to-speech model, with tools, recorded.

Pipeline: transport in → user context aggregator → Realtime model → transport
out → assistant context aggregator. Transcripts come from the aggregators'
turn events, usage and latency from Pipecat's observers, tool steps from the
tool handlers; all of it becomes session events as it happens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import LLMRunFrame
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
    UserTurnMessageAddedMessage,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from websockets.exceptions import ConnectionClosed

from shared.events import EventType
from shared.lifecycle import Reason
from worker import metrics
from worker.options import AssistantConfig
from worker.profiles import SessionContext
from worker.profiles.echo import SAMPLE_RATE as VAD_SAMPLE_RATE
from worker.tools.calls import register_tools, tools_schema
from worker.vad import SharedSileroVADAnalyzer

REALTIME_SAMPLE_RATE = 24000  # PCM16 24 kHz both ways


class WatchedRealtimeService(OpenAIRealtimeLLMService):
    """The Realtime service, made to report every way its connection can fail.

    Pipecat 1.14 pushes a non-fatal ErrorFrame when connecting fails or the
    model sends an ``error`` event, and then simply stops reading; a socket the
    server closes or an unreadable event ends the read loop in silence. Any of
    these would leave the caller talking to nobody until the idle timeout, so
    each one calls ``on_failure`` with a reason, and the session ends at once.
    (Overrides private hooks of the pinned pipecat-ai 1.14; tests in
    tests/integration/test_assistant.py drive each failure through a fake.)
    """

    def __init__(self, *, on_failure: Callable[[Reason, str], None], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_failure = on_failure
        self._model_error: str | None = None

    # A failed connect is not fatal; guarded by tests/unit/test_upstream_hooks.py::test_rt_connect
    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._connect is unannotated
        if self._websocket is None and not self._disconnecting:
            self._on_failure(Reason.MODEL_UNAVAILABLE, "the voice model could not be reached")

    # Keeps what the model said; guarded by tests/unit/test_upstream_hooks.py::test_rt_error
    async def _handle_evt_error(self, evt: Any) -> None:
        self._model_error = getattr(evt.error, "message", None) or "unknown error"
        await super()._handle_evt_error(evt)  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._handle_evt_error is unannotated

    # The loop ends in silence; guarded by tests/unit/test_upstream_hooks.py::test_rt_receive
    async def _receive_task_handler(self) -> None:
        try:
            await super()._receive_task_handler()  # type: ignore[no-untyped-call]  # pipecat: OpenAIRealtimeLLMService._receive_task_handler is unannotated
        except ConnectionClosed:
            pass  # handled below, like a clean close
        except Exception as exc:  # unparseable or unexpected event
            self._on_failure(
                Reason.MODEL_PROTOCOL_ERROR, f"the voice model sent something unreadable: {exc}"
            )
            return
        if self._disconnecting:
            return
        if self._model_error is not None:
            self._on_failure(Reason.MODEL_ERROR, f"the voice model reported: {self._model_error}")
        else:
            self._on_failure(Reason.MODEL_DISCONNECTED, "the voice model closed the connection")


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
        self._llm: WatchedRealtimeService | None = None
        self._aggregators: LLMContextAggregatorPair | None = None
        self._vad: SharedSileroVADAnalyzer | None = None

    @staticmethod
    def preload() -> None:
        SharedSileroVADAnalyzer.preload()  # for local turn detection

    async def prepare(self) -> None:
        if not self.config.api_key:
            raise RuntimeError("the assistant profile needs OPENAI_API_KEY")
        emit = self.context.emit
        self._llm = WatchedRealtimeService(
            api_key=self.config.api_key,
            base_url=self.config.base_url,
            settings=OpenAIRealtimeLLMService.Settings(
                model=self.config.model,
                session_properties=_session_properties(self.config, self.overrides),
            ),
            on_failure=self.context.end,
        )

        def tool_done(tool: str, outcome: str, seconds: float) -> None:
            metrics.TOOL_SECONDS.labels(tool=tool, outcome=outcome).observe(seconds)

        register_tools(self._llm, self.config.tools, emit, tool_done)
        context = LLMContext(messages=_history(self.context.meta))
        self._aggregators = LLMContextAggregatorPair(context, realtime_service_mode=True)
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

    def pipeline(self, input: FrameProcessor, output: FrameProcessor) -> list[FrameProcessor]:
        assert self._llm is not None and self._aggregators is not None, "prepare() first"
        front: list[FrameProcessor] = [input]
        if self._vad is not None:
            front.append(VADProcessor(vad_analyzer=self._vad))
        return [
            *front,
            self._aggregators.user(),
            self._llm,
            output,
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
        # The first context seeds the model with any earlier transcript and lets the
        # assistant greet the caller.
        await queue(LLMRunFrame())
