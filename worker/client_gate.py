"""What a session's pipeline does while its client is away (the session is ``reconnecting``).

The pipeline and the model connection stay up for the client to come back, but
nobody hears the bot: it must stop talking, and what the user was saying when
the media went must not be lost half-way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, StartFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

HOLD_SILENCE_S = 1.0  # longer than any VAD's stop time (Silero 0.8 s, server VAD 0.5 s)
SILENCE_FRAME_S = 0.02


class ClientGate(FrameProcessor):
    """Right after the transport's input. ``hold`` (the client is lost) interrupts the bot,
    so the output's queued audio is flushed and its turn is recorded as interrupted, then
    ends the user's half-finished turn with a moment of silence: the VAD closes the turn,
    which is kept (transcribed, answered once the client is back), not left open."""

    def __init__(self, **kwargs: Any):  # FrameProcessor's own (name, metrics, ...)
        super().__init__(**kwargs)
        self._started = False
        self._audio: tuple[int, int] | None = None  # the input's sample rate and channels

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._started = True
        elif isinstance(frame, InputAudioRawFrame):
            self._audio = (frame.sample_rate, frame.num_channels)
        await self.push_frame(frame, direction)

    async def hold(self) -> None:
        if not self._started:
            return
        await self.broadcast_interruption()  # type: ignore[no-untyped-call]  # pipecat: FrameProcessor.broadcast_interruption is unannotated
        if self._audio is None:  # no audio ever came: there is no turn to close
            return
        rate, channels = self._audio
        size = int(rate * SILENCE_FRAME_S) * channels * 2  # s16
        for _ in range(round(HOLD_SILENCE_S / SILENCE_FRAME_S)):
            silence = InputAudioRawFrame(audio=bytes(size), sample_rate=rate, num_channels=channels)
            await self.push_frame(silence)
            # The VAD next to us runs in this task (direct mode): a frame at a time, the
            # other calls' audio goes on between them (a second of it is ~10 ms of VAD).
            await asyncio.sleep(0)
