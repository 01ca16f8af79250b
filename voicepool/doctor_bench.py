"""``voicepool doctor``'s self-benchmark: echo sessions in this process, fed speech in real time.

Each simulated session is the ``echo`` profile's pipeline as a worker's session
builds it (worker/session.py): the transport's input, the ClientGate, a
VADProcessor on the shared Silero model, EchoTurns and the transport's output,
with the session's event tap and Pipecat's metrics and heartbeats. Its
transport stands in for SmallWebRTC's: every 20 ms it decodes an Opus packet of
speech and resamples it to 16 kHz mono (aiortc's decoder, PyAV's resampler),
pushes it in, and encodes 20 ms of what the bot plays, or silence, to Opus (an
output track sends all the time). There is no RTP, SRTP, DTLS or socket.

What is measured: the CPU time of this whole process while the sessions run
(after a warm-up), divided by the seconds of audio each got and by the number
of sessions. The sessions start at different points of the speech, so their
turns and echoes overlap as on a busy worker.
"""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

if TYPE_CHECKING:
    from av import AudioFrame
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    from worker.session_events import SessionEvents

CHUNK_S = 0.02  # what a WebRTC peer sends per packet
WARMUP_S = 1.0
START_TIMEOUT_S = 15.0
SAMPLE_RATE = 16_000  # the echo profile's (worker.profiles.echo.SAMPLE_RATE)
CHUNK_BYTES = int(SAMPLE_RATE * CHUNK_S) * 2
OPUS_RATE = 48_000
FIXTURE = Path("tests/fixtures/hello.wav")


@dataclass
class BenchResult:
    sessions: int
    audio_s: float
    """Seconds of audio each session was fed while measured."""
    cpu_s: float
    wall_s: float
    behind_s: float
    """How far feeding fell behind real time by the end (0: it kept up)."""
    opus: bool
    speech: str
    """Where the speech came from."""
    user_turns: int
    bot_turns: int
    """Turns the VAD heard, and echoes played back, over all sessions."""

    @property
    def cpu_per_session(self) -> float:
        """Cores one session keeps busy: CPU seconds per second of its audio."""
        return self.cpu_s / (self.sessions * self.audio_s)

    def describe(self) -> str:
        media = (
            "Opus decoded and resampled in, Opus encoded out, as SmallWebRTC's tracks do"
            if self.opus
            else "raw 16 kHz PCM in and out (no Opus: aiortc or PyAV missing)"
        )
        return (
            f"{self.sessions} echo pipelines in this process for {self.audio_s:.1f} s "
            f"(input, Silero VAD, echo playback, output; {media}; speech from {self.speech}; "
            f"{self.user_turns} turns heard, {self.bot_turns} played back), "
            "process CPU time / audio seconds / sessions"
        )

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_per_session": round(self.cpu_per_session, 5)}


def run_benchmark(seconds: float, sessions: int) -> BenchResult:
    return asyncio.run(_measure(seconds, sessions))


# --- the speech ---------------------------------------------------------------------


def speech_pcm() -> tuple[bytes, str]:
    """16 kHz mono 16-bit speech: the test fixture where a checkout has it, else made up."""
    for path in _fixture_paths():
        if path.is_file():
            return _read_wav(path), str(path)
    return (
        synthesized_speech(),
        "synthesized vowels (no checkout here; Silero may not take them for speech)",
    )


def _fixture_paths() -> list[Path]:
    package_checkout = Path(__file__).resolve().parents[1]  # an editable install
    beside_venv = Path(sys.prefix).parent  # a venv in its checkout
    # ops/jetson/install.sh: /opt/voicepool/venv, its checkout /opt/voicepool/src
    return [package_checkout / FIXTURE, beside_venv / FIXTURE, beside_venv / "src" / FIXTURE]


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path)) as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path} is not 16 kHz mono 16-bit")
        frames: bytes = wav.readframes(wav.getnframes())
        return frames


def synthesized_speech(seed: int = 7) -> bytes:
    """Syllables of voiced vowels (harmonics of a moving pitch, shaped by formants), then
    1.5 s of silence, like the fixture's shape."""
    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
    parts = []
    for syllable in range(10):
        t = np.arange(int(SAMPLE_RATE * rng.uniform(0.18, 0.3))) / SAMPLE_RATE
        pitch = 120 + 25 * np.sin(2 * np.pi * 1.5 * t + syllable)
        phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
        voice = np.zeros_like(t)
        for harmonic in range(1, 30):
            frequency = harmonic * float(pitch.mean())
            gain = sum(
                1 / (1 + ((frequency - f) / (80 + 0.06 * f)) ** 2) for f in vowels[syllable % 4]
            )
            voice += gain / harmonic**0.5 * np.sin(harmonic * phase)
        parts += [voice * np.sin(np.pi * t / t[-1]) ** 0.6, np.zeros(int(SAMPLE_RATE * 0.02))]
    speech = np.concatenate(parts)
    speech = np.concatenate([0.5 * speech / np.abs(speech).max(), np.zeros(int(SAMPLE_RATE * 1.5))])
    return (speech * 32767).astype(np.int16).tobytes()


