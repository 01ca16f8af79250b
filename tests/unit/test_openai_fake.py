"""The real Pipecat 1.14 OpenAI Realtime service, driven against the fake Realtime API.

These pin down the fake's protocol (the service must understand everything it sends)
and document how the service reports each way the API can fail, which is what the
session watcher builds on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    LLMRunFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
    UserTurnMessageAddedMessage,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.errors import ErrorCategory
from pipecat.workers.runner import WorkerRunner
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from harness.doubles.openai_realtime import FakeRealtimeServer, Fault, Turn
from harness.waiting import eventually
from worker.profiles.assistant import (
    ANSWER_BACKSTOP_S,
    HeldRealtimeService,
    WatchedRealtimeService,
)

RATE = 24000  # the service's native rate: no resampling on the way in
FRAME_MS = 20
GREETING = "Hi."  # short, to keep the tests quick


def speech(tone_s: float = 0.6, quiet_s: float = 0.7) -> list[InputAudioRawFrame]:
    """A 300 Hz tone (the "utterance") then silence, as 20 ms transport-sized frames."""
    n = RATE * FRAME_MS // 1000
    frames = []
    for i in range(round((tone_s + quiet_s) * 1000 / FRAME_MS)):
        t = (np.arange(n) + i * n) / RATE
        loud = i * FRAME_MS < tone_s * 1000
        wave = 0.3 * np.sin(2 * np.pi * 300 * t) if loud else np.zeros(n)
        pcm = (wave * 32767).astype("<i2").tobytes()
        frames.append(InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1))
    return frames


class Collector(FrameProcessor):
    """Keeps every frame that reaches the end of the service's output."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]


@dataclass
class Session:
    server: FakeRealtimeServer
    llm: OpenAIRealtimeLLMService
    worker: PipelineWorker
    out: Collector
    errors: list[ErrorFrame] = field(default_factory=list)
    user_said: list[str] = field(default_factory=list)
    assistant_said: list[str] = field(default_factory=list)

    async def speak(self, frames: list[InputAudioRawFrame] | None = None) -> None:
        """Feed audio in real time, as a transport would: the service's turn handling
        races the model's events if a whole utterance lands at once."""
        start = time.monotonic()
        for i, frame in enumerate(frames if frames is not None else speech()):
            await self.worker.queue_frame(frame)
            # Pacing, not waiting: one 20 ms frame every 20 ms of wall time.
            await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_MS / 1000 - time.monotonic()))

    async def barge_in(self) -> None:
        """Say the first turn, then speak again 1.2 s into its answer; wait for the answer
        to that. (Sooner than 1 s, while the user aggregator still defers writing the
        first transcript, Pipecat 1.14 merges both user utterances into one context
        message.)"""
        await self.speak()
        await eventually(
            lambda: len(self.out.of(TTSAudioRawFrame)) >= len(GREETING) + 20,
            timeout=8,
            what="1.2 s of the answer's audio",
        )
        await self.speak(speech(0.4, 0.6))
        await eventually(lambda: len(self.assistant_said) >= 3, timeout=8, what="the answer")


def session_properties(*, tools: ToolsSchema | None = None) -> rt.SessionProperties:
    return rt.SessionProperties(
        instructions="You are a test assistant.",
        audio=rt.AudioConfiguration(
            input=rt.AudioInput(
                transcription=rt.InputAudioTranscription(),
                noise_reduction=rt.InputAudioNoiseReduction(type="near_field"),
                turn_detection=rt.TurnDetection(),
            ),
            output=rt.AudioOutput(voice="alloy"),
        ),
        tools=tools,
    )


