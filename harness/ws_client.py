"""A WebSocket client as Pipecat's clients are: protobuf frames both ways (tests, drills)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
)
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from websockets.asyncio.client import ClientConnection

from harness.waiting import eventually

FRAME_MS = 20
LOOP_PAUSE_S = 2.5  # between repeats of a looped WAV: the echo bot's turn


class ProtobufClient:
    """A WebSocket client as Pipecat's clients are: protobuf frames both ways.

    It streams a WAV in real time in 20 ms audio frames (then silence, so the
    call stays alive), decodes every frame the bot sends, and says it is ready
    the way Pipecat's JS client does (RTVI ``client-ready``).
    """

    def __init__(self, websocket: ClientConnection, wav: Path | None = None, *, loop: bool = False):
        self.ws = websocket
        self.serializer = ProtobufFrameSerializer()
        self.audio: list[tuple[np.ndarray, int]] = []  # (samples, sample rate)
        self.messages: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._samples: np.ndarray
        self._rate: int
        self._samples, self._rate = _read_wav(wav) if wav else (np.zeros(0, np.int16), 16000)
        if loop:  # say it again and again, with a pause the echo bot answers in
            pause = np.zeros(int(self._rate * LOOP_PAUSE_S), np.int16)
            self._samples = np.concatenate([self._samples, pause])
        self._loop = loop
        self.sending_since = math.nan
        self.period_s = len(self._samples) / self._rate  # one loop of the WAV (and pause)
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send())]

    @classmethod
    async def connect(
        cls, url: str, wav: Path | None = None, *, loop: bool = False, **connect: Any
    ) -> ProtobufClient:
        """``connect``: more for ``websockets.connect`` (``ssl``, or ``host`` and
        ``server_hostname`` to reach a name no resolver knows)."""
        websocket = await websockets.connect(url, max_size=None, open_timeout=5, **connect)
        client = cls(websocket, wav, loop=loop)
        about = {"version": "1.0.0", "about": {"library": "tests"}}
        await client.send_message(
            {"label": "rtvi-ai", "type": "client-ready", "id": "c1", "data": about}
        )
        return client

    async def send_message(self, message: dict[str, Any]) -> None:
        data = await self.serializer.serialize(OutputTransportMessageFrame(message=message))
        assert data is not None
        await self.ws.send(data)

    async def _send(self) -> None:
        # The client's *output* is the bot's input: Pipecat's serializer encodes audio
        # frames as the one protobuf AudioRawFrame, which the server decodes as input.
        step = self._rate * FRAME_MS // 1000
        start, n = time.monotonic(), 0
        self.sending_since = start  # when the first frame went (the WAV's time zero)
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                at = n * step % len(self._samples) if self._loop else n * step
                chunk = self._samples[at : at + step]
                if len(chunk) < step:
                    chunk = np.concatenate([chunk, np.zeros(step - len(chunk), np.int16)])
                frame = OutputAudioRawFrame(
                    audio=chunk.tobytes(), sample_rate=self._rate, num_channels=1
                )
                data = await self.serializer.serialize(frame)
                assert data is not None
                await self.ws.send(data)
                n += 1
                # Pacing: one 20 ms frame every 20 ms, as a microphone sends them.
                await asyncio.sleep(max(start + n * FRAME_MS / 1000 - time.monotonic(), 0))

    async def _receive(self) -> None:
        try:
            async for data in self.ws:
                frame = await self.serializer.deserialize(data)
                if isinstance(frame, InputAudioRawFrame):  # how the serializer names audio
                    samples = np.frombuffer(frame.audio, dtype="<i2")
                    self.audio.append((samples, frame.sample_rate))
                elif isinstance(frame, InputTransportMessageFrame):
                    self.messages.append(frame.message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def loudest_rms(self, window_s: float = 0.1, *, since: int = 0) -> float:
        """Loudest RMS over ``window_s`` of the bot's audio (int16 scale), from frame
        ``since`` on (pass an earlier ``len(client.audio)`` to ignore what came before)."""
        if len(self.audio) <= since:
            return 0.0
        rate = self.audio[-1][1]
        samples = np.concatenate([a for a, _ in self.audio[since:]]).astype(np.float64)
        window = int(rate * window_s)
        if len(samples) < window:
            return 0.0
        energy = np.concatenate([[0.0], np.cumsum(samples**2)])
        return float(np.sqrt(np.max(energy[window:] - energy[:-window]) / window))

    def got_message(self, kind: str) -> bool:
        return any(m.get("type") == kind for m in self.messages)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.ws.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def talk(ws_url: str, wav: Path, echo_rms: float) -> None:
    """Connect, hear bot-ready and our words played back (louder than ``echo_rms``), leave."""
    client = await ProtobufClient.connect(ws_url, wav)
    try:
        await eventually(lambda: client.got_message("bot-ready"), what="RTVI bot-ready")
        await eventually(lambda: client.loudest_rms() > echo_rms, timeout=20, what="echo")
    finally:
        await client.close()


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()
