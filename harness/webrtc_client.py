"""A minimal aiortc peer for integration tests against a SmallWebRTC server.

It plays a WAV file into the call in real time (then silence, so the connection
stays alive) and records whatever audio the remote peer sends back as mono s16
at 16 kHz, with helpers to wait for and measure that audio.
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

FRAME_MS = 20  # matches aiortc's audio packetization (AUDIO_PTIME)
RECEIVED_SAMPLE_RATE = 16_000
_BYTES_PER_SAMPLE = 2  # s16
_POLL_S = 0.05

SendOffer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_original_get_host_addresses = aioice.ice.get_host_addresses


def _host_addresses_with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    # Loopback first, but keep the real interfaces too, so a peer in another
    # (unpatched) process, which only offers non-loopback candidates, is still
    # reachable.
    addresses = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.insert(0, "127.0.0.1")
    return addresses


def allow_loopback_ice() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate (tests only).

    aioice drops 127.0.0.1 from host candidates, so two peers on a host without
    a routable interface (e.g. a sandboxed CI container) can never connect.
    ``gather_candidates`` looks up ``aioice.ice.get_host_addresses`` at call
    time, so patching the module attribute covers every peer in this process,
    the server's as well as the client's. Idempotent.
    """
    aioice.ice.get_host_addresses = _host_addresses_with_loopback


def _read_wav_mono_s16(path: str) -> tuple[np.ndarray, int]:
    """Return the WAV's samples as mono int16 and its sample rate."""
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != _BYTES_PER_SAMPLE:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples.astype(np.int16, copy=False), rate