def _chunks(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES)]


# --- the media around the pipeline: what a WebRTC peer brings and takes ---------------


class Link(Protocol):
    def receive(self, index: int) -> bytes:
        """The index-th 20 ms of the caller's audio, as 16 kHz mono PCM."""

    def send(self, pcm: bytes) -> None:
        """20 ms of the bot's audio (16 kHz mono PCM), on its way to the caller."""


class PcmLink:
    """Raw PCM both ways: what is left without aiortc and PyAV."""

    def __init__(self, chunks: Sequence[bytes], offset: int):
        self._chunks = chunks
        self._offset = offset

    def receive(self, index: int) -> bytes:
        return self._chunks[(self._offset + index) % len(self._chunks)]

    def send(self, pcm: bytes) -> None:
        return None


class OpusLink:
    """As SmallWebRTC's tracks: Opus packets decoded by aiortc (48 kHz stereo) and resampled
    to 16 kHz mono by PyAV on the way in; 10 ms frames encoded by aiortc on the way out."""

    def __init__(self, packets: Sequence[bytes], offset: int):
        from aiortc.codecs.opus import OpusDecoder, OpusEncoder
        from av import AudioResampler

        self._packets = packets
        self._offset = offset
        self._decoder = OpusDecoder()
        self._resampler = AudioResampler("s16", "mono", SAMPLE_RATE)
        self._encoder = OpusEncoder()
        self._pts = 0

    def receive(self, index: int) -> bytes:
        from aiortc.jitterbuffer import JitterFrame

        packet = self._packets[(self._offset + index) % len(self._packets)]
        decoded = self._decoder.decode(JitterFrame(packet, timestamp=index * 960))
        pcm = [
            part.to_ndarray().astype(np.int16).tobytes()
            for frame in decoded
            for part in self._resampler.resample(cast("AudioFrame", frame))
        ]
        return b"".join(pcm)

    def send(self, pcm: bytes) -> None:
        half = len(pcm) // 2
        for part in (pcm[:half], pcm[half:]):  # the output track's 10 ms frames
            self._encoder.encode(_audio_frame(part, self._pts))
            self._pts += half // 2


def _audio_frame(pcm: bytes, pts: int) -> Any:
    from av import AudioFrame

    frame = AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16)[None, :], layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, SAMPLE_RATE)
    return frame


