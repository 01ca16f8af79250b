"""A throwaway PostgreSQL cluster for tests, from Debian's postgresql package.

``ops/scripts/install-test-deps.sh`` installs the package when it is missing.
PostgreSQL refuses to run as root, so as root the cluster runs as the
``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.connections import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make test-deps`")
    return Path(found[-1]).parent


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class PostgresServer:
    data_dir: Path
    port: int

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = _bin_dir()
        data_dir = Path(tempfile.mkdtemp(prefix="voicepool-pg-"))
        if os.geteuid() == 0:
            shutil.chown(data_dir, "postgres", "postgres")
        port = free_port()
        subprocess.run(
            _as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir / "data"), "-A", "trust",
                          "-U", "postgres", "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip
        options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir / "data"), "-o", options,
                          "-l", str(data_dir / "log"), "-w", "start"]),
            check=True, capture_output=True,
        )  # fmt: skip
        return cls(data_dir=data_dir, port=port)

    def psql(self, sql: str) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-v",
             "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True,
        )  # fmt: skip

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again on the same port."""
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir / "data"),
                          "-m", "fast", "-o", options, "-l", str(self.data_dir / "log"),
                          "-w", "restart"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir / "data"),
                          "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.data_dir, ignore_errors=True)
