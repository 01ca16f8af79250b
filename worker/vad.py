"""Voice activity detection shared by the profiles: one Silero model per worker process."""

from __future__ import annotations

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD whose ONNX inference session is loaded once per process, run inline.

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
    parallelism; the loop is held ~0.2 ms per frame instead.
    """

    _loaded: SileroVADAnalyzer | None = None

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

    # Replaces Pipecat's per-frame executor hop; guarded by
    # tests/unit/test_upstream_hooks.py::test_vad_analyze_audio
    async def analyze_audio(self, buffer: bytes) -> VADState:
        return self._run_analyzer(buffer)

    @classmethod
    def preload(cls) -> None:
        cls(sample_rate=16000)  # any rate Silero takes; the session is what is cached
