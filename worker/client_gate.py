"""What a session's pipeline does while its client is away (the session is ``reconnecting``).

The pipeline and the model connection stay up for the client to come back, but
nobody hears the bot: it must stop talking, and what the user was saying when
the media went must not be lost half-way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    StartFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

HOLD_SILENCE_S = 1.0  # longer than any VAD's stop time (Silero 0.8 s, server VAD 0.5 s)
SILENCE_FRAME_S = 0.02


class ClientGate(FrameProcessor):
    """Right after the transport's input. ``hold`` (the client is lost) interrupts the bot,
    so the output's queued audio is flushed and its turn is recorded as interrupted, then
    ends the user's half-finished turn with a moment of silence: the VAD closes the turn,
    which is kept (transcribed, answered once the client is back), not left open.

    With ``local_vad`` (a ``VADProcessor`` comes after the gate: Pipecat broadcasts its
    turn frames upstream too, so the gate sees them), the silence is sent only while a
    turn is open. Most callers hang up between turns, and a second of silence through
    the VAD and the profile's processors was a tenth of a worker's CPU per call in a
    churn of short calls (py-spy, ops/bench/anchor.py). Without one (the model decides
    turns), the gate cannot tell, and always sends it."""

    def __init__(self, *, local_vad: bool = False, **kwargs: Any):
        super().__init__(**kwargs)  # FrameProcessor's own (name, metrics, ...)
        self._started = False
        self._audio: tuple[int, int] | None = None  # the input's sample rate and channels
        self.local_vad = local_vad
        """A ``VADProcessor`` comes after the gate: its turn frames say when one is open."""
        self._turn_open = False  # the local VAD's last word: speech started, not stopped

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._started = True
        elif isinstance(frame, InputAudioRawFrame):
            self._audio = (frame.sample_rate, frame.num_channels)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._turn_open = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._turn_open = False
        await self.push_frame(frame, direction)

    async def hold(self) -> None:
        if not self._started:
            return
        await self.broadcast_interruption()  # type: ignore[no-untyped-call]  # pipecat: FrameProcessor.broadcast_interruption is unannotated
        if self._audio is None:  # no audio ever came: there is no turn to close
            return
        if self.local_vad and not self._turn_open:  # between turns: none to close
            return
        rate, channels = self._audio
        size = int(rate * SILENCE_FRAME_S) * channels * 2  # s16
        for _ in range(round(HOLD_SILENCE_S / SILENCE_FRAME_S)):
            silence = InputAudioRawFrame(audio=bytes(size), sample_rate=rate, num_channels=channels)
            await self.push_frame(silence)
            if self.local_vad and not self._turn_open:
                return  # the VAD closed the turn: the rest of the second would change nothing
            # The VAD next to us runs in this task (direct mode): a frame at a time, the
            # other calls' audio goes on between them (a second of it is ~10 ms of VAD).
            await asyncio.sleep(0)
