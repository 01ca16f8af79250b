"""In front of Pipecat's assistant aggregator: two of its turn races, mended.

The assistant aggregator writes the bot's turns (the transcript, the model's
context) and decides when a tool's result is answered. In the pinned pipecat-ai
1.14 it can get both wrong:

* **Words an interruption overtook.** The output transport hands words on as
  their audio plays. On an interruption it passes the ``InterruptionFrame`` on
  first and then drains its queue, but the frame its audio task already holds
  still goes out after it (``handle_interruptions``: "the frame being written
  ... still delivered"). When that is a word, the aggregator has closed the
  interrupted turn and keeps the word for the next one: the transcript read
  "How The team found three flights." Frame ids grow with every frame made in
  the process, so a word made before the interruption that arrives after it is
  one of those, and is dropped.
* **A tool result that came while the user was speaking.** The aggregator then
  owes the model a context push "until the turn ends", but nothing makes it when
  the turn does end: in realtime mode the result is never answered. Under load
  the result of a quick tool can even overtake the turn's end on its way here,
  although the model's server ended the turn before it asked for the tool; the
  caller then waited for an answer that never came. Once the user stops, the
  push is asked for again (an empty append that runs the model, which the
  aggregator holds while the bot speaks as it does any). Pipecat's realtime
  service asks for a response only while a result is waiting for one, so a
  push the model's own answer already covered asks for nothing.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import (
    Frame,
    FunctionCallResultFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


def _answered(result: FunctionCallResultFrame) -> bool:
    """Whether the model is to answer this result (a final one not marked otherwise)."""
    properties = result.properties
    if properties is not None and (properties.is_final is False or properties.run_llm is False):
        return False
    return result.run_llm is not False


class AssistantTurnGuard(FrameProcessor):
    """Between the output transport and the assistant aggregator (see the module)."""

    def __init__(self, **kwargs: Any):  # FrameProcessor's own (name, metrics, ...)
        # In the transport's task: no queue of its own, nothing reordered.
        super().__init__(enable_direct_mode=True, **kwargs)
        self._interrupted_at = -1  # the id of the latest InterruptionFrame
        self._user_speaking = False
        self._answer_owed = False  # a result to answer came while the user was speaking

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InterruptionFrame):
                self._interrupted_at = frame.id
            elif isinstance(frame, (TTSTextFrame, LLMTextFrame)):
                if frame.id < self._interrupted_at:
                    return
            elif isinstance(frame, UserStartedSpeakingFrame):
                self._user_speaking = True
            elif isinstance(frame, FunctionCallResultFrame):
                self._answer_owed |= self._user_speaking and _answered(frame)
            elif isinstance(frame, LLMFullResponseStartFrame):
                self._answer_owed = False  # a response is under way: it takes the result in
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._user_speaking = False
                await self.push_frame(frame, direction)
                if self._answer_owed:
                    self._answer_owed = False
                    await self.push_frame(LLMMessagesAppendFrame(messages=[], run_llm=True))
                return
        await self.push_frame(frame, direction)
