"""The client gate's ``hold`` (the client is lost), in a real Pipecat pipeline with the
worker's shared Silero VAD on the spoken fixture: a turn open at the loss is closed with
silence, which stops once the VAD has closed it; between turns nothing is sent, unless no
local VAD tells the gate where the turns are."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    DataFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from worker.client_gate import HOLD_SILENCE_S, SILENCE_FRAME_S, ClientGate
from worker.profiles.echo import SAMPLE_RATE
from worker.vad import SharedSileroVADAnalyzer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hello.wav"
FRAME_BYTES = int(SAMPLE_RATE * SILENCE_FRAME_S) * 2
SECOND_OF_SILENCE = round(HOLD_SILENCE_S / SILENCE_FRAME_S)
PARAMS = VADParams(stop_secs=0.5)  # the echo profile's


class ClientLost(DataFrame):
    """Stands for the transport noticing that the client went."""


class LoseClient(FrameProcessor):
    """At the end of the pipeline: on ``ClientLost``, holds the gate as the session does,
    from a task of its own (the session's, outside the pipeline: the hold's interruption
    cancels what a processor is doing when it reaches it)."""

    def __init__(self, gate: ClientGate) -> None:
        super().__init__()
        self._gate = gate
        self.held: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ClientLost):
            self.held = asyncio.create_task(self._gate.hold())
            return
        await self.push_frame(frame, direction)


def _speech() -> list[InputAudioRawFrame]:
    with wave.open(str(FIXTURE)) as wav:
        assert wav.getframerate() == SAMPLE_RATE
        pcm = wav.readframes(wav.getnframes())
    return [
        InputAudioRawFrame(pcm[i : i + FRAME_BYTES], sample_rate=SAMPLE_RATE, num_channels=1)
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)
    ]


def _silence(frames: int) -> list[InputAudioRawFrame]:
    return [
        InputAudioRawFrame(bytes(FRAME_BYTES), sample_rate=SAMPLE_RATE, num_channels=1)
        for _ in range(frames)
    ]


async def _lose_client_after(
    audio: list[InputAudioRawFrame], *, local_vad: bool = True
) -> tuple[int, list[type[Frame]]]:
    """Audio frames that reached the end after ``audio`` and the loss (those sent
    included), and the VAD's turn frames there, in order."""
    SharedSileroVADAnalyzer.preload()
    gate = ClientGate(local_vad=local_vad, enable_direct_mode=True)
    analyzer = SharedSileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=PARAMS)
    vad = VADProcessor(vad_analyzer=analyzer, enable_direct_mode=True)
    lose = LoseClient(gate)
    down, _up = await run_test(
        Pipeline([gate, vad, lose]),
        frames_to_send=[*audio, SleepFrame(0.2), ClientLost(), SleepFrame(0.5)],
    )
    assert lose.held is not None and lose.held.done()
    lose.held.result()
    turns = (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)
    return (
        sum(isinstance(f, InputAudioRawFrame) for f in down),
        [type(f) for f in down if isinstance(f, turns)],
    )


async def _mid_word(speech: list[InputAudioRawFrame]) -> int:
    """A frame in the middle of the fixture's longest run of speech, as the VAD hears it."""
    analyzer = SharedSileroVADAnalyzer(params=PARAMS)
    analyzer.set_sample_rate(SAMPLE_RATE)  # as a VADProcessor does when its pipeline starts
    states = [await analyzer.analyze_audio(frame.audio) for frame in speech]
    speaking = [state == VADState.SPEAKING for state in states]
    runs = []  # (length, first frame) of each run of speech
    for i, now in enumerate(speaking):
        if now and (i == 0 or not speaking[i - 1]):
            length = next((n for n, s in enumerate(speaking[i:]) if not s), len(speaking) - i)
            runs.append((length, i))
    length, start = max(runs)
    return start + length // 2


async def test_a_turn_open_at_the_loss_is_closed_with_silence_until_the_vad_closes_it() -> None:
    SharedSileroVADAnalyzer.preload()
    speech = _speech()
    mid_word = speech[: await _mid_word(speech)]
    arrived, turns = await _lose_client_after(mid_word)
    assert turns == [VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame]
    added = arrived - len(mid_word)
    # The VAD's stop time of silence, and the few windows Silero's confidence takes to
    # fall (30 frames here: 0.6 s), not the whole second.
    stop_frames = PARAMS.stop_secs / SILENCE_FRAME_S
    assert stop_frames <= added <= stop_frames + 10 < SECOND_OF_SILENCE


async def test_between_turns_nothing_is_sent() -> None:
    closed = [*_speech(), *_silence(SECOND_OF_SILENCE)]  # the VAD closed the turn itself
    arrived, turns = await _lose_client_after(closed)
    assert turns == [VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame]
    assert arrived == len(closed)


async def test_without_a_local_vad_the_gate_always_sends_its_second_of_silence() -> None:
    closed = [*_speech(), *_silence(SECOND_OF_SILENCE)]
    arrived, _turns = await _lose_client_after(closed, local_vad=False)
    assert arrived == len(closed) + SECOND_OF_SILENCE
