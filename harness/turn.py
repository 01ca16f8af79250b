"""A real TURN server for tests: Debian's coturn on loopback, with a shared secret (the
TURN REST API scheme voicepool's credentials follow) and its log kept for inspection."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.connections import free_port

STARTUP_TIMEOUT_S = 10
REALM = "voicepool.test"
# coturn's line when an allocation ends: what its relay received from (rb) and sent to
# (sb) the peers it relayed for.
PEER_USAGE = re.compile(r"peer usage: .*?username=<(?P<user>[^>]*)>.*?rb=(?P<rb>\d+)")


@dataclass
class TurnServer:
    secret: str
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    relay_ports: tuple[int, int] = (0, 0)

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    @classmethod
    def start(cls, tmp: Path, secret: str) -> TurnServer:
        binary = shutil.which("turnserver")
        if binary is None:
            raise RuntimeError("turnserver not found: install Debian's coturn")
        server = cls(secret=secret, log=tmp / "turnserver.log", port=free_port())
        low = 40000 + server.port % 10000  # a small relay range of its own
        server.relay_ports = (low, low + 49)
        command = [
            binary, "--no-cli", "--no-tls", "--no-dtls", "-n",  # no config file
            "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={server.port}",
            f"--min-port={server.relay_ports[0]}", f"--max-port={server.relay_ports[1]}",
            "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={REALM}",
            "--allow-loopback-peers",  # both peers are on this machine
            f"--userdb={tmp / 'turndb'}", f"--pidfile={tmp / 'turnserver.pid'}",
            f"--log-file={server.log}", "--simple-log", "--no-stdout-log", "--verbose",
        ]  # fmt: skip
        server.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        server._wait_listening()
        return server

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited: {self.log_text()[-2000:]}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:  # a bind that fails means coturn holds the port
                    probe.bind(("127.0.0.1", self.port))
                except OSError:
                    return
            time.sleep(0.05)
        raise RuntimeError("turnserver did not start listening")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def relayed_from_peers(self) -> dict[str, int]:
        """Per TURN user (the ``who`` of its username: ``user-…``, ``worker-…``), the bytes
        its relay took in from the other side, over its ended allocations."""
        totals: dict[str, int] = {}
        for match in PEER_USAGE.finditer(self.log_text()):
            who = match["user"].split(":", 1)[-1]
            totals[who] = totals.get(who, 0) + int(match["rb"])
        return totals

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