class WavAudioTrack(MediaStreamTrack):
    """Outgoing audio track that plays a WAV in real time, then sends silence.

    aiortc pulls frames as fast as ``recv`` returns them, so ``recv`` itself
    paces the stream: frame N is released at ``start + N * 20 ms``.
    """

    kind = "audio"

    def __init__(self, wav_path: str | None, *, loop: bool = False, pause_s: float = 0.0) -> None:
        super().__init__()
        if wav_path is None:
            self._samples, self._rate = np.zeros(0, dtype=np.int16), RECEIVED_SAMPLE_RATE
        else:
            self._samples, self._rate = _read_wav_mono_s16(wav_path)
        if loop and pause_s and len(self._samples):  # a pause after each repeat
            pause = np.zeros(int(self._rate * pause_s), dtype=np.int16)
            self._samples = np.concatenate([self._samples, pause])
        self._repeat = loop and len(self._samples) > 0
        self._frame_samples = self._rate * FRAME_MS // 1000
        self._time_base = fractions.Fraction(1, self._rate)
        self._pts = 0  # samples sent so far; also the next frame's pts
        self._start: float | None = None
        self.playback_finished = asyncio.Event()
        if not self._repeat and len(self._samples) == 0:
            self.playback_finished.set()

    @property
    def sample_rate(self) -> int:
        return self._rate

    def _next_chunk(self) -> np.ndarray:
        n, total, pos = self._frame_samples, len(self._samples), self._pts
        if self._repeat:
            idx = (pos + np.arange(n)) % total
            return self._samples[idx]
        chunk = self._samples[pos : pos + n]
        if pos + n >= total:
            self.playback_finished.set()
        if len(chunk) < n:  # last partial frame, or past the end: pad with silence
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), dtype=np.int16)])
        return chunk

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            delay = self._start + self._pts / self._rate - now
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: frames go out in real time

        frame = av.AudioFrame.from_ndarray(
            self._next_chunk().reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += self._frame_samples
        return frame


class WebRTCTestClient:
    """One aiortc peer connection: sends a WAV, records the remote audio.

    Usage::

        client = WebRTCTestClient("tests/fixtures/hello.wav")
        answer = await client.connect(send_offer)  # send_offer(offer_dict) -> answer_dict
        await client.wait_connected()
        await client.wait_for_audio(min_rms=300)
        await client.close()
    """

    def __init__(
        self,
        wav_path: str | None,
        *,
        loop_audio: bool = False,
        loop_pause_s: float = 0.0,
        configuration: RTCConfiguration | None = None,
    ) -> None:
        self.track = WavAudioTrack(wav_path, loop=loop_audio, pause_s=loop_pause_s)
        self.configuration = configuration or RTCConfiguration(iceServers=[])
        self.pc_id: str | None = None
        # All remote audio so far, mono s16 little-endian at RECEIVED_SAMPLE_RATE.
        self.received_pcm = bytearray()
        self._pc: RTCPeerConnection | None = None
        self._recv_tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._ice_complete = asyncio.Event()

    @property
    def pc(self) -> RTCPeerConnection:
        if self._pc is None:
            raise RuntimeError("connect() has not been called")
        return self._pc

    async def connect(self, send_offer: SendOffer) -> dict[str, Any]:
        """Offer a sendrecv audio call, apply the answer and return it.

        ``send_offer`` gets ``{"sdp", "type": "offer"}`` and must return the
        server's answer ``{"sdp", "type", "pc_id"}``. No trickle ICE: the offer
        is sent once gathering is complete, with all candidates in the SDP.
        """
        if self._pc is not None:
            raise RuntimeError("already connected")
        pc = self._pc = RTCPeerConnection(self.configuration)

        @pc.on("connectionstatechange")
        def _on_connection_state() -> None:
            # Waking the waiter on failure too, so it can raise instead of timing out.
            if pc.connectionState in ("connected", "failed", "closed"):
                self._connected.set()

        @pc.on("icegatheringstatechange")
        def _on_gathering_state() -> None:
            if pc.iceGatheringState == "complete":
                self._ice_complete.set()

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._recv_tasks.append(asyncio.create_task(self._consume_audio(track)))

        # Audio must be the first m-line: SmallWebRTC maps transceiver 0 to the mic.
        pc.addTransceiver(self.track, direction="sendrecv")

        await pc.setLocalDescription(await pc.createOffer())
        # aiortc gathers inside setLocalDescription; this is a cheap guard.
        if pc.iceGatheringState != "complete":
            await self._ice_complete.wait()

        offer = pc.localDescription
        answer = await send_offer({"sdp": offer.sdp, "type": offer.type})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self.pc_id = answer.get("pc_id")
        return answer

    # A `timeout` argument (ASYNC109) reads better in tests than wrapping each call.
    async def wait_connected(self, timeout: float = 10) -> None:
        """Wait for the peer connection to reach ``connected``."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()
        if self.pc.connectionState != "connected":
            raise ConnectionError(f"peer connection is {self.pc.connectionState}")

    async def wait_playback_finished(self, timeout: float = 30) -> None:
        """Wait until the whole WAV has been sent (never returns with loop_audio)."""
        async with asyncio.timeout(timeout):
            await self.track.playback_finished.wait()

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        # aiortc decodes Opus to 48 kHz stereo; normalise to what tests compare against.
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RECEIVED_SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # remote track ended or connection closed
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for out in resampler.resample(frame):
                self.received_pcm += out.to_ndarray().tobytes()

    def _received_samples(self, start_s: float = 0.0) -> np.ndarray:
        start = int(start_s * RECEIVED_SAMPLE_RATE) * _BYTES_PER_SAMPLE
        # Slice (a copy): a numpy view would pin the bytearray and block appends.
        return np.frombuffer(self.received_pcm[start:], dtype=np.int16)

    def received_seconds(self) -> float:
        """Duration of remote audio received so far."""
        return len(self.received_pcm) / _BYTES_PER_SAMPLE / RECEIVED_SAMPLE_RATE

    def received_rms(self) -> float:
        """RMS of all received audio, int16 scale (0.0 if nothing yet)."""
        samples = self._received_samples().astype(np.float64)
        return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0

    def _max_window_rms(self, start_s: float, window: int) -> tuple[float, float]:
        """Loudest ``window``-sample RMS after ``start_s`` (hop 20 ms), and where it ends."""
        samples = self._received_samples(start_s).astype(np.float64)
        if len(samples) < window:
            return 0.0, start_s
        # Prefix sums of squares give every window's energy in one pass.
        energy = np.concatenate([[0.0], np.cumsum(samples**2)])
        hop = RECEIVED_SAMPLE_RATE * FRAME_MS // 1000
        ends = np.arange(window, len(samples) + 1, hop)
        rms = np.sqrt((energy[ends] - energy[ends - window]) / window)
        best = int(np.argmax(rms))
        return float(rms[best]), start_s + ends[best] / RECEIVED_SAMPLE_RATE

    async def wait_for_audio(
        self,
        min_rms: float,
        *,
        window_s: float = 0.5,
        timeout: float = 15,
        start_s: float = 0.0,
    ) -> float:
        """Wait until some ``window_s`` window of received audio has RMS above ``min_rms``.

        Only audio from ``start_s`` seconds into the received stream is
        considered (pass a prior ``received_seconds()`` to ignore earlier audio).
        Returns the stream offset, in seconds, at which the first loud window
        found ends; raises ``TimeoutError`` with the loudest RMS seen otherwise.
        """
        window = max(1, int(window_s * RECEIVED_SAMPLE_RATE))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        best = 0.0
        scanned_s = start_s
        while True:
            rms, end_s = self._max_window_rms(scanned_s, window)
            best = max(best, rms)
            if rms > min_rms:
                return end_s
            # Re-scan only the tail: windows overlapping the new audio.
            scanned_s = max(scanned_s, self.received_seconds() - window_s)
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"no {window_s}s window above RMS {min_rms} within {timeout}s "
                    f"(loudest {best:.1f}, received {self.received_seconds():.2f}s)"
                )
            # Not harness.waiting.eventually: the scan goes on from where it stopped, and
            # callers (ops/drills) catch the TimeoutError with the loudest RMS seen.
            await asyncio.sleep(_POLL_S)

    async def close(self) -> None:
        """Stop sending, close the peer connection and the receive tasks."""
        self.track.stop()
        if self._pc is not None:
            await self._pc.close()
        for task in self._recv_tasks:
            task.cancel()
        await asyncio.gather(*self._recv_tasks, return_exceptions=True)
        self._recv_tasks.clear()

    async def __aenter__(self) -> WebRTCTestClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
