"""The echo profile's VAD on the spoken fixture: speech found, state not shared between sessions."""

from __future__ import annotations

import wave
from pathlib import Path

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADState

from worker.profiles.echo import SAMPLE_RATE
from worker.vad import SharedSileroVADAnalyzer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hello.wav"


def _frames(chunk_ms: int = 20) -> list[bytes]:
    with wave.open(str(FIXTURE)) as wav:
        assert wav.getframerate() == SAMPLE_RATE
        pcm = wav.readframes(wav.getnframes())
    size = SAMPLE_RATE * chunk_ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


async def _states(analyzer: SileroVADAnalyzer) -> list[VADState]:
    analyzer.set_sample_rate(SAMPLE_RATE)
    return [await analyzer.analyze_audio(frame) for frame in _frames()]


async def test_shared_session_analyzers_detect_speech_independently() -> None:
    first, second = SharedSileroVADAnalyzer(), SharedSileroVADAnalyzer()
    assert first._model.session is second._model.session  # one ONNX session per process
    assert first._model is not second._model  # but each keeps its own recurrent state
    states = await _states(first)
    assert VADState.SPEAKING in states
    assert states[-1] == VADState.QUIET  # the fixture ends in 1.5 s of silence
    assert await _states(second) == states  # a fresh analyzer hears the same thing


async def test_inline_analysis_hears_what_pipecats_threaded_one_does() -> None:
    """The analysis moved from the analyzer's thread onto the loop: same states, frame by
    frame, and no thread started for it."""
    inline = SharedSileroVADAnalyzer()
    threaded = SileroVADAnalyzer()  # Pipecat's own: a model of its own, run on its thread
    assert await _states(inline) == await _states(threaded)
    assert inline._executor._threads == set()
