"""voicepool's ``echo`` pipeline as a bot for Pipecat's development runner (ops/bench/anchor.py).

One process: ``pipecat.runner.run.main()`` serves ``POST /start`` and ``/ws-client``
under uvicorn, and runs ``bot(runner_args)`` as an asyncio task per WebSocket
client, as Pipecat's example bots are run. The pipeline is the one a voicepool
worker builds for an ``echo`` session (worker/profiles/echo.py,
worker/transports/websocket.py, worker/session.py)::

    transport.input() → VADProcessor(Silero, stop_secs 0.5) → EchoTurns → transport.output()

with the same transport settings (FastAPIWebsocketTransport, ProtobufFrameSerializer,
bot audio resampled to 24 kHz for Pipecat's JS client, no Origin allow-list) and
PipelineParams (16 kHz in and out, metrics and usage metrics on). Not here:
what a voicepool session adds around it (its ClientGate, its event observer
publishing to Redis, pipeline heartbeats, session limits, reconnects).

``--vad per-session``: a fresh ``SileroVADAnalyzer`` per session, as Pipecat's
examples create one (the ONNX model is loaded in each session's start).
``--vad shared``: voicepool's ``SharedSileroVADAnalyzer`` (worker/vad.py): the
model is loaded once, when the server starts, and each session gets its own
recurrent state around the one inference session.

``--log-level`` (default INFO, what the benchmark's voicepool processes log at):
the runner's ``main()`` sets loguru to DEBUG; this sets it back to the given
level once the server starts.

    python ops/bench/runner_bots/echo_bot.py -t websocket --host 127.0.0.1 --port 7860 \\
        --ws-auth token --vad shared
"""

from __future__ import annotations

import argparse
import sys

from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.runner.run import app, main
from pipecat.runner.types import RunnerArguments, WebSocketRunnerArguments
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

from worker.profiles.echo import SAMPLE_RATE, EchoTurns
from worker.transports.websocket import CLIENT_PLAYBACK_RATE
from worker.vad import SharedSileroVADAnalyzer

VAD_STOP_SECS = 0.5  # EchoProfile's default


def _vad(mode: str) -> SileroVADAnalyzer:
    params = VADParams(stop_secs=VAD_STOP_SECS)
    if mode == "shared":
        return SharedSileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=params)
    return SileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=params)


async def bot(runner_args: RunnerArguments) -> None:
    assert isinstance(runner_args, WebSocketRunnerArguments), "run with -t websocket"
    cli = runner_args.cli_args
    transport = FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_out_sample_rate=CLIENT_PLAYBACK_RATE,
            serializer=ProtobufFrameSerializer(),
            allowed_origins=[],
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=_vad(cli.vad)),
            EchoTurns(),
            transport.output(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=SAMPLE_RATE,
            audio_out_sample_rate=SAMPLE_RATE,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: object, _client: object) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


def _run() -> None:
    parser = argparse.ArgumentParser(description="voicepool's echo pipeline on Pipecat's runner")
    parser.add_argument("--vad", choices=["per-session", "shared"], default="per-session")
    parser.add_argument("--log-level", default="INFO")
    args, _ = parser.parse_known_args()

    def on_startup() -> None:  # after main() has set up loguru, before the first request
        logger.remove()
        logger.add(sys.stderr, level=args.log_level.upper())
        if args.vad == "shared":
            SharedSileroVADAnalyzer.preload()  # as a voicepool worker does when it starts
        logger.info(f"echo bot ready: vad={args.vad}")

    app.router.on_startup.append(on_startup)
    main(parser)  # the runner's own flags, next to --vad and --log-level


if __name__ == "__main__":
    _run()
