"""HTTPS in front, for real: ``deploy/Caddyfile`` in a real Caddy before the real system.

The same file compose runs, its upstreams and ports pointed at this machine through its
environment settings; Caddy's internal CA issues the certificate for ``voicepool.test``.
Headless Chromium trusts that CA the way a LAN user does (its root imported into the NSS
database of the browser's home, no certificate error ignored) and, through Caddy: finds
a secure context, gets the microphone, signs in (a Secure cookie: the API saw https),
talks to the echo bot over WebRTC and sees the call's events streamed. Then, in Python:
the API takes the client's address from Caddy's X-Forwarded-For (and not one a client
forged); a WebSocket session through ``wss://voicepool.test/workers/HOST/ws`` echoes;
forged worker paths are refused by Caddy itself.

Needs Debian's ``caddy`` and ``certutil`` (package libnss3-tools), besides what the web
app test needs; ``ops/scripts/install-test-deps.sh`` installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from harness.api import api_client, wait_for_status
from harness.system import ROOT
from harness.waiting import eventually
from harness.ws_client import ProtobufClient
from shared.connections import free_port
from tests.e2e.test_web_app import ARTIFACTS, CHROMIUM, DIST, _require_tools, _run_browser

pytestmark = pytest.mark.slow

SITE = "voicepool.test"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
SCRIPT = Path(__file__).with_name("https_proxy.e2e.mjs")
STARTUP_TIMEOUT_S = 20
ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS (int16); silence ~0


def _require_caddy_and_certutil() -> tuple[str, str]:
    caddy, certutil = shutil.which("caddy"), shutil.which("certutil")
    missing = [name for name, path in (("caddy", caddy), ("certutil", certutil)) if not path]
    if missing:
        message = (
            f"{' and '.join(missing)} not installed: run `ops/scripts/install-test-deps.sh` "
            "as root (Debian packages caddy, libnss3-tools)"
        )
        if os.geteuid() != 0:
            pytest.skip(message)
        pytest.fail(message)  # as root (CI) the script installs them: missing is a fault
    assert caddy and certutil
    return caddy, certutil


class Caddy:
    """``caddy run`` on deploy/Caddyfile, on unprivileged ports, its CA in ``tmp``."""

    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary = binary
        self.tmp = tmp
        self.http_port = free_port()
        self.https_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "caddy.log"

    @property
    def url(self) -> str:
        return f"https://{SITE}:{self.https_port}"

    @property
    def root_cert(self) -> Path:
        return self.tmp / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_cert))

    def start(self, *, api_port: int, worker_hosts: str, worker_ws_port: int) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Where Caddy keeps its CA and certificates ($XDG_DATA_HOME/caddy) and its
            # autosaved config: here, not in the user's home.
            "XDG_DATA_HOME": str(self.tmp / "data"),
            "XDG_CONFIG_HOME": str(self.tmp / "config"),
            "HOME": str(self.tmp),
            "CADDY_HTTP_PORT": str(self.http_port),
            "CADDY_HTTPS_PORT": str(self.https_port),
            "CADDY_ADMIN": "off",  # no fixed admin port to collide on
            "VOICEPOOL_SITE": SITE,
            "VOICEPOOL_TLS": "internal",
            "VOICEPOOL_API_UPSTREAM": f"127.0.0.1:{api_port}",
            "VOICEPOOL_WORKER_HOSTS": worker_hosts,
            "VOICEPOOL_WORKER_WS_PORT": str(worker_ws_port),
        }
        self.proc = subprocess.Popen(
            [self.binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env=env,
            cwd=self.tmp,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"caddy exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.root_cert.is_file() and self._serves_https():
                return
            time.sleep(0.1)
        raise RuntimeError(f"caddy did not serve {self.url} in time\n{self.log_tail()}")

    def _serves_https(self) -> bool:
        """Whether a handshake for the site verifies against the CA (the certificate is
        issued a moment after the CA is made)."""
        try:
            with socket.create_connection(("127.0.0.1", self.https_port), timeout=1) as raw:
                with self.ssl_context().wrap_socket(raw, server_hostname=SITE):
                    return True
        except (OSError, ssl.SSLError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[Caddy]:
    binary, _ = _require_caddy_and_certutil()
    (tmp_path / "caddy").mkdir()
    proxy = Caddy(binary, tmp_path / "caddy")
    yield proxy
    proxy.stop()


def _trusting_home(certutil: str, root_cert: Path, home: Path) -> Path:
    """A home whose NSS database trusts ``root_cert`` for web sites, as a user's
    Chromium on Linux does once they import the CA (certutil, or Settings)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
    subprocess.run(
        [certutil, "-d", db, "-A", "-t", "C,,", "-n", "voicepool-caddy", "-i", str(root_cert)],
        check=True,
    )
    return home


async def _post_through_caddy(
    caddy: Caddy, path: str, body: object, *, local_address: str, headers: dict[str, str]
) -> httpx.Response:
    """POST to https://voicepool.test:PORT/path from ``local_address``: to 127.0.0.1,
    asking for the site by name (SNI and Host), its certificate checked against the CA."""
    transport = httpx.AsyncHTTPTransport(verify=caddy.ssl_context(), local_address=local_address)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        return await client.post(
            f"https://127.0.0.1:{caddy.https_port}{path}",
            json=body,
            headers={"Host": f"{SITE}:{caddy.https_port}", **headers},
            extensions={"sni_hostname": SITE},
        )


