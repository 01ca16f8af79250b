"""The echo profile's VAD on the spoken fixture: speech found as Pipecat finds it, quiet
windows left unscored, state not shared between sessions."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from worker.profiles.echo import SAMPLE_RATE
from worker.vad import SharedSileroVADAnalyzer, SileroBatch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hello.wav"


def _fixture() -> np.ndarray:
    with wave.open(str(FIXTURE)) as wav:
        assert wav.getframerate() == SAMPLE_RATE
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16)


def _frames(audio: np.ndarray | None = None, chunk_ms: int = 20) -> list[bytes]:
    pcm = (_fixture() if audio is None else audio).tobytes()
    size = SAMPLE_RATE * chunk_ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


async def _states(analyzer: SileroVADAnalyzer, audio: np.ndarray | None = None) -> list[VADState]:
    analyzer.set_sample_rate(SAMPLE_RATE)
    return [await analyzer.analyze_audio(frame) for frame in _frames(audio)]


def _turns(states: list[VADState]) -> list[tuple[int, VADState]]:
    """(frame, state) wherever the state changes."""
    return [(i, s) for i, s in enumerate(states) if i and states[i - 1] != s]


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


async def test_sessions_scored_together_hear_what_each_hears_alone() -> None:
    """Windows of sessions fed in the same loop turns are scored in one ONNX run, and each
    session's states are what it gets alone (and what Pipecat's own analyzer gets)."""
    frames = _frames()
    alone = await _states(SileroVADAnalyzer())
    analyzers = [SharedSileroVADAnalyzer() for _ in range(4)]
    batch = SharedSileroVADAnalyzer.batch()
    runs, windows = batch.runs, batch.windows

    async def feed(analyzer: SileroVADAnalyzer, lead: int) -> list[VADState]:
        analyzer.set_sample_rate(SAMPLE_RATE)
        for _ in range(lead):  # out of step with the others: windows end in other turns
            await asyncio.sleep(0)
        return [await analyzer.analyze_audio(frame) for frame in frames]

    together = await asyncio.gather(*(feed(a, lead) for lead, a in enumerate(analyzers)))
    assert all(states == alone for states in together)
    scored = batch.windows - windows
    assert 0 < scored < 4 * (len(frames) * 320 // 512)  # the quiet windows were not scored
    assert batch.runs - runs < scored / 2  # most runs scored several sessions' windows


def _recordings() -> dict[str, np.ndarray]:
    """The fixture as callers say it: with pauses, over room noise, at first too quietly."""
    speech = _fixture()
    noise = np.random.default_rng(7).normal(0, 32768 * 10 ** (-60 / 20), 2 * len(speech))
    return {
        "pauses": np.concatenate([speech, np.zeros(SAMPLE_RATE, np.int16), speech]),
        "room noise": (np.tile(speech, 2) + noise).clip(-32768, 32767).astype(np.int16),
        "quieter first": np.concatenate([(speech * 0.1).astype(np.int16), speech]),
    }


async def test_quiet_windows_are_not_scored_and_speech_is_found_as_pipecats_finds_it() -> None:
    """A window too quiet for Pipecat to call speech is not scored; when the audio grows
    loud the model hears the windows it missed first. Speech starts and stops where
    Pipecat's own analyzer has it, within one 32 ms window (two frames)."""
    SharedSileroVADAnalyzer.preload()
    batch = SharedSileroVADAnalyzer.batch()
    for name, audio in _recordings().items():
        pipecats = _turns(await _states(SileroVADAnalyzer(), audio))
        scored = batch.windows
        ours = _turns(await _states(SharedSileroVADAnalyzer(), audio))
        scored = batch.windows - scored
        windows = len(_frames(audio)) * 320 // 512
        assert scored < 0.8 * windows, name  # at least a fifth not scored
        assert [s for _, s in ours] == [s for _, s in pipecats], name
        assert all(abs(a - b) <= 2 for (a, _), (b, _) in zip(ours, pipecats, strict=True)), name


async def test_min_volume_0_scores_every_window_as_pipecat_does() -> None:
    """No window is too quiet under ``min_volume=0``: every one is scored, and the states
    are Pipecat's own analyzer's, frame by frame."""
    audio = _recordings()["quieter first"]
    SharedSileroVADAnalyzer.preload()
    batch = SharedSileroVADAnalyzer.batch()
    scored = batch.windows
    always = SharedSileroVADAnalyzer(params=VADParams(min_volume=0.0))
    states = await _states(always, audio)
    assert batch.windows - scored == len(_frames(audio)) * 320 // 512  # every window
    assert states == await _states(SileroVADAnalyzer(params=VADParams(min_volume=0.0)), audio)


async def test_a_batch_that_fails_scores_silence() -> None:
    """As Pipecat's own: a failed inference is no speech, not a failed call."""
    analyzer = SharedSileroVADAnalyzer()
    analyzer.set_sample_rate(SAMPLE_RATE)
    window = bytes(analyzer._vad_frames_num_bytes)
    batch = SileroBatch(session=None)  # no session: its run raises
    assert await batch.score(analyzer._model, window, SAMPLE_RATE) == 0.0


def test_a_loop_that_stopped_mid_batch_leaves_nothing_that_holds_up_the_next() -> None:
    """The batch is one per process; one event loop's windows, left unscored when it
    stopped, must not keep another loop's from being scheduled."""
    analyzer = SharedSileroVADAnalyzer()
    analyzer.set_sample_rate(SAMPLE_RATE)
    window = bytes(analyzer._vad_frames_num_bytes)
    batch = SharedSileroVADAnalyzer.batch()

    async def left_unscored() -> None:
        batch.score(analyzer._model, window, SAMPLE_RATE)
        asyncio.get_running_loop().stop()  # before the run it scheduled comes

    stopped = asyncio.new_event_loop()
    task = stopped.create_task(left_unscored())
    stopped.run_forever()
    assert task.done()  # it stopped the loop
    stopped.close()

    async def scored() -> float:
        return await asyncio.wait_for(batch.score(analyzer._model, window, SAMPLE_RATE), 5)

    assert asyncio.run(scored()) < 0.5  # silence, scored


async def test_a_warm_up_that_fails_starts_the_model_afresh() -> None:
    """As a failed batch: the window after the quiet ones is still scored, from a reset
    state, and the call goes on."""
    analyzer = SharedSileroVADAnalyzer()
    analyzer.set_sample_rate(SAMPLE_RATE)
    need = analyzer._vad_frames_num_bytes
    speech = _fixture().tobytes()
    analyzer._skipped.extend([bytes(need)] * 3)
    analyzer._model.session = None  # its own runs fail; the batch's shared session does not
    confidence = await analyzer._score(speech[16000 : 16000 + need], volume=1.0)
    assert 0.0 <= confidence <= 1.0
    assert not analyzer._skipped
