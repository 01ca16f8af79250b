"""voicepool's ``echo`` pipeline as a bot for Pipecat's development runner (ops/bench/anchor.py).

One process: ``pipecat.runner.run.main()`` serves ``POST /start`` and ``/ws-client``
under uvicorn, and runs ``bot(runner_args)`` as an asyncio task per WebSocket
client, as Pipecat's example bots are run. The pipeline is the one a voicepool
worker builds for an ``echo`` session (worker/profiles/echo.py,
worker/transports/websocket.py, worker/session.py)::

    transport.input() → VADProcessor(Silero, stop_secs 0.5) → EchoTurns → transport.output()

with the same transport settings (FastAPIWebsocketTransport, ProtobufFrameSerializer,
bot audio resampled to 24 kHz for Pipecat's JS client, no Origin allow-list) and
PipelineParams (16 kHz in and out, metrics and usage metrics on), as runner_session.py
sets them up for every bot here. Not here:
what a voicepool session adds around it (its ClientGate, its event tap
publishing to Redis, pipeline heartbeats, session limits, reconnects).

``--vad per-session``: a fresh ``SileroVADAnalyzer`` per session, as Pipecat's
examples create one (the ONNX model is loaded in each session's start).
``--vad shared``: voicepool's ``SharedSileroVADAnalyzer`` (worker/vad.py): the
model is loaded once, when the server starts, and each session gets its own
recurrent state around the one inference session. Each frame is still analysed
as Pipecat does it, on a thread of the session's analyzer (voicepool runs that
analysis on the event loop instead: a change of its own, so not lent to the anchor).

``--log-level`` (default INFO, what the benchmark's voicepool processes log at):
the runner's ``main()`` sets loguru to DEBUG; this sets it back to the given
level once the server starts.

    python ops/bench/runner_bots/echo_bot.py -t websocket --host 127.0.0.1 --port 7860 \\
        --ws-auth token --vad shared
"""

from __future__ import annotations

import argparse

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.runner.types import RunnerArguments, WebSocketRunnerArguments
from runner_session import cli_args, run_session, serve, session_transport

from worker.profiles.echo import SAMPLE_RATE, EchoTurns
from worker.vad import SharedSileroVADAnalyzer

VAD_STOP_SECS = 0.5  # EchoProfile's default


class SharedModelSileroVADAnalyzer(SharedSileroVADAnalyzer):
    """The shared model, each frame analysed on the analyzer's thread as Pipecat does."""

    analyze_audio = VADAnalyzer.analyze_audio


def _vad(mode: str) -> SileroVADAnalyzer:
    params = VADParams(stop_secs=VAD_STOP_SECS)
    if mode == "shared":
        return SharedModelSileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=params)
    return SileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=params)


async def bot(runner_args: RunnerArguments) -> None:
    assert isinstance(runner_args, WebSocketRunnerArguments), "run with -t websocket"
    transport = session_transport(runner_args)
    vad = VADProcessor(vad_analyzer=_vad(cli_args(runner_args).vad))
    pipeline = [transport.input(), vad, EchoTurns(), transport.output()]
    await run_session(runner_args, transport, pipeline, sample_rate=SAMPLE_RATE)


def _preload(args: argparse.Namespace) -> None:
    if args.vad == "shared":
        SharedSileroVADAnalyzer.preload()  # as a voicepool worker does when it starts


def _run() -> None:
    parser = argparse.ArgumentParser(description="voicepool's echo pipeline on Pipecat's runner")
    parser.add_argument("--vad", choices=["per-session", "shared"], default="per-session")
    serve(parser, "echo bot", _preload)


if __name__ == "__main__":
    _run()