async def _refused_by_caddy(caddy: Caddy, path: str) -> int:
    """The status a WebSocket handshake to ``path`` gets; Caddy's own 404 says so."""
    try:
        websocket = await websockets.connect(
            f"wss://{SITE}:{caddy.https_port}{path}",
            host="127.0.0.1",
            ssl=caddy.ssl_context(),
            server_hostname=SITE,
            open_timeout=5,
        )
    except InvalidStatus as exc:
        assert exc.response.body == b"no such worker", (path, exc.response.body)
        return exc.response.status_code
    await websocket.close()
    return 101


async def test_the_web_app_through_caddy(make_system, caddy: Caddy, hello_wav, tmp_path) -> None:
    node = _require_tools()
    _, certutil = _require_caddy_and_certutil()
    hostname = socket.gethostname()
    try:
        worker_address = socket.gethostbyname(hostname)  # where Caddy dials the worker
    except OSError:
        pytest.fail(f"this machine's host name {hostname!r} does not resolve; Caddy dials it")
    ws_port = free_port()
    system = make_system(
        workers=1,  # every worker listens on the route's one port: one per host
        capacity=2,
        VOICEPOOL_FRONTEND_DIR=str(DIST),
        VOICEPOOL_TRUSTED_PROXIES="127.0.0.1/32",
        VOICEPOOL_WS_HOST=worker_address,
        VOICEPOOL_WS_PORT=str(ws_port),
        VOICEPOOL_WS_PUBLIC_URL=f"wss://{SITE}:{caddy.https_port}/workers/{{host}}/ws",
    )
    # Only this machine's name, in full, as compose admits only container host names.
    caddy.start(api_port=system.api_port, worker_hosts=re.escape(hostname), worker_ws_port=ws_port)
    token = system.create_user("alice")

    # --- the browser ----------------------------------------------------------------
    home = _trusting_home(certutil, caddy.root_cert, tmp_path / "home")
    env = {
        **os.environ,
        "HOME": str(home),
        "SITE_URL": f"{caddy.url}/",
        "USER_TOKEN": token,
        "FIXTURE_WAV": str(hello_wav),
        "ARTIFACTS_DIR": str(ARTIFACTS),
        "CHROMIUM": CHROMIUM,
    }
    await _run_browser(node, env, system, script=SCRIPT)

    # --- plain HTTP is sent to HTTPS ---------------------------------------------------
    async with httpx.AsyncClient(timeout=10) as plain:
        redirect = await plain.get(f"http://127.0.0.1:{caddy.http_port}/", headers={"Host": SITE})
    assert redirect.status_code == 308
    assert redirect.headers["location"].startswith(f"https://{SITE}")

    # --- the API believes Caddy about the client, and only Caddy ------------------------
    # From 127.0.0.2 (not a trusted proxy), claiming to be 203.0.113.9 over plain http:
    # Caddy replaces the claims with the connection's address and https, and the API
    # counts sign-ins against that address and marks the cookie Secure.
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"}
    for body, status in (({"token": "vp_not_a_token"}, 401), ({"token": token}, 200)):
        response = await _post_through_caddy(
            caddy, "/api/auth/login", body, local_address="127.0.0.2", headers=forged
        )
        assert response.status_code == status, response.text
    cookie = response.headers["set-cookie"]
    assert "voicepool_session=" in cookie and "; secure" in cookie.lower(), cookie
    with system.redis as r:
        counted = {key.split(":")[3] for key in r.scan_iter("vp:rate:login:*")}
    # The browser's sign-in (127.0.0.1) and this client's, as Caddy reported them.
    assert counted == {"127.0.0.1", "127.0.0.2"}, counted

    # --- a WebSocket session through wss://SITE/workers/HOST/ws ---------------------------
    async with api_client(system, token) as api:
        created = await api.post("/api/sessions", json={"transport": "websocket"})
        assert created.status_code == 202, created.text
        session_id = created.json()["session_id"]
        await wait_for_status(api, session_id, {"ready"})
        connect = await api.post(f"/api/sessions/{session_id}/connect")
        assert connect.status_code == 200, connect.text
        ws_url = connect.json()["ws_url"]
        assert ws_url.startswith(
            f"{caddy.url.replace('https', 'wss')}/workers/{hostname}/ws?token="
        )
        client = await ProtobufClient.connect(
            ws_url, hello_wav, host="127.0.0.1", ssl=caddy.ssl_context(), server_hostname=SITE
        )
        try:
            await eventually(lambda: client.got_message("bot-ready"), timeout=20, what="bot-ready")
            await wait_for_status(api, session_id, {"connected"})
            await eventually(
                lambda: client.loudest_rms() > ECHO_RMS, timeout=20, what="echoed speech"
            )
        finally:
            await client.close()
        await api.delete(f"/api/sessions/{session_id}")

    # --- the proxy reaches worker listeners only ---------------------------------------------
    for path in (
        "/workers/redis/ws",
        f"/workers/127.0.0.1:{system.redis_server.port}/ws",
        f"/workers/{hostname}:{system.api_port}/ws",
        f"/workers/{hostname}/ws/../../api/me",
        f"/workers/{hostname}.evil.example/ws",
        "/workers//ws",
    ):
        assert await _refused_by_caddy(caddy, path) == 404, path
