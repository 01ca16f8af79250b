"""``AssistantTurnGuard`` in front of the real Pipecat 1.14 assistant aggregator."""

from __future__ import annotations

from pipecat.frames.frames import (
    Frame,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMTextFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.base_text_aggregator import TextType

from worker.assistant_turn_guard import AssistantTurnGuard

PAUSE = SleepFrame(0.05)  # lets each frame through before the next (a system frame overtakes)


def _word(text: str) -> TTSTextFrame:
    return TTSTextFrame(text, text_type=TextType.SENTENCE)


async def test_words_made_before_an_interruption_that_arrive_after_it_are_dropped() -> None:
    said = _word("Hello!")
    overtaken, overtaken_llm = _word("How"), LLMTextFrame("How")  # the ones being written
    interruption = InterruptionFrame()
    answer = _word("The team found three flights.")

    down, _up = await run_test(
        AssistantTurnGuard(),
        frames_to_send=[said, PAUSE, interruption, PAUSE, overtaken, overtaken_llm, answer],
        expected_down_frames=[TTSTextFrame, InterruptionFrame, TTSTextFrame],
    )
    assert [f.text for f in down if isinstance(f, TTSTextFrame)] == [said.text, answer.text]


def _tool_call_then(*frames: Frame) -> list[Frame]:
    """A tool call under way, then ``frames``; its final result is among them."""
    call = FunctionCallFromLLM(function_name="find", tool_call_id="c1", arguments={}, context=None)
    started = FunctionCallsStartedFrame(function_calls=[call])
    running = FunctionCallInProgressFrame(function_name="find", tool_call_id="c1", arguments={})
    sent: list[Frame] = [started, running]
    for frame in frames:
        sent += [PAUSE, frame]
    return [*sent, SleepFrame(0.2)]


def _result(properties: FunctionCallResultProperties | None = None) -> FunctionCallResultFrame:
    return FunctionCallResultFrame(
        function_name="find",
        tool_call_id="c1",
        arguments={},
        result={"result": "three flights"},
        properties=properties,
    )


async def _pushed_upstream(front: list[FrameProcessor], frames: list[Frame]) -> int:
    """How many context pushes reach the model (upstream) from the assistant aggregator."""
    pair = LLMContextAggregatorPair(LLMContext(), realtime_service_mode=True)
    _down, up = await run_test(Pipeline([*front, pair.assistant()]), frames_to_send=frames)
    return sum(isinstance(f, LLMContextFrame) for f in up)


async def test_a_result_that_came_while_the_user_spoke_is_answered_once_they_stop() -> None:
    while_speaking = _tool_call_then(
        UserStartedSpeakingFrame(), _result(), UserStoppedSpeakingFrame()
    )
    # Pipecat alone owes the push for good; after a turn that ended it answers at once.
    assert await _pushed_upstream([], while_speaking) == 0
    assert await _pushed_upstream([], _tool_call_then(_result())) == 1

    assert await _pushed_upstream([AssistantTurnGuard()], while_speaking) == 1
    assert await _pushed_upstream([AssistantTurnGuard()], _tool_call_then(_result())) == 1
    # Progress is not answered, spoken over or not.
    progress = _result(FunctionCallResultProperties(is_final=False, run_llm=False))
    assert (
        await _pushed_upstream(
            [AssistantTurnGuard()],
            _tool_call_then(UserStartedSpeakingFrame(), progress, UserStoppedSpeakingFrame()),
        )
        == 0
    )