def opus_packets(chunks: Sequence[bytes]) -> list[bytes] | None:
    """The speech as a browser would send it (one Opus packet per 20 ms), or None without
    aiortc and PyAV."""
    try:
        from aiortc.codecs.opus import OpusEncoder
    except ImportError:
        return None
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for index, chunk in enumerate(chunks):
        payloads, _ = encoder.encode(_audio_frame(chunk, index * len(chunk) // 2))
        packets += payloads
    return packets


# --- one simulated session --------------------------------------------------------------


def _transport_classes() -> tuple[type[Any], type[Any]]:
    """Pipecat's transport ends for the benchmark (made when Pipecat is imported)."""
    from pipecat.frames.frames import OutputAudioRawFrame, StartFrame
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.base_output import BaseOutputTransport
    from pipecat.transports.base_transport import TransportParams

    class FedInput(BaseInputTransport):
        """Audio comes in when the benchmark pushes it."""

        async def start(self, frame: StartFrame) -> None:
            await super().start(frame)
            await self.set_transport_ready(frame)

    class PlayoutOutput(BaseOutputTransport):
        """Holds what the bot says until ``take`` plays it out, 20 ms at a time (a write
        returns once its audio is played, as SmallWebRTC's output track does)."""

        def __init__(self, params: TransportParams):
            super().__init__(params)
            self._queued: deque[tuple[bytes, asyncio.Future[bool]]] = deque()

        async def start(self, frame: StartFrame) -> None:
            await super().start(frame)
            await self.set_transport_ready(frame)

        async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
            played = asyncio.get_running_loop().create_future()
            self._queued.append((frame.audio, played))
            return bool(await played)

        def take(self, size: int) -> bytes:
            out = bytearray()
            while self._queued and len(out) < size:
                audio, played = self._queued.popleft()
                room = size - len(out)
                out += audio[:room]
                if len(audio) > room:
                    self._queued.appendleft((audio[room:], played))
                elif not played.done():
                    played.set_result(True)
            return bytes(out) + bytes(size - len(out))

    return FedInput, PlayoutOutput


class _Publisher:
    """The session's event publisher, minus Redis: the turns are counted by SessionEvents."""

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        return None


@dataclass
class SimulatedSession:
    link: Link
    input: Any
    output: Any
    pipeline: PipelineWorker
    runner: WorkerRunner
    events: SessionEvents
    started: asyncio.Event

    async def step(self, tick: int) -> None:
        from pipecat.frames.frames import InputAudioRawFrame

        pcm = self.link.receive(tick)
        if pcm:
            await self.input.push_audio_frame(
                InputAudioRawFrame(audio=pcm, sample_rate=SAMPLE_RATE, num_channels=1)
            )
        self.link.send(self.output.take(CHUNK_BYTES))


async def start_session(index: int, link: Link) -> SimulatedSession:
    """The echo profile's pipeline, built by the worker's own build_pipeline_worker."""
    from pipecat.transports.base_transport import TransportParams
    from pipecat.workers.runner import WorkerRunner

    from worker.options import WorkerOptions
    from worker.profiles import SessionContext
    from worker.profiles.echo import EchoProfile
    from worker.publisher import EventPublisher
    from worker.session import build_pipeline_worker
    from worker.session_events import SessionEvents

    profile = EchoProfile(
        SessionContext(
            session_id=f"doctor-{index}",
            meta={"profile": "echo"},
            options=WorkerOptions(redis_url="redis://unset"),
            emit=lambda _type, _data: None,
            end=lambda _reason, _message: None,
        )
    )
    await profile.prepare()
    input_class, output_class = _transport_classes()
    params = TransportParams(audio_in_enabled=True, audio_out_enabled=True)
    transport_in, transport_out = input_class(params), output_class(params)
    events = SessionEvents(cast(EventPublisher, _Publisher()))
    pipeline, _gate = build_pipeline_worker(profile, transport_in, transport_out, events)
    started = asyncio.Event()

    async def _started(_worker: object, _frame: object) -> None:
        started.set()

    pipeline.add_event_handler("on_pipeline_started", _started)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(pipeline)
    return SimulatedSession(link, transport_in, transport_out, pipeline, runner, events, started)


# --- the measurement ------------------------------------------------------------------


async def _measure(seconds: float, sessions: int) -> BenchResult:
    from worker.profiles.echo import EchoProfile

    EchoProfile.preload()  # once per worker process, not per session: not measured
    pcm, source = speech_pcm()
    chunks = _chunks(pcm)
    packets = opus_packets(chunks)
    links: list[Link] = []
    for index in range(sessions):
        offset = index * len(chunks) // sessions  # turns overlap as on a busy worker
        links.append(OpusLink(packets, offset) if packets else PcmLink(chunks, offset))
    simulated = [await start_session(i, link) for i, link in enumerate(links)]
    runs = [asyncio.create_task(s.runner.run()) for s in simulated]
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await asyncio.gather(*(s.started.wait() for s in simulated))
        cpu_s, wall_s, audio_s, behind_s = await _feed(simulated, seconds)
    finally:
        for session in simulated:
            await session.pipeline.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    return BenchResult(
        sessions=sessions,
        audio_s=audio_s,
        cpu_s=cpu_s,
        wall_s=wall_s,
        behind_s=behind_s,
        opus=packets is not None,
        speech=source,
        user_turns=sum(s.events.user_turns for s in simulated),
        bot_turns=sum(s.events.bot_turns for s in simulated),
    )


async def _feed(
    sessions: list[SimulatedSession], seconds: float
) -> tuple[float, float, float, float]:
    """20 ms of audio to every session every 20 ms, on an absolute schedule; the CPU and
    wall time after the warm-up, the audio seconds then fed, and how far behind it ended."""
    warmup_ticks = round(WARMUP_S / CHUNK_S)
    ticks = warmup_ticks + max(round(seconds / CHUNK_S), 1)
    start = time.monotonic()
    cpu_start = wall_start = 0.0
    for tick in range(ticks):
        delay = start + tick * CHUNK_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if tick == warmup_ticks:
            cpu_start, wall_start = time.process_time(), time.monotonic()
        for session in sessions:
            await session.step(tick)
    await asyncio.sleep(max(start + ticks * CHUNK_S - time.monotonic(), 0))
    end = time.monotonic()
    behind_s = max(end - (start + ticks * CHUNK_S), 0.0)
    audio_s = (ticks - warmup_ticks) * CHUNK_S
    return time.process_time() - cpu_start, end - wall_start, audio_s, behind_s
