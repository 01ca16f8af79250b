"""The ``echo`` profile: Silero VAD finds the end of each user turn, the bot plays it back.

It needs no external service, so it is the default without an OpenAI key, and
it exercises the real media path end to end: audio in, VAD, turn events,
audio out, bot speaking events.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    SpeechOutputAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from worker.vad import SharedSileroVADAnalyzer

if TYPE_CHECKING:
    from worker.profiles import SessionContext

SAMPLE_RATE = 16000
PREROLL_SECS = 0.5  # VAD confirms speech start_secs late; keep what came before
MAX_UTTERANCE_SECS = 30.0
PLAYBACK_CHUNK_SECS = 0.1
TRAILING_SILENCE_SECS = 0.6  # longer than the output transport's bot-stopped threshold


class EchoTurns(FrameProcessor):
    """Buffers each utterance between the VAD's start and stop, then plays it back."""

    def __init__(self, **kwargs: Any):  # FrameProcessor's own (name, metrics, ...)
        super().__init__(**kwargs)
        self._preroll: collections.deque[bytes] = collections.deque()
        self._preroll_bytes = 0
        self._utterance: list[bytes] | None = None
        self._utterance_bytes = 0
        self._rate = SAMPLE_RATE
        self.away = False
        """The client is lost: a turn that ends meanwhile is not played back to nobody."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._take_audio(frame)  # consumed here: nothing downstream needs mic audio
            return
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._utterance = list(self._preroll)
            self._utterance_bytes = self._preroll_bytes
            await self.push_frame(frame, direction)
            await self.push_frame(UserStartedSpeakingFrame(), direction)
            return
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            await self.push_frame(frame, direction)
            await self.push_frame(UserStoppedSpeakingFrame(), direction)
            await self._play_back()
            return
        await self.push_frame(frame, direction)

    def _take_audio(self, frame: InputAudioRawFrame) -> None:
        self._rate = frame.sample_rate
        bytes_per_sec = frame.sample_rate * frame.num_channels * 2
        if self._utterance is not None:
            if self._utterance_bytes < MAX_UTTERANCE_SECS * bytes_per_sec:
                self._utterance.append(frame.audio)
                self._utterance_bytes += len(frame.audio)
            return
        self._preroll.append(frame.audio)
        self._preroll_bytes += len(frame.audio)
        while self._preroll and self._preroll_bytes > PREROLL_SECS * bytes_per_sec:
            self._preroll_bytes -= len(self._preroll.popleft())

    async def _play_back(self) -> None:
        if not self._utterance or self.away:
            self._utterance, self._utterance_bytes = None, 0
            return
        audio = b"".join(self._utterance)
        self._utterance, self._utterance_bytes = None, 0
        self._preroll.clear()
        self._preroll_bytes = 0
        # A speech stream (not TTS): the output transport marks the bot speaking while
        # the audio is not silent, and stopped after a short silence, which we append.
        audio += bytes(int(self._rate * TRAILING_SILENCE_SECS) * 2)
        chunk = int(self._rate * PLAYBACK_CHUNK_SECS) * 2
        for start in range(0, len(audio), chunk):
            await self.push_frame(
                SpeechOutputAudioRawFrame(
                    audio=audio[start : start + chunk], sample_rate=self._rate, num_channels=1
                )
            )


class EchoProfile:
    """Plays each user turn back; no external service."""

    name = "echo"
    warmable = True  # its processors know nothing of the session (worker.warm)

    @staticmethod
    def preload() -> None:
        """Load per-process resources when the worker starts, not in a session's start."""
        SharedSileroVADAnalyzer.preload()

    audio_in_sample_rate = SAMPLE_RATE
    audio_out_sample_rate = SAMPLE_RATE

    def __init__(self, context: SessionContext, *, vad_stop_secs: float = 0.5):
        self.context = context
        self._vad_params = VADParams(stop_secs=vad_stop_secs)
        self._vad: SileroVADAnalyzer | None = None
        self._turns: EchoTurns | None = None

    def bind(self, context: SessionContext) -> None:
        self.context = context

    async def prepare(self) -> None:
        self._vad = SharedSileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=self._vad_params)

    def pipeline(self, input: FrameProcessor, output: FrameProcessor) -> list[FrameProcessor]:
        assert self._vad is not None, "prepare() first"
        self._turns = EchoTurns(enable_direct_mode=True)
        # Both only look at each frame and act at once: run in the caller's task (see the
        # gate's comment in worker/session.py).
        vad = VADProcessor(vad_analyzer=self._vad, enable_direct_mode=True)
        return [input, vad, self._turns, output]

    def observers(self) -> list[BaseObserver]:
        return []

    async def on_client_connected(self, queue: Callable[[Any], Any]) -> None:
        return None

    async def on_client_lost(self) -> None:
        if self._turns is not None:
            self._turns.away = True

    async def on_client_back(self) -> None:
        if self._turns is not None:
            self._turns.away = False
