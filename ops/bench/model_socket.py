"""An assistant session's model connection: opened at its start, or taken from the spares.

In one process, interleaved (ABAB…), from the moment a session's model service wants
its socket to the model's ``session.created`` read from it:

* ``connect`` (the baseline, and the default): the service opens the socket, as Pipecat
  does (``worker.model_sockets.open_model_socket``): TCP, TLS 1.3 and the WebSocket
  upgrade, then the model's first event;
* ``spare``: the service takes one a worker opened ahead
  (``VOICEPOOL_WORKER_WARM_MODEL_SOCKETS``), whose first event is already buffered.

The model is the OpenAI Realtime protocol double in its own process, serving ``wss://``
on loopback with a certificate made for the run (trusted through ``SSL_CERT_FILE``), so
the handshakes are a real provider's, without its distance. Measured: wall time and the
client process's CPU (the worker's, in production) per connection: min / median / max.
Not included: the network's round trips to a real provider (TCP, TLS and the upgrade
are about three: each adds the RTT to ``connect`` and nothing to ``spare``), the
provider's own time to set up a session, and the spare's refill (off the session's way).

    .venv/bin/python ops/bench/model_socket.py [--rounds 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from measure import (
    bench_process,
    min_median_max,
    run_facts,
    run_main,
    spread,
    stop_process,
    write_results,
)

from harness.waiting import eventually
from worker.model_sockets import ModelSockets, auth_headers, open_model_socket, realtime_url
from worker.options import AssistantConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS = {"spare": "spare socket (taken)", "connect": "connect at the start (baseline)"}
KEY = "sk-bench-model-socket"
OPEN_TIMEOUT_S = 10.0


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid for a day: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def start_model(cert: Path, key: Path) -> tuple[subprocess.Popen[str], str]:
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.doubles.openai_realtime", "--port", "0", *tls],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    if not url.startswith("wss://"):
        stop_process(proc)
        raise RuntimeError(f"the model double did not start: {url!r}")
    return proc, url


async def _first_event(socket: Any) -> None:
    await asyncio.wait_for(socket.recv(), OPEN_TIMEOUT_S)  # session.created


async def measure(rounds: int, base_url: str) -> dict[str, Any]:
    config = AssistantConfig(api_key=KEY, base_url=base_url)
    url, headers = realtime_url(config), auth_headers(KEY)
    spares = ModelSockets(config, 1, "bench")
    refill = asyncio.create_task(spares.run())
    wall: dict[str, list[float]] = {t: [] for t in TARGETS}
    cpu: dict[str, list[float]] = {t: [] for t in TARGETS}
    try:
        for n in range(rounds + 2):  # the first two of each: caches and imports, not kept
            for target in TARGETS if n % 2 == 0 else reversed(list(TARGETS)):
                if target == "spare":
                    await eventually(lambda: spares.spare > 0, timeout=15, what="a spare")
                await asyncio.sleep(0.05)  # the refill's own handshake over
                started, cpu_started = time.perf_counter(), time.process_time()
                if target == "spare":
                    socket = spares.take(url)
                    assert socket is not None
                else:
                    socket = await open_model_socket(url, headers, open_timeout=OPEN_TIMEOUT_S)
                await _first_event(socket)
                took = time.perf_counter() - started
                used = time.process_time() - cpu_started
                await socket.close()
                if n >= 2:
                    wall[target].append(took * 1000)
                    cpu[target].append(used * 1000)
    finally:
        refill.cancel()
        await asyncio.gather(refill, return_exceptions=True)
        await spares.aclose()
    rows = {t: {"wall_ms": spread(wall[t]), "cpu_ms": spread(cpu[t])} for t in TARGETS}
    return {"rounds": rounds, "targets": rows}


def markdown(result: dict[str, Any]) -> str:
    facts, rows = result["machine"], result["targets"]
    lines = [
        "# An assistant session's model connection: connected at its start, or a spare",
        "",
        f"{result['date']} · {facts['nproc']} CPUs · Python {facts['python']} · "
        f"pipecat-ai {facts['pipecat']} · commit {facts['commit']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['rounds']} connections per target, interleaved; from wanting the socket "
        "to the model's `session.created` read from it; `wss://` to the Realtime double "
        "on loopback (its own process).",
        "",
        "| target | wall, ms: min / median / max | client CPU, ms: min / median / max |",
        "|---|---:|---:|",
    ]
    for key, label in TARGETS.items():
        w, c = rows[key]["wall_ms"], rows[key]["cpu_ms"]
        lines.append(f"| {label} | {min_median_max(w, 2)} | {min_median_max(c, 2)} |")
    spare, connect = rows["spare"], rows["connect"]
    lines += [
        "",
        f"spare / connect, median: wall "
        f"{spare['wall_ms']['median'] / connect['wall_ms']['median']:.3f}x, "
        f"CPU {spare['cpu_ms']['median'] / connect['cpu_ms']['median']:.3f}x.",
        "",
        "Notes:",
        "",
        "- Loopback: no distance. To a real provider, TCP, TLS 1.3 and the WebSocket "
        "upgrade are about three round trips, each adding the RTT to `connect` and "
        "nothing to `spare` (not measured here).",
        "- The spare's own handshake (the refill after each take) is off the session's way "
        "and outside the window, but not free: it costs the worker the `connect` CPU.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    bench_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vp-bench-model-") as tmp:
        cert, key = certificate(Path(tmp))
        os.environ["SSL_CERT_FILE"] = str(cert)  # this run's model is trusted, nothing else
        proc, base_url = start_model(cert, key)
        try:
            result = asyncio.run(measure(args.rounds, base_url))
        finally:
            stop_process(proc)
    result |= run_facts(__file__)
    write_results(args.out, "model_socket", result, markdown)


if __name__ == "__main__":
    run_main(main)
