"""The whole system as real processes: an embedded redis-server, the API under uvicorn,
and worker processes, each started with the ``voicepool`` command a deployment uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from shared.connections import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60


@dataclass
class System:
    tmp: Path
    settings: dict[str, str] = field(default_factory=dict)
    redis_server: EmbeddedRedis | None = None
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_port: int = 0
    metrics_ports: dict[int, int] = field(default_factory=dict)
    root: Path = ROOT
    """The checkout whose code the processes run (another one: an earlier commit, to compare)."""
    _logs: list[Path] = field(default_factory=list)

    # --- set-up --------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        assert self.redis_server is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
        env.pop("OPENAI_API_KEY", None)
        env.pop("DAILY_API_KEY", None)
        env.update(
            {
                "VOICEPOOL_REDIS_URL": self.redis_server.url,
                "VOICEPOOL_DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp / 'voicepool.db'}",
                "VOICEPOOL_DATA_DIR": str(self.tmp),
                "VOICEPOOL_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
                "VOICEPOOL_HEARTBEAT_TTL": "4",
                "VOICEPOOL_HEARTBEAT_INTERVAL": "0.5",
                "VOICEPOOL_REAPER_INTERVAL": "0.25",
                # A client that leaves without DELETE holds its call (and a worker slot)
                # this long, not 30 s: churn stays quick; a reload still fits.
                "VOICEPOOL_RECONNECT_GRACE": "5",
                "VOICEPOOL_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.root != ROOT:  # its own code before the installed checkout's
            env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        env.update(self.settings)
        return env

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis(self) -> redis.Redis:
        assert self.redis_server is not None
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def _spawn(
        self, name: str, *args: str, command: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self._logs.append(log)
        return subprocess.Popen(
            [*(command or [sys.executable, "-m", "voicepool"]), *args],
            env=self.env,
            cwd=self.root,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def start(self, *, workers: int = 2, capacity: int = 2) -> System:
        if self.redis_server is None:  # else one started for it (a Sentinel-watched primary)
            self.redis_server = EmbeddedRedis(self.tmp / "redis").start()
        self.api_port = free_port()
        self.api = self._spawn("api", "api", "--port", str(self.api_port))
        for _ in range(workers):
            self.start_worker(capacity=capacity)
        self.wait_ready(workers)
        return self

    def start_worker(
        self, *, capacity: int = 2, pool: str = "server", command: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process; ``command``: another ``voicepool`` to run (an installed one)."""
        index = len(self.workers)
        port = free_port()
        proc = self._spawn(
            f"worker{index}", "worker", "--capacity", str(capacity), "--pool", pool,
            "--metrics-port", str(port), command=command,
        )  # fmt: skip
        self.workers.append(proc)
        self.metrics_ports[proc.pid] = port
        return proc

    def metrics(self, url: str) -> dict[str, float]:
        """Scrape a /metrics endpoint into {'name{labels}': value}."""
        samples: dict[str, float] = {}
        for line in httpx.get(url, timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                api_ok = httpx.get(f"{self.api_url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                api_ok = False
            if api_ok and len(self.live_workers()) >= workers:
                return
            # Not harness.waiting.eventually: this runs without an event loop, and a process
            # that died must fail the start at once, not after the timeout.
            time.sleep(0.1)
        raise RuntimeError(f"system did not start in time\n{self.log_tail()}")

    def _check_alive(self) -> None:
        for proc in [self.api, *self.workers]:
            if proc is not None and proc.poll() is not None and proc.returncode not in (0, -9):
                raise RuntimeError(f"a process exited with {proc.returncode}\n{self.log_tail()}")

    def live_workers(self) -> list[dict[str, object]]:
        with self.redis as r:
            values = [r.get(k) for k in r.scan_iter("vp:worker:*") if not k.endswith(":signals")]
        return [json.loads(v) for v in values if v]

    def worker_process(self, worker_id: str) -> subprocess.Popen[bytes]:
        pid = int(worker_id.rsplit("-", 1)[-1])
        return next(w for w in self.workers if w.pid == pid)

    def create_user(self, name: str, *, admin: bool = False) -> str:
        args = [sys.executable, "-m", "voicepool", "users", "create", name]
        if admin:
            args.append("--admin")
        out = subprocess.run(args, env=self.env, cwd=self.root, capture_output=True, check=True)
        return out.stdout.decode().strip()

    def run_cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "voicepool", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            check=True,
        )
        return out.stdout.decode()

    # --- tear-down -------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for log in self._logs:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        procs = [p for p in [*self.workers, self.api] if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis_server is not None:
            self.redis_server.stop()
