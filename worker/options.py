"""How one worker process is configured: one dataclass, each field saying what it does."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Literal

from shared import __version__
from shared.fleet import POLL_STALL_S
from shared.settings import Settings
from worker.tools.config import ToolSpec, load_tools

# Timing constants that are not worth a setting.
JOB_TIMEOUT_S = 30.0  # a start job (pick up → ready) that takes longer is broken
SIGNAL_BLOCK_S = 1.0  # how long the control-message loop blocks on Redis per call
SAFETY_POLL_S = 1.0  # with no ring, an idle worker still reads its queue this often
CONNECT_TIMEOUT_S = 60.0  # a ready session whose client never sends an offer ends


DEFAULT_INSTRUCTIONS = """You are {name}, a friendly, concise voice assistant.
Speak naturally and briefly: your words are spoken aloud, so avoid lists, markdown and long
numbers. When a task needs research or several steps, hand it to a tool and tell the user
you are on it; you can keep talking while it works, and report the result when it arrives.
If a tool fails, say what went wrong in plain words."""


WS_PATH = "/ws"  # the one route of a worker's WebSocket listener


@dataclass
class AssistantConfig:
    """How the ``assistant`` profile talks to OpenAI's Realtime model."""

    api_key: str | None = field(default=None, repr=False)
    """OPENAI_API_KEY. Never logged (excluded from repr) and never put in events."""

    base_url: str = "wss://api.openai.com/v1/realtime"
    """Realtime WebSocket endpoint (Azure, a proxy, or a local test double)."""

    model: str = "gpt-realtime"
    name: str = "Archie"
    voice: str = "marin"
    instructions: str = DEFAULT_INSTRUCTIONS
    turn_detection: str = "semantic_vad"
    """semantic_vad (default), server_vad, or local (Silero VAD in the worker)."""

    noise_reduction: str = "near_field"
    """near_field, far_field or off."""

    transcription_model: str = "gpt-4o-transcribe"
    tools: list[ToolSpec] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> AssistantConfig:
        instructions = settings.assistant_instructions or DEFAULT_INSTRUCTIONS
        if settings.assistant_instructions_file:
            instructions = settings.assistant_instructions_file.read_text()
        return cls(
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            name=settings.assistant_name,
            voice=settings.assistant_voice,
            instructions=instructions.replace("{name}", settings.assistant_name),
            turn_detection=settings.turn_detection,
            noise_reduction=settings.noise_reduction,
            transcription_model=settings.transcription_model,
            tools=load_tools(settings.tools_file),
        )


def _default_worker_id(pool: str) -> str:
    return f"{socket.gethostname()}-{pool}-{os.getpid()}"


