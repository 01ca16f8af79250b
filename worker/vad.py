"""Voice activity detection shared by the profiles: one Silero model per worker process,
run once per loop turn for every session that has a window to score."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import ClassVar

import numpy as np
from onnxruntime import InferenceSession
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

log = logging.getLogger(__name__)

# A window too quiet for Pipecat to call speech (smoothed volume under ``min_volume``) is
# not scored; when the audio grows loud again the model first hears the last windows it
# skipped, freshly reset. Without that warm-up it met speech cold: on the spoken
# fixture played 20 dB quieter, speech was found 420 ms later than Pipecat's analyzer
# finds it. With 8 windows (256 ms) its states match Pipecat's within one window on
# every test recording (tests/unit/test_echo_profile.py); 4 were not enough.
WARM_UP_WINDOWS = 8


class SileroBatch:
    """Scores the windows a worker's sessions hand in during one loop turn in one ONNX run.

    Silero takes a batch (each row its own audio and recurrent state), and a run's cost
    grows far slower than its rows: on this machine 186 µs for one window, 91 µs a
    window for 8, 76 µs for 16 or more (``ops/bench/vad_batch.py``). A worker's
    sessions share its event loop, so what one turn's frames bring is scored together
    at the start of the next turn: one session alone waits that one turn, many sessions
    share the run. Each row is what ``SileroOnnxModel.__call__`` of pipecat-ai 1.14
    computes for that session's wrapper (its context prepended, its state carried).
    """

    def __init__(self, session: InferenceSession):
        self._session = session
        self._pending: list[tuple[SileroOnnxModel, bytes, int, asyncio.Future[float]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # where the next run is scheduled
        self.runs = 0
        self.windows = 0

    def score(
        self, model: SileroOnnxModel, window: bytes, sample_rate: int
    ) -> asyncio.Future[float]:
        """The speech confidence of ``window`` (s16 PCM, Silero's window size) for the session
        whose recurrent state ``model`` holds; its state moves on when it is scored."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the batch is per process: a loop that stopped with a
            self._pending, self._loop = [], loop  # run scheduled left its windows behind
        if not self._pending:
            loop.call_soon(self._run)
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((model, window, sample_rate, future))
        return future

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for rate in {entry[2] for entry in pending}:
            self._run_rate([entry for entry in pending if entry[2] == rate], rate)

    def _run_rate(
        self, batch: list[tuple[SileroOnnxModel, bytes, int, asyncio.Future[float]]], rate: int
    ) -> None:
        context_size = 64 if rate == 16000 else 32
        for model, _window, _rate, _future in batch:
            # What SileroOnnxModel.__call__ does first, for a one-row wrapper.
            if not model._last_batch_size or (model._last_sr and model._last_sr != rate):
                model.reset_states()  # type: ignore[no-untyped-call]  # pipecat: unannotated
            if not np.shape(model._context)[1]:
                model._context = np.zeros((1, context_size), dtype="float32")
        audio = np.stack([np.frombuffer(entry[1], np.int16) for entry in batch])
        x = np.concatenate(
            [np.concatenate([entry[0]._context for entry in batch]), audio / np.float32(32768.0)],
            axis=1,
            dtype=np.float32,
        )
        state = np.concatenate([entry[0]._state for entry in batch], axis=1)
        try:
            out, new_state = self._session.run(
                None, {"input": x, "state": state, "sr": np.array(rate, dtype="int64")}
            )
        except Exception:  # as Pipecat's voice_confidence: no speech, rather than no call
            log.exception("Silero VAD failed on a batch of %d windows", len(batch))
            for _model, _window, _rate, future in batch:
                if not future.done():
                    future.set_result(0.0)
            return
        self.runs += 1
        self.windows += len(batch)
        for row, (model, _window, _rate, future) in enumerate(batch):
            model._state = new_state[:, row : row + 1, :].copy()
            model._context = x[row : row + 1, -context_size:].copy()
            model._last_sr = rate
            model._last_batch_size = 1
            if not future.done():  # its session may have been cancelled meanwhile
                future.set_result(float(out[row, 0]))


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD whose ONNX inference session is loaded once per process, and whose
    windows are scored with the other sessions' (``SileroBatch``), on the event loop.

    Loading the model takes ~100 ms, most of a session's start. The model's
    recurrent state lives on the ``SileroOnnxModel`` wrapper, not in the ONNX
    session (which is safe to run concurrently), so each session gets its own
    wrapper around one shared session. Mirrors ``SileroVADAnalyzer.__init__``
    of the pinned pipecat-ai 1.14 (checked by tests/unit/test_echo_profile.py).

    Pipecat hands every 20 ms frame to a thread of the analyzer's own (one thread
    per session) and awaits it: 415 µs of CPU per frame against 180 µs for the
    same analysis on the event loop, and at 50 sessions a worker spent a fifth
    of its samples in ``ThreadPoolExecutor.submit`` alone (py-spy, a burst of
    100). A worker's sessions share one core anyway, so the thread bought no
    parallelism. Here a frame that completes a window awaits its score from the
    batch, then Pipecat's own ``_run_analyzer`` runs on it with that score.

    A window whose smoothed volume is under ``min_volume`` is not scored at all:
    Pipecat's analyzer calls it silence whatever the model says. Callers are quiet
    much of a call (while the bot talks, between turns), and the model's run was a
    fifth of a worker's samples with 16 echo calls talking (py-spy).
    """

    _loaded: ClassVar[SileroVADAnalyzer | None] = None
    _batch: ClassVar[SileroBatch | None] = None

    # Sets Pipecat's private fields; guarded by tests/unit/test_upstream_hooks.py::test_silero_init
    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        if SharedSileroVADAnalyzer._loaded is None:
            SharedSileroVADAnalyzer._loaded = SileroVADAnalyzer()
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        model = SileroOnnxModel.__new__(SileroOnnxModel)
        model.session = SharedSileroVADAnalyzer._loaded._model.session
        model.sample_rates = [8000, 16000]
        model.reset_states()  # type: ignore[no-untyped-call]  # pipecat: SileroOnnxModel.reset_states is unannotated
        self._model = model
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._scored: deque[float] = deque()  # scores of the windows _run_analyzer will cut
        self._volumes: deque[float] = deque()  # and their smoothed volumes
        self._skipped: deque[bytes] = deque(maxlen=WARM_UP_WINDOWS)  # quiet, not scored
        self._analyzing = asyncio.Lock()  # the input's task and the client gate's may feed it

    @classmethod
    def batch(cls) -> SileroBatch:
        if cls._batch is None:
            assert cls._loaded is not None, "an analyzer first: it loads the model"
            cls._batch = SileroBatch(cls._loaded._model.session)
        return cls._batch

    # Replaces Pipecat's per-frame executor hop; guarded by
    # tests/unit/test_upstream_hooks.py::test_vad_analyze_audio
    async def analyze_audio(self, buffer: bytes) -> VADState:
        async with self._analyzing:
            need = self._vad_frames_num_bytes
            have = len(self._vad_buffer)
            if have + len(buffer) >= need:
                # The windows _run_analyzer will cut, measured and scored first, one by
                # one: a model reset after one (_maybe_reset_model) applies to the next,
                # as in Pipecat.
                pending = self._vad_buffer + buffer
                for start in range(0, len(pending) - need + 1, need):
                    window = pending[start : start + need]
                    volume = self._measure(window)
                    confidence = await self._score(window, volume)
                    self._maybe_reset_model(confidence)
                    self._scored.append(confidence)
            return self._run_analyzer(buffer)

    def _measure(self, window: bytes) -> float:
        """The window's smoothed volume, by Pipecat's own ``_get_smoothed_volume``; the
        previous window's is kept as ``_run_analyzer`` keeps it (it sets the same again)."""
        volume = super()._get_smoothed_volume(window)
        self._prev_volume = volume
        self._volumes.append(volume)
        return volume

    async def _score(self, window: bytes, volume: float) -> float:
        """The window's speech confidence; 0 without running the model when the window is
        too quiet to be speech whatever its score (``_run_analyzer`` asks for both)."""
        if volume < self._params.min_volume:
            self._skipped.append(window)
            return 0.0
        if self._skipped:  # loud again: the model hears what it missed, from a reset
            self._warm_up()
        return await self.batch().score(self._model, window, self.sample_rate)

    def _warm_up(self) -> None:
        """The skipped windows through the model, inline: ~1.3 ms (8 runs of one window,
        ``ops/bench/vad_batch.py``) once per onset of loud audio, where the batch would
        add a loop turn per window to finding speech."""
        missed, rate = list(self._skipped), self.sample_rate
        self._skipped.clear()
        self._model.reset_states()  # type: ignore[no-untyped-call]  # pipecat: unannotated
        try:
            for window in missed:
                self._model(np.frombuffer(window, np.int16) / np.float32(32768.0), rate)
        except Exception:  # as a failed batch: the window is scored from a fresh state
            log.exception("Silero VAD failed warming up on %d windows", len(missed))
            self._model.reset_states()  # type: ignore[no-untyped-call]

    # Guarded by tests/unit/test_upstream_hooks.py::test_silero_batch
    def voice_confidence(self, buffer: bytes) -> float:
        """The window's score, as ``analyze_audio`` had it from the batch."""
        if self._scored:
            return self._scored.popleft()
        return super().voice_confidence(buffer)  # not fed through analyze_audio

    # Guarded by tests/unit/test_upstream_hooks.py::test_silero_batch
    def _get_smoothed_volume(self, audio: bytes) -> float:
        """The window's smoothed volume, as ``analyze_audio`` measured it."""
        if self._volumes:
            return self._volumes.popleft()
        return super()._get_smoothed_volume(audio)

    @classmethod
    def preload(cls) -> None:
        cls(sample_rate=16000)  # any rate Silero takes; the session is what is cached
