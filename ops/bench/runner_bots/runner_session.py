"""What the bots here share: a session's transport with a voicepool worker's settings, its
pipeline run as Pipecat's runner runs a bot, and the runner's start-up.

This module imports nothing of voicepool, so a bot that imports nothing else of it either
(assistant_bot.py) holds only what a Pipecat user's would: Pipecat, its runner, its own code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from loguru import logger
from pipecat.frames.frames import Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.runner.run import app, main
from pipecat.runner.types import (
    RunnerArguments,
    SmallWebRTCRunnerArguments,
    WebSocketRunnerArguments,
)
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

# worker/transports/websocket.py's CLIENT_PLAYBACK_RATE: Pipecat's JS client plays bot audio
# at 24 kHz whatever the frame says, so a worker's WebSocket output resamples to it.
CLIENT_PLAYBACK_RATE = 24_000


def session_transport(runner_args: RunnerArguments) -> BaseTransport:
    """The transport a voicepool worker gives a session of this kind, with its settings.

    WebSocket (worker/transports/websocket.py): protobuf frames, bot audio at 24 kHz, no
    Origin allow-list (the runner's token is the credential, as a worker's is). SmallWebRTC
    (worker/transports/smallwebrtc.py): audio in and out, Pipecat's defaults otherwise.
    """
    if isinstance(runner_args, WebSocketRunnerArguments):
        return FastAPIWebsocketTransport(
            websocket=runner_args.websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                audio_out_sample_rate=CLIENT_PLAYBACK_RATE,
                serializer=ProtobufFrameSerializer(),
                allowed_origins=[],
            ),
        )
    if isinstance(runner_args, SmallWebRTCRunnerArguments):
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

        return SmallWebRTCTransport(
            webrtc_connection=runner_args.webrtc_connection,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
    raise TypeError(f"run with -t websocket or -t webrtc, not {type(runner_args).__name__}")


async def run_session(
    runner_args: RunnerArguments,
    transport: BaseTransport,
    processors: Sequence[FrameProcessor],
    *,
    sample_rate: int,
    on_connected: Sequence[Frame] = (),
) -> None:
    """Run one session's pipeline until its client leaves, as Pipecat's example bots do.

    PipelineParams as a voicepool session's (``sample_rate`` in and out, metrics and usage
    metrics on); Pipecat's defaults for the rest. ``on_connected``: frames queued when the
    client connects (a greeting's ``LLMRunFrame``).
    """
    worker = PipelineWorker(
        Pipeline(list(processors)),
        params=PipelineParams(
            audio_in_sample_rate=sample_rate,
            audio_out_sample_rate=sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    async def connected(_transport: object, _client: object) -> None:
        if on_connected:
            await worker.queue_frames(list(on_connected))

    async def disconnected(_transport: object, _client: object) -> None:
        await worker.cancel()

    transport.add_event_handler("on_client_connected", connected)
    transport.add_event_handler("on_client_disconnected", disconnected)
    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


def cli_args(runner_args: RunnerArguments) -> argparse.Namespace:
    """The bot's own flags (and the runner's), as the runner parsed them."""
    assert runner_args.cli_args is not None, "run through the runner's main()"
    return runner_args.cli_args


def serve(
    parser: argparse.ArgumentParser,
    name: str,
    on_startup: Callable[[argparse.Namespace], None] | None = None,
) -> None:
    """Run Pipecat's development runner with the bot's flags next to its own.

    ``--log-level`` (default INFO): the runner's ``main()`` sets loguru to DEBUG; this
    sets it back once the server starts. ``on_startup`` runs then too, before the first
    request.
    """
    parser.add_argument("--log-level", default="INFO")
    args, _ = parser.parse_known_args()

    def startup() -> None:  # after main() has set up loguru
        logger.remove()
        logger.add(sys.stderr, level=args.log_level.upper())
        if on_startup is not None:
            on_startup(args)
        logger.info(f"{name} ready")

    app.router.on_startup.append(startup)
    main(parser)