@dataclass
class WorkerOptions:
    redis_url: str
    """Redis holding the queues, heartbeats and event streams."""

    pool: str = "server"
    """The pool this worker serves; it pulls start jobs from that pool's queue only."""

    capacity: int = 4
    """Concurrent sessions this process runs. Pick from benchmarks (`make bench`):
    dev default 4; a Jetson with 4 weak cores runs fewer than a server core."""

    warm_pipelines: int = 1
    """Pipelines of each profile that can be built ahead (``echo``) kept built and running
    for WebSocket sessions to take (worker/warm.py): their start binds instead of building.
    0: none."""

    seats: bool = True
    """Offer a free slot with a pipeline running as a seat while waiting for work
    (shared/seats.py): a new WebSocket session is made ready here in the API's create
    step, one hop sooner than through the queue. Needs ``warm_pipelines``."""

    warm_model_sockets: int = 0
    """Realtime model sockets kept open for ``assistant`` sessions to take instead of
    connecting (worker/model_sockets.py): the model's connect and TLS handshake off the
    way to its first words. Each is a session at the provider while it waits (replaced
    every 5 minutes). Dev and prod default 0: off."""

    worker_id: str = ""
    """Unique id; defaults to host-pool-pid."""

    host: str = field(default_factory=socket.gethostname)
    """Shown to operators in the worker list."""

    version: str = __version__

    heartbeat_interval: float = 1.0
    """Seconds between refreshes of the worker's and its sessions' heartbeats."""

    heartbeat_ttl: float = 10.0
    """Sessions of this worker are failed within this long after it stops beating."""

    safety_poll: float = SAFETY_POLL_S
    """Seconds between reads of the start queue when no ring wakes the worker: the net under
    the doorbell (a ring lost to a Redis restart). Under ``shared.fleet.POLL_STALL_S``, or
    a healthy idle worker would look stalled."""

    idle_timeout: float = 120.0
    """End a session after this long with no speech from either side (idle_timeout)."""

    max_session_duration: float = 1800.0
    """Hard limit on one session (max_duration)."""

    connect_timeout: float = CONNECT_TIMEOUT_S
    """End a ready session whose client never connects (connect_timeout)."""

    reconnect_grace: float = 30.0
    """How long a call whose client's media is gone (``reconnecting``) waits for the client
    to connect again before it ends (client_left); the pipeline and the model connection
    stay up meanwhile. 0: end at once."""

    metrics_port: int = 0
    """Serve this worker's Prometheus /metrics on this port (0: off)."""

    metrics_host: str = "127.0.0.1"

    drain_timeout: float = 300.0
    """On drain or SIGTERM, let live sessions run this long before ending them."""

    stream_retention: float = 3600.0
    stream_maxlen: int = 20000

    ice_servers: list[str] = field(default_factory=list)
    """STUN (or credential-free TURN) URLs for WebRTC peers."""

    turn_urls: list[str] = field(default_factory=list)
    """TURN URLs this worker relays through, with a credential it makes from ``turn_secret``."""

    turn_secret: str | None = field(default=None, repr=False)
    """The TURN server's shared secret. Never logged (excluded from repr)."""

    turn_ttl: float = 86400.0
    """Seconds a credential the worker makes for a session stays valid."""

    ice_policy: Literal["all", "relay"] = "all"
    """relay: offer only TURN relay candidates (the worker's address stays hidden)."""

    webrtc_host_addresses: list[str] = field(default_factory=list)
    """Restrict ICE host candidates to these addresses (loopback-only or NAT setups)."""

    webrtc_udp_ports: tuple[int, int] | None = None
    """Bind WebRTC media sockets to ports in this range, both ends included (None: any)."""

    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    """The assistant profile's model and tools (unused by ``echo``)."""

    # --- transports: websocket and Daily ---
    ws_host: str = "127.0.0.1"
    """Address the WebSocket listener binds (one listener per worker process)."""

    ws_port: int = 0
    """Port of the WebSocket listener; 0 picks a free one."""

    ws_public_host: str | None = None
    """Host clients reach the listener at (NAT, containers); default from ``ws_host``."""

    ws_public_url: str | None = None
    """Full URL clients use (published ports, wss:// behind a proxy); overrides host/port."""

    ws_advertised_url: str = ""
    """The listener's URL as clients reach it; set by the worker once it listens."""

    ws_listener: str = ""
    """The listener's identity, random per process, which its tokens are bound to
    (``shared.ws_tokens``); set by the worker once it listens."""

    daily_api_key: str | None = field(default=None, repr=False)
    """DAILY_API_KEY. Never logged (excluded from repr) and never put in events."""

    daily_api_url: str = "https://api.daily.co/v1"
    daily_token_ttl: float = 600.0
    """Seconds a participant's meeting token can be used to join."""

    @property
    def profiles(self) -> list[str]:
        return ["echo", "assistant"] if self.assistant.api_key else ["echo"]

    @property
    def transports(self) -> list[str]:
        return ["webrtc", "websocket", "daily"] if self.daily_api_key else ["webrtc", "websocket"]

    def advertised_ws_url(self, port: int | str) -> str:
        """Where clients reach the WebSocket listener bound to ``port``.

        ``ws_public_url`` may name ``{host}`` (this machine's host name) and ``{port}``
        (the listener's port): replicas that share one setting, such as compose workers
        behind one TLS proxy, then each advertise their own route
        (``wss://site/workers/{host}/ws``, see deploy/Caddyfile).
        """
        if self.ws_public_url:
            # Plain replacement, not str.format: other braces in a URL stay as they are.
            return self.ws_public_url.replace("{host}", socket.gethostname()).replace(
                "{port}", str(port)
            )
        host = self.ws_public_host or self.ws_host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return f"ws://{host}:{port}{WS_PATH}"

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if self.warm_pipelines < 0:
            raise ValueError("warm_pipelines must be 0 or more")
        if self.warm_model_sockets < 0:
            raise ValueError("warm_model_sockets must be 0 or more")
        if not 0 < self.safety_poll < POLL_STALL_S:
            raise ValueError(f"safety_poll must be between 0 and {POLL_STALL_S} seconds")
        if not self.worker_id:
            self.worker_id = _default_worker_id(self.pool)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis_url: str | None = None,
        pool: str | None = None,
        capacity: int | None = None,
        metrics_port: int | None = None,
    ) -> WorkerOptions:
        """The options ``settings`` give; an argument that is not None overrides its setting."""
        redis_url = settings.redis_url if redis_url is None else redis_url
        if redis_url is None:
            raise ValueError("a worker needs VOICEPOOL_REDIS_URL (voicepool dev sets it)")
        return cls(
            redis_url=redis_url,
            pool=settings.default_pool if pool is None else pool,
            capacity=settings.worker_capacity if capacity is None else capacity,
            warm_pipelines=settings.worker_warm_pipelines,
            seats=settings.worker_seats,
            warm_model_sockets=settings.worker_warm_model_sockets,
            drain_timeout=settings.drain_timeout,
            metrics_port=settings.worker_metrics_port if metrics_port is None else metrics_port,
            metrics_host=settings.worker_metrics_host,
            connect_timeout=settings.connect_timeout,
            reconnect_grace=settings.reconnect_grace,
            heartbeat_interval=settings.heartbeat_interval,
            heartbeat_ttl=settings.heartbeat_ttl,
            idle_timeout=settings.idle_timeout,
            max_session_duration=settings.max_session_duration,
            stream_retention=settings.stream_retention,
            stream_maxlen=settings.session_stream_maxlen,
            ice_servers=list(settings.ice_servers),
            turn_urls=list(settings.turn_urls),
            turn_secret=settings.turn_secret.get_secret_value() if settings.turn_secret else None,
            turn_ttl=settings.turn_ttl,
            ice_policy=settings.webrtc_ice_policy,
            webrtc_host_addresses=list(settings.webrtc_host_addresses),
            webrtc_udp_ports=settings.webrtc_udp_port_range,
            assistant=AssistantConfig.from_settings(settings),
            ws_host=settings.ws_host,
            ws_port=settings.ws_port,
            ws_public_host=settings.worker_public_host,
            ws_public_url=settings.ws_public_url,
            daily_api_key=(
                settings.daily_api_key.get_secret_value() if settings.daily_api_key else None
            ),
            daily_api_url=settings.daily_api_url,
            daily_token_ttl=settings.daily_token_ttl,
        )