@contextlib.asynccontextmanager
async def pipeline(
    server: FakeRealtimeServer,
    *,
    properties: rt.SessionProperties | None = None,
    setup: Callable[[OpenAIRealtimeLLMService], None] | None = None,
    greet: bool = True,
    user_params: LLMUserAggregatorParams | None = None,
    service: Callable[..., OpenAIRealtimeLLMService] = OpenAIRealtimeLLMService,
) -> AsyncIterator[Session]:
    """The assistant's shape minus the transport: user aggregator → service → out → assistant."""
    llm = service(
        api_key="sk-test",
        base_url=server.base_url,
        settings=OpenAIRealtimeLLMService.Settings(
            model="gpt-realtime", session_properties=properties or session_properties()
        ),
    )
    if setup:
        setup(llm)
    aggregators = LLMContextAggregatorPair(
        LLMContext(), user_params=user_params, realtime_service_mode=True
    )
    out = Collector()
    worker = PipelineWorker(
        Pipeline([aggregators.user(), llm, out, aggregators.assistant()]),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        idle_timeout_secs=None,
    )
    session = Session(server=server, llm=llm, worker=worker, out=out)

    @worker.event_handler("on_pipeline_error")
    async def _error(_worker: PipelineWorker, frame: ErrorFrame) -> None:
        session.errors.append(frame)

    @aggregators.user().event_handler("on_user_turn_message_added")
    async def _user(_agg: Any, message: UserTurnMessageAddedMessage) -> None:
        session.user_said.append(message.content)

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def _assistant(_agg: Any, message: AssistantTurnStoppedMessage) -> None:
        session.assistant_said.append(message.content)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        if greet:
            # As the assistant profile does on connect: the first context makes the model
            # greet. (Without it, the first context frame the aggregator pushes after the
            # first user turn would set up the conversation and ask for an extra response.)
            await worker.queue_frame(LLMRunFrame())
            await eventually(lambda: session.assistant_said, timeout=8, what="the greeting")
        yield session
    finally:
        await worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(run), 3)
        except TimeoutError:
            await worker.cancel()
            await asyncio.wait_for(run, 3)


def fake(turns: list[Turn] | None = None, fault: Fault | None = None) -> FakeRealtimeServer:
    return FakeRealtimeServer(turns, fault, greeting=GREETING)


def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] == kind


# -- the happy paths -------------------------------------------------------------------


