"""voicepool's ``assistant`` pipeline as a plain Pipecat bot, for Pipecat's development runner.

The baseline of ops/bench/density.py and density_webrtc.py: one such process per session.
``pipecat.runner.run.main()`` serves ``POST /start`` and ``/ws-client`` (``-t websocket``)
or ``POST /api/offer`` (``-t webrtc``, SmallWebRTC) under uvicorn, and runs
``bot(runner_args)`` as an asyncio task per client. The pipeline is the one a voicepool
worker builds for an ``assistant`` session (worker/profiles/assistant.py, worker/session.py,
worker/transports/), written from Pipecat's own parts::

    transport.input() → user context aggregator → OpenAIRealtimeLLMService
        → transport.output() → assistant context aggregator

with what a voicepool session with the default options sends the model (model
``gpt-realtime``, its default instructions for "Archie", voice ``marin``, semantic VAD turn
detection by the model, ``near_field`` noise reduction, ``gpt-4o-transcribe``
transcription, no tools: worker/options.py's AssistantConfig defaults, written out here
rather than imported, so the process holds nothing of voicepool), PCM16 24 kHz both ways,
the transport settings of a voicepool worker (runner_session.py), and the greeting
(``LLMRunFrame``) when the client connects.

What a voicepool session has that this bot lacks: its Realtime service subclass
(reconnecting a dropped model socket, holding answers while the caller is away, typed
text, failures ended with a reason), the model socket opened *without* permessage-deflate
(this bot keeps the ``websockets`` default, as Pipecat does: it compresses every base64
audio event it sends and inflates every one it gets), its ClientGate, the event
tap publishing to Redis, Pipecat's service-metrics and user-bot-latency observers,
pipeline heartbeats, session limits, client reconnects; and Pipecat's turn tracking,
which voicepool turns off, is on here (Pipecat's default). Alike in both: the context
aggregator pair, with Pipecat's defaults, loads its Smart Turn model (onnxruntime) with the
first session, about 48 MB of this process's RSS; a voicepool worker has onnxruntime
loaded already, for Silero.

``--openai-base-url``: the Realtime endpoint (density.py points it at its fake model);
``--openai-api-key`` (default: ``OPENAI_API_KEY``; any string for the fake).
``--ice-host ADDRESS`` (repeatable): offer only these host addresses as ICE candidates, as a
voicepool worker does with ``VOICEPOOL_WEBRTC_HOST_ADDRESSES`` (aioice leaves out loopback
otherwise).

    OPENAI_API_KEY=sk-... python ops/bench/runner_bots/assistant_bot.py -t websocket \\
        --host 127.0.0.1 --port 7860 --ws-auth token \\
        --openai-base-url ws://127.0.0.1:8765/v1/realtime
"""

from __future__ import annotations

import argparse
import os

from pipecat.frames.frames import LLMRunFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.runner.types import RunnerArguments
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from runner_session import cli_args, run_session, serve, session_transport

SAMPLE_RATE = 24000  # the Realtime API's PCM16 rate, in and out: no resampling
MODEL = "gpt-realtime"
INSTRUCTIONS = """You are Archie, a friendly, concise voice assistant.
Speak naturally and briefly: your words are spoken aloud, so avoid lists, markdown and long
numbers. When a task needs research or several steps, hand it to a tool and tell the user
you are on it; you can keep talking while it works, and report the result when it arrives.
If a tool fails, say what went wrong in plain words."""


def session_properties() -> rt.SessionProperties:
    return rt.SessionProperties(
        instructions=INSTRUCTIONS,
        audio=rt.AudioConfiguration(
            input=rt.AudioInput(
                transcription=rt.InputAudioTranscription(model="gpt-4o-transcribe"),
                noise_reduction=rt.InputAudioNoiseReduction(type="near_field"),
                turn_detection=rt.SemanticTurnDetection(),
            ),
            output=rt.AudioOutput(voice="marin"),
        ),
    )


async def bot(runner_args: RunnerArguments) -> None:
    transport = session_transport(runner_args)
    llm = OpenAIRealtimeLLMService(
        api_key=cli_args(runner_args).openai_api_key,
        base_url=cli_args(runner_args).openai_base_url,
        settings=OpenAIRealtimeLLMService.Settings(
            model=MODEL, session_properties=session_properties()
        ),
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(context, realtime_service_mode=True)
    pipeline = [
        transport.input(),
        aggregators.user(),
        llm,
        transport.output(),
        aggregators.assistant(),
    ]
    await run_session(
        runner_args, transport, pipeline, sample_rate=SAMPLE_RATE, on_connected=[LLMRunFrame()]
    )


def _restrict_ice_hosts(args: argparse.Namespace) -> None:
    if not args.ice_host:
        return
    import aioice.ice

    hosts = list(args.ice_host)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in hosts if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]


def _run() -> None:
    parser = argparse.ArgumentParser(description="voicepool's assistant pipeline as a plain bot")
    parser.add_argument("--openai-base-url", default="wss://api.openai.com/v1/realtime")
    parser.add_argument("--openai-api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--ice-host", action="append", default=[], metavar="ADDRESS")
    serve(parser, "assistant bot", _restrict_ice_hosts)


if __name__ == "__main__":
    _run()