async def test_a_spoken_turn_is_heard_transcribed_and_answered_with_audio() -> None:
    turn = Turn(transcript="what time is it", answer="It is noon.")
    async with fake([turn]) as server, pipeline(server) as s:
        update = await server.wait_for(is_type("session.update"))
        assert update["session"]["instructions"] == "You are a test assistant."
        assert update["session"]["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
        assert server.models == ["gpt-realtime"]

        await s.speak()
        await eventually(lambda: len(s.assistant_said) == 2, timeout=8, what="the answer")

        assert server.connections == 1
        assert server.audio_appends == 65  # 1.3 s in 20 ms frames
        assert server.audio_bytes == 65 * RATE * 2 * FRAME_MS // 1000
        assert s.user_said == ["what time is it"]
        assert s.assistant_said == [GREETING, "It is noon."]
        audio = s.out.of(TTSAudioRawFrame)
        assert len(audio) == len(GREETING + "It is noon.")  # one 60 ms chunk per character
        assert {(f.sample_rate, f.num_channels) for f in audio} == {(RATE, 1)}
        pcm = np.frombuffer(b"".join(f.audio for f in audio), dtype="<i2")
        assert np.abs(pcm).max() > 5000  # real sound, not silence
        text = "".join(f.text for f in s.out.of(TTSTextFrame))
        assert text == GREETING + "It is noon."
        assert not s.errors


class Weather:
    """A tool the model calls for the turn "weather in Paris?", answered with 21 degrees."""

    turn = Turn(
        transcript="weather in Paris?",
        tool_call=("get_weather", {"city": "Paris"}),
        answer="It is 21 degrees.",
    )

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        tools = ToolsSchema(
            standard_tools=[
                FunctionSchema(
                    name="get_weather",
                    description="Weather for a city",
                    properties={"city": {"type": "string"}},
                    required=["city"],
                )
            ]
        )
        self.properties = session_properties(tools=tools)

    async def get_weather(self, params: FunctionCallParams) -> None:
        self.calls.append(dict(params.arguments))
        await params.result_callback({"temperature_c": 21})

    def register(self, llm: OpenAIRealtimeLLMService) -> None:
        llm.register_function("get_weather", self.get_weather, cancel_on_interruption=False)


async def test_a_tool_call_runs_the_handler_and_its_result_reaches_the_model() -> None:
    weather = Weather()
    async with (
        fake([weather.turn]) as server,
        pipeline(server, properties=weather.properties, setup=weather.register) as s,
    ):
        update = await server.wait_for(is_type("session.update"))
        assert [t["name"] for t in update["session"]["tools"]] == ["get_weather"]

        await s.speak()
        output = await server.wait_for(
            lambda e: (
                e["type"] == "conversation.item.create"
                and e["item"]["type"] == "function_call_output"
            )
        )
        assert weather.calls == [{"city": "Paris"}]
        assert output["item"]["output"] == '{"temperature_c": 21}'
        assert server.function_outputs == [output["item"]]
        # The service then asks for the follow-up answer itself.
        await server.wait_for(is_type("response.create"))
        await eventually(lambda: len(s.assistant_said) == 2, timeout=8, what="the answer")
        assert s.assistant_said == [GREETING, "It is 21 degrees."]
        assert s.user_said == ["weather in Paris?"]
        assert not s.errors


async def test_a_tool_result_nothing_asks_to_answer_is_answered_after_a_moment() -> None:
    """A final result the pipeline asked to answer gets one ``response.create``; one that
    nothing asked for (here handed to the service directly, as if the aggregator had lost
    it) is answered by ``HeldRealtimeService`` after ``ANSWER_BACKSTOP_S``."""
    weather, watch = Weather(), Watch()
    async with (
        fake([weather.turn]) as server,
        pipeline(
            server, properties=weather.properties, setup=weather.register, service=watch.held
        ) as s,
    ):
        await s.speak()
        await eventually(lambda: len(s.assistant_said) == 2, timeout=8, what="the answer")
        await asyncio.sleep(ANSWER_BACKSTOP_S + 0.3)  # time for a second ask to show
        assert server.count("response.create") == 2  # the greeting's and the answer's

        assert isinstance(s.llm, HeldRealtimeService)
        late = FunctionCallResultFrame(
            function_name="get_weather", tool_call_id="call_late", arguments={}, result={"c": 20}
        )
        await s.llm._handle_function_call_result(late)  # as the pipeline would hand it over
        await eventually(lambda: server.count("response.create") == 3, timeout=5, what="an ask")
        await eventually(lambda: len(s.assistant_said) == 3, timeout=8, what="its answer")
        assert not watch.failures and not s.errors


async def test_manual_turns_the_client_commits_and_asks_for_the_response() -> None:
    # turn_detection=False: local turn detection decides, and the service commits the
    # buffer and asks for a response when the user turn stops.
    props = session_properties()
    assert props.audio and props.audio.input
    props.audio.input.turn_detection = False
    externally_driven = LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
    turn = Turn(transcript="manual mode", answer="Done.")
    async with (
        fake([turn]) as server,
        pipeline(server, properties=props, user_params=externally_driven) as s,
    ):
        assert s.server.session_updates[0]["audio"]["input"]["turn_detection"] is None
        await s.worker.queue_frame(UserStartedSpeakingFrame())
        await s.speak(speech(0.6, 0.0))
        await s.worker.queue_frame(UserStoppedSpeakingFrame())
        await eventually(lambda: len(s.assistant_said) == 2, timeout=8, what="the answer")

        kinds = [e["type"] for e in server.received]
        assert kinds[-2:] == ["input_audio_buffer.commit", "response.create"]
        assert s.user_said == ["manual mode"]
        assert s.assistant_said == [GREETING, "Done."]
        assert not s.errors


async def test_speaking_over_the_answer_cancels_it_and_the_service_truncates() -> None:
    story = "Once upon a time there was a fake."  # 2 s of audio
    async with fake([Turn(transcript="tell me a story", answer=story), Turn()]) as server:
        async with pipeline(server) as s:
            await s.barge_in()
            cut, answer = s.assistant_said[1:]
            assert story.startswith(cut.strip()) and len(cut.strip()) < len(story)
            assert answer == Turn.answer
            assert s.user_said == ["tell me a story", Turn.transcript]
            # The service truncates what it played; the fake cancels the rest, as
            # interrupt_response does. (Whether the assistant turn then reads as
            # `interrupted` races the cancel against Pipecat's own interruption.)
            truncate = await server.wait_for(is_type("conversation.item.truncate"))
            assert truncate["audio_end_ms"] > 0
            done = [e["response"] for e in server.sent if e["type"] == "response.done"]
            assert [r["status"] for r in done] == ["completed", "cancelled", "completed"]
            assert done[1]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


async def test_words_in_flight_at_a_barge_in_are_neither_played_nor_recorded() -> None:
    """After ``speech_started`` the cancelled answer's next chunk and word still arrive, as
    the real API's events in flight do. Pipecat 1.14 would play them and record the word
    (here, in the cut answer's transcript); ``HeldRealtimeService`` drops them."""
    story = "Once upon a time there lived one fake."  # each word once
    watch = Watch()
    turns = [Turn(transcript="tell me a story", answer=story), Turn()]
    async with (
        FakeRealtimeServer(turns, Fault("words_after_barge_in"), greeting=GREETING) as server,
        pipeline(server, service=watch.held) as s,
    ):
        await s.barge_in()
        sent = server.sent
        cancelled = [e for e in sent if e["type"] == "response.done"][1]["response"]
        assert cancelled["status"] == "cancelled"
        created = next(
            i for i, e in enumerate(sent)
            if e["type"] == "response.created" and e["response"]["id"] == cancelled["id"]
        )  # fmt: skip
        barge_in = next(
            i for i in range(created, len(sent))
            if sent[i]["type"] == "input_audio_buffer.speech_started"
        )  # fmt: skip
        late = [
            e["delta"].strip() for e in sent[barge_in:]
            if e["type"] == "response.output_audio_transcript.delta"
            and e["response_id"] == cancelled["id"]
        ]  # fmt: skip
        assert late, "the fake sent no word after the barge-in"
        await asyncio.sleep(0.5)  # time for a stray turn to show
        cut, answer = s.assistant_said[1:]
        assert story.startswith(cut.strip()) and late[0] not in cut.split()
        assert answer == Turn.answer
        assert not watch.failures and not s.errors


# -- failures: what Pipecat 1.14 makes of them (the session watcher builds on this) -----


def spare_the_close_timeout(session: Session) -> None:
    """Let the deaf service's socket close fast when the pipeline ends.

    A service whose read loop has died stops draining its socket; once websockets' queue
    of 16 unread messages fills, the client pauses reading altogether and never sees the
    server's close frame (nor the TCP close), so ``websocket.close()`` in ``_disconnect``
    waits out the 10 s close_timeout. Production sessions pay those 10 s at the end of
    every such failure; the tests don't need to.
    """
    assert session.llm._websocket is not None
    session.llm._websocket.close_timeout = 0.1


@pytest.fixture
def logged_errors() -> Iterator[list[str]]:
    """Pipecat's ERROR log lines, as ``module:function: message``."""
    lines: list[str] = []

    def sink(message: Any) -> None:
        record = message.record
        lines.append(f"{record['name']}:{record['function']}: {record['message']}")

    handle = logger.add(sink, level="ERROR")
    yield lines
    logger.remove(handle)


async def test_rejected_handshake_is_one_error_frame_and_a_permanent_one_for_401() -> None:
    async with fake(fault=Fault("reject_handshake")) as server, pipeline(server, greet=False) as s:
        await eventually(lambda: s.errors, timeout=8, what="an ErrorFrame")
        await s.worker.queue_frame(LLMRunFrame())
        await s.speak(speech(0.2, 0.0))  # everything after is dropped without a word

        (error,) = s.errors
        assert error.error.startswith("Error connecting: server rejected WebSocket connection")
        assert isinstance(error.exception, InvalidStatus)
        assert error.category is ErrorCategory.AUTHENTICATION  # from the HTTP status
        assert not error.fatal
        assert error.processor is s.llm and not s.llm.is_usable  # permanent: unusable
        assert (server.connections, server.rejected) == (0, 1)


async def test_a_server_refusal_is_an_error_frame_that_leaves_the_service_usable() -> None:
    async with (
        fake(fault=Fault("reject_handshake", status=503)) as server,
        pipeline(server, greet=False) as s,
    ):
        await eventually(lambda: s.errors, timeout=8, what="an ErrorFrame")
        (error,) = s.errors
        assert error.category is ErrorCategory.SERVER
        assert not error.fatal and s.llm.is_usable  # nothing tells the worker to stop
        assert server.rejected == 1


async def test_an_error_answering_session_update_is_one_error_frame_then_deafness() -> None:
    async with (
        fake(fault=Fault("error_on_session_update")) as server,
        pipeline(server, greet=False) as s,
    ):
        await eventually(lambda: s.errors, timeout=8, what="an ErrorFrame")
        await s.worker.queue_frame(LLMRunFrame())
        await s.speak()
        # A window, not a wait: the fake answers the utterance meanwhile, and nobody must
        # hear it.
        await asyncio.sleep(0.8)

        (error,) = s.errors
        assert "invalid_value" in error.error and error.exception is None
        assert error.category is ErrorCategory.UNKNOWN
        assert not error.fatal and s.llm.is_usable
        # The service stopped reading but keeps sending audio; the session never became
        # ready, so the greeting it was asked for is never even requested.
        assert server.audio_appends == 65
        assert server.count("response.create") == 0
        assert not s.user_said and not s.out.of(TTSAudioRawFrame)
        spare_the_close_timeout(s)


async def test_an_error_event_mid_session_is_one_error_frame_then_deafness() -> None:
    turn = Turn(transcript="first", answer="One.")
    async with fake([turn], Fault("error_after_turn")) as server, pipeline(server) as s:
        await s.speak()
        await eventually(lambda: s.errors, timeout=8, what="an ErrorFrame")
        # The turn itself went through (its answer is recorded as the error arrives).
        await eventually(
            lambda: s.assistant_said == [GREETING, "One."], timeout=8, what="the answer"
        )

        (error,) = s.errors
        assert "server_error" in error.error and error.exception is None
        assert error.category is ErrorCategory.UNKNOWN
        assert not error.fatal and s.llm.is_usable

        audio_before = len(s.out.of(TTSAudioRawFrame))
        await s.speak()
        # The fake hears and answers the second turn...
        await eventually(lambda: server.audio_appends == 130, timeout=8, what="the 2nd turn")
        await asyncio.sleep(0.8)  # a window: the fake answers, the service must not hear it
        assert s.user_said == ["first"]  # ...but the service no longer reads anything
        assert len(s.out.of(TTSAudioRawFrame)) == audio_before
        assert len(s.errors) == 1
        spare_the_close_timeout(s)


async def test_in_manual_turns_a_too_short_commit_is_an_api_error_and_deafness() -> None:
    # With local turn detection the service commits whatever the buffer holds when the
    # user turn stops; under 100 ms of audio the API refuses with an `error`, which the
    # service treats like any other: one ErrorFrame, then it stops reading.
    props = session_properties()
    assert props.audio and props.audio.input
    props.audio.input.turn_detection = False
    externally_driven = LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
    async with (
        fake([Turn(transcript="too late")]) as server,
        pipeline(server, properties=props, user_params=externally_driven) as s,
    ):
        await s.worker.queue_frame(UserStartedSpeakingFrame())
        await s.speak(speech(0.04, 0.0))  # a 40 ms blip
        await s.worker.queue_frame(UserStoppedSpeakingFrame())
        await eventually(lambda: s.errors, timeout=8, what="an ErrorFrame")

        (error,) = s.errors
        assert "input_audio_buffer_commit_empty" in error.error
        assert not error.fatal and error.category is ErrorCategory.UNKNOWN
        await s.worker.queue_frame(UserStartedSpeakingFrame())
        await s.speak(speech(0.6, 0.0))
        await s.worker.queue_frame(UserStoppedSpeakingFrame())
        await asyncio.sleep(1.0)  # a window: the fake answers, the service must not hear it
        assert server.count("input_audio_buffer.commit") == 2  # the fake took this turn...
        assert not s.user_said and s.assistant_said == [GREETING]  # ...nobody heard it
        spare_the_close_timeout(s)


@pytest.mark.parametrize("close_code", [1011, 1000])
async def test_a_socket_closed_mid_answer_is_silent_until_the_next_send_fails(
    close_code: int, logged_errors: list[str]
) -> None:
    # The fault strikes the connection's first answer: no greeting, so it's the turn's.
    turn = Turn(answer="This answer is cut short.")
    async with (
        fake([turn], Fault("close_mid_answer", close_code=close_code)) as server,
        pipeline(server, greet=False) as s,
    ):
        await s.speak()  # the close comes ~1.3 s after the speech, once this returns
        await eventually(
            lambda: server.connections == 1 and not server.open_connections,
            timeout=8,
            what="the fake closing the socket",
        )
        await asyncio.sleep(0.2)  # a window: no ErrorFrame may follow the close
        assert not s.errors  # the read loop ended; no ErrorFrame for the close itself
        assert 0 < len(s.out.of(TTSAudioRawFrame)) < len(turn.answer)
        assert not s.assistant_said  # the cut-short turn never completes

        await s.speak(speech(0.0, 0.1))  # five more frames of (silent) audio
        await eventually(lambda: len(s.errors) == 5, timeout=8, what="five ErrorFrames")
        assert {e.error.split(":")[0] for e in s.errors} == {"Error sending client event"}
        closed = ConnectionClosedError if close_code == 1011 else ConnectionClosedOK
        assert all(isinstance(e.exception, closed) for e in s.errors)
        assert all(not e.fatal and e.category is ErrorCategory.UNKNOWN for e in s.errors)
        assert s.llm.is_usable
        # An abnormal close also ends the read task with a logged exception; a clean one
        # ends it in silence.
        crashed = [line for line in logged_errors if "_receive_task_handler" in line]
        assert len(crashed) == (1 if close_code == 1011 else 0)


async def test_a_malformed_event_kills_the_read_loop_with_a_log_line_only(
    logged_errors: list[str],
) -> None:
    # The fault follows the connection's first response.created: here, the greeting's.
    turn = Turn(transcript="unheard", answer="Never heard.")
    async with fake([turn], Fault("malformed_event")) as server, pipeline(server, greet=False) as s:
        await s.worker.queue_frame(LLMRunFrame())  # ask for the greeting
        await server.wait_for(is_type("response.create"))
        await s.speak()
        await asyncio.sleep(1.0)  # a window: the fake answers the turn, nobody may hear it

        assert not s.errors
        assert any("_receive_task_handler unexpected exception" in x for x in logged_errors)
        assert server.open_connections == 1  # the socket stays open
        assert not s.assistant_said and not s.user_said and not s.out.of(TTSAudioRawFrame)
        await s.speak(speech(0.0, 0.1))
        assert server.audio_appends == 70 and not s.errors  # still sending, still deaf
        spare_the_close_timeout(s)


# -- the session watcher: a dropped socket is reconnected ------------------------------


@dataclass
class Watch:
    """What ``WatchedRealtimeService`` (or ``HeldRealtimeService``) reports: the events it
    emits and any failure."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def service(self, **kwargs: Any) -> WatchedRealtimeService:
        return WatchedRealtimeService(
            on_failure=lambda reason, message: self.failures.append((reason, message)),
            emit=lambda kind, data: self.events.append((kind, data)),
            **kwargs,
        )

    def held(self, **kwargs: Any) -> HeldRealtimeService:
        return HeldRealtimeService(
            on_failure=lambda reason, message: self.failures.append((reason, message)),
            emit=lambda kind, data: self.events.append((kind, data)),
            **kwargs,
        )

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]


UTTERANCE_BYTES = len(speech()) * RATE * 2 * FRAME_MS // 1000


async def test_typed_words_go_to_the_model_as_the_users_and_are_answered() -> None:
    """RTVI ``send-text`` from the client: a user item (not Pipecat's ``system`` one), an
    answer, and a transcript line marked as typed."""
    watch = Watch()
    async with (
        FakeRealtimeServer(greeting=GREETING, typed_answer="You wrote: {text}") as server,
        pipeline(server, service=watch.held) as s,
    ):
        await eventually(lambda: s.assistant_said == [GREETING], what="the greeting")
        message = {"label": "rtvi-ai", "type": "send-text", "id": "m1",
                   "data": {"content": "  book a table  "}}  # fmt: skip
        await s.worker.queue_frame(InputTransportMessageFrame(message=message))
        await eventually(
            lambda: "You wrote: book a table" in s.assistant_said, timeout=10, what="the answer"
        )
        (said,) = watch.of("user.transcript")
        assert said["text"] == "book a table" and said["typed"] is True and said["started"]
        items = [e["item"] for e in server.received if e["type"] == "conversation.item.create"]
        assert [(i["role"], i["content"][0]["text"]) for i in items] == [("user", "book a table")]
        assert server.typed == ["book a table"] and not watch.failures and not s.errors


async def test_a_socket_dropped_mid_answer_is_reconnected_and_the_call_goes_on() -> None:
    greeting = "Hello there, how are you doing today?"  # ~2.2 s: cut ~1.1 s in
    turn = Turn(transcript="what time is it", answer="It is noon.")
    watch = Watch()
    async with (
        FakeRealtimeServer(
            [turn], Fault("close_mid_answer", connections=1), greeting=greeting
        ) as server,
        pipeline(server, service=watch.service) as s,
    ):
        # The greeting the drop cut short ends as a turn of what was said...
        cut = s.assistant_said[0].strip()
        assert cut and greeting.startswith(cut) and len(cut) < len(greeting)
        await eventually(lambda: watch.of("model.reconnecting"), what="model.reconnecting")
        # ...and the caller speaks at once, while the service reconnects.
        await s.speak()
        await eventually(lambda: "It is noon." in s.assistant_said, timeout=10, what="the answer")

        assert watch.of("model.reconnecting") == [{"reason": "model_disconnected", "attempt": 1}]
        (reconnected,) = watch.of("model.reconnected")
        assert reconnected["attempt"] == 1 and 0.3 <= reconnected["seconds"] < 2.5
        assert not watch.failures and not s.errors  # nothing was sent to the dead socket
        assert server.connections == 2
        assert s.user_said == [turn.transcript]
        # Not a word lost: every byte the caller said reached the model, some of it held
        # while reconnecting and appended at once to the new session.
        assert server.audio_bytes == UTTERANCE_BYTES
        assert server.audio_appends < len(speech())
        # The new session got the settings and the conversation so far before the answer
        # cut short was asked for again.
        new = server.received[server.connection_starts[1] :]
        kinds = [e["type"] for e in new]
        assert kinds[0] == "session.update"
        replay = kinds.index("conversation.item.create")
        assert replay < kinds.index("response.create")
        assert cut in json.dumps(new[replay]["item"])
        # Nothing refers to the lost session's items (a truncate of one would be an error).
        first_item = next(
            e["item"]["id"]
            for e in server.sent
            if e["type"] == "conversation.item.added" and e["item"].get("role") == "assistant"
        )
        assert all(e.get("item_id") != first_item for e in new)


async def test_a_model_unreachable_for_a_moment_is_retried_and_hears_the_caller() -> None:
    turn = Turn(transcript="are you there", answer="I am.")
    watch = Watch()
    async with (
        FakeRealtimeServer(
            [turn], Fault("reject_handshake", status=503, connections=1), greeting=GREETING
        ) as server,
        pipeline(server, service=watch.service, greet=False) as s,
    ):
        await s.speak()  # from the start: the first attempt is refused meanwhile
        await eventually(lambda: s.assistant_said, timeout=10, what="the answer")

        assert watch.of("model.reconnecting") == [{"reason": "model_unavailable", "attempt": 1}]
        assert [e["attempt"] for e in watch.of("model.reconnected")] == [1]
        assert (server.rejected, server.connections) == (1, 1)
        assert not watch.failures and not s.errors  # a refusal for now is no error
        assert s.user_said == [turn.transcript] and s.assistant_said == [turn.answer]
        assert server.audio_bytes == UTTERANCE_BYTES  # what was said meanwhile was held


async def test_a_rejected_key_is_not_retried() -> None:
    watch = Watch()
    async with (
        fake(fault=Fault("reject_handshake", status=401)) as server,
        pipeline(server, service=watch.service, greet=False) as s,
    ):
        await eventually(lambda: watch.failures, timeout=8, what="the failure")
        ((reason, message),) = watch.failures
        assert reason == "model_unavailable" and "HTTP 401" in message
        assert not watch.events and server.rejected == 1
        # Pipecat's own report of it, as before: its error frame may reach the pipeline's
        # end a moment after the service's failure was seen.
        await eventually(lambda: s.errors, timeout=8, what="Pipecat's error report")
        assert len(s.errors) == 1


# -- the fake on its own ---------------------------------------------------------------


async def test_the_fake_insists_on_an_authorization_header() -> None:
    async with FakeRealtimeServer() as server:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server.base_url + "?model=m")
        assert refused.value.response.status_code == 401
        headers = {"Authorization": "Bearer sk-test"}
        async with ws_connect(server.base_url + "?model=m", additional_headers=headers) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["session"]["model"] == "m"
            await ws.send(json.dumps({"type": "response.cancel"}))
            error = json.loads(await ws.recv())
            assert error["error"]["code"] == "response_cancel_not_active"
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            error = json.loads(await ws.recv())
            assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert (server.connections, server.rejected) == (1, 1)
        with pytest.raises(TimeoutError):
            await server.wait_for(is_type("session.update"), timeout=0.1)


async def test_the_fake_runs_standalone_for_benchmarks() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness.doubles.openai_realtime",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        url = line.split()[-1]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        headers = {"Authorization": "Bearer sk-test"}
        async with ws_connect(url + "?model=m", additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    finally:
        proc.terminate()
        await proc.wait()
