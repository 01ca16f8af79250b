"""The ops files agree with the code: metric names, the compose stack, promtool's checks."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML has no inline types; types-PyYAML is not a test dependency
from prometheus_client import REGISTRY

import api.metrics
import worker.metrics
from shared.settings import Settings

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "voicepool.json"
COMPOSE = ROOT / "deploy" / "compose.yaml"
ALERTMANAGER = ROOT / "ops" / "alertmanager" / "alertmanager.yml"
UNIT = ROOT / "ops" / "jetson" / "voicepool-worker.service"
WORKER_ENV = ROOT / "ops" / "jetson" / "worker.env.example"

METRIC = re.compile(r"\bvoicepool_[a-z_]+")
# Series names prometheus-client exposes for each family type, by suffix.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}
SERVICES = {"redis", "postgres", "api", "worker", "prometheus", "grafana"}


def exposed_metrics() -> dict[str, str]:
    """Every series name the voicepool metrics expose, mapped to its family (base) name."""
    assert api.metrics and worker.metrics  # imported for their registrations
    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("voicepool_"):
            continue
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.name
        for sample in family.samples:
            names[sample.name] = family.name
    return names


def strings(node: Any, keys: set[str] | None = None) -> Iterator[str]:
    """Strings in a parsed YAML/JSON document (only under ``keys``, when given)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if keys is None or key in keys:
                yield from strings(value)
            else:
                yield from strings(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, keys)
    elif isinstance(node, str) and keys is None:
        yield node


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def queries(path: Path) -> list[str]:
    if path == ALERTS:
        return [rule["expr"] for rule in alert_rules()]
    if path == DASHBOARD:
        # Panel targets (expr) and template variables (query, definition).
        return list(strings(json.loads(path.read_text()), {"expr", "query", "definition"}))
    return list(strings(yaml.safe_load(path.read_text())))


# --- metric names --------------------------------------------------------------------


@pytest.mark.parametrize("path", [ALERTS, DASHBOARD, PROMETHEUS], ids=lambda p: p.name)
def test_every_metric_used_is_defined(path: Path) -> None:
    exposed = exposed_metrics()
    used = {name for query in queries(path) for name in METRIC.findall(query)}
    unknown = sorted(used - exposed.keys())
    assert not unknown, (
        f"{path.name} uses metrics that api/metrics.py and worker/metrics.py "
        f"do not expose: {unknown}"
    )
    if path != PROMETHEUS:  # the scrape config names no metric
        assert len({exposed[name] for name in used}) >= 8, f"too few metrics found in {path}"


def test_alert_rules_say_how_bad_and_what_to_do() -> None:
    for rule in alert_rules():
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_identity_and_pool_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert (dashboard["uid"], dashboard["title"]) == ("voicepool", "voicepool fleet")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["pool"]["definition"] == "label_values(voicepool_pool_workers, pool)"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# --- deployment files --------------------------------------------------------------------


def seconds(value: str | int) -> float:
    match = re.fullmatch(r"(\d+)(s|m)?", str(value).strip())
    assert match, f"cannot read duration {value!r}"
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_compose_services_have_health_checks() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) >= SERVICES
    for name in SERVICES:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert int(services["worker"]["deploy"]["replicas"]) >= 1
    # Bind mounts and the Dockerfile are relative to deploy/.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: missing {source}"
    build = services["api"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()


def test_workers_get_longer_to_stop_than_they_drain() -> None:
    drain = Settings.model_fields["drain_timeout"].default
    worker = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]
    assert seconds(worker["stop_grace_period"]) > drain

    env = dict(
        line.split("=", 1)
        for line in WORKER_ENV.read_text().splitlines()
        if line and not line.startswith("#")
    )
    unit = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert seconds(unit["TimeoutStopSec"]) > float(env["VOICEPOOL_DRAIN_TIMEOUT"])
    assert unit["KillSignal"] == "SIGTERM"


# --- HTTPS in front: Caddy ---------------------------------------------------------------

CADDYFILE = ROOT / "deploy" / "Caddyfile"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"


def _published_everywhere(port: str | dict[str, Any]) -> bool:
    """Whether a compose port entry is published on every interface of the host."""
    if isinstance(port, dict):  # the long syntax
        return port.get("published") is not None and port.get("host_ip") in (None, "0.0.0.0")
    parts = port.split("/")[0].split(":")  # [host_ip:]host_port:container_port
    return len(parts) == 2 or parts[0] in ("", "0.0.0.0", "[::]")


def test_only_caddy_is_published_on_the_network() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    exposed = {
        name
        for name, service in services.items()
        if any(_published_everywhere(port) for port in service.get("ports", []))
    }
    assert exposed == {"caddy"}
    assert {"80:80", "443:443"} <= set(services["caddy"]["ports"])
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_grafana_has_no_default_password() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    # ${VAR:?message}: compose refuses to start without it (no ${VAR:-admin}).
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    example = ENV_EXAMPLE.read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M)
    assert re.search(r"^VOICEPOOL_SITE=$", example, re.M)


def test_caddy_sits_where_the_api_and_the_workers_expect_it() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    caddy = services["caddy"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert any(volume.endswith(":/data") for volume in caddy["volumes"])  # the CA persists
    # The API trusts Caddy's fixed address alone; other containers can never get it.
    address = ipaddress.ip_address(caddy["networks"]["default"]["ipv4_address"])
    assert services["api"]["environment"]["VOICEPOOL_TRUSTED_PROXIES"] == str(address)
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    assert address in ipaddress.ip_network(pool["subnet"])
    assert address not in ipaddress.ip_network(pool["ip_range"])
    # Workers advertise the route deploy/Caddyfile serves, on the port it proxies to.
    worker = services["worker"]["environment"]
    assert worker["VOICEPOOL_WS_HOST"] == "0.0.0.0"
    assert worker["VOICEPOOL_WS_PUBLIC_URL"].startswith("wss://${VOICEPOOL_SITE:?")
    assert worker["VOICEPOOL_WS_PUBLIC_URL"].endswith("}/workers/{host}/ws")
    caddyfile = CADDYFILE.read_text()
    assert f"{{$VOICEPOOL_WORKER_WS_PORT:{worker['VOICEPOOL_WS_PORT']}}}" in caddyfile


def _caddy_adapt(**env: str) -> dict[str, Any]:
    binary = shutil.which("caddy")
    if binary is None:
        message = "caddy is not on PATH: run `make test-deps` (Debian package caddy)"
        if os.geteuid() != 0:
            pytest.skip(message)
        pytest.fail(message)
    result = subprocess.run(
        [binary, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "not formatted" not in result.stderr  # `caddy fmt --overwrite deploy/Caddyfile`
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _routes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "handle" in node and isinstance(node["handle"], list):
            yield node
        for value in node.values():
            yield from _routes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _routes(item)


def test_caddyfile_serves_lan_names_and_public_ones() -> None:
    lan = _caddy_adapt(VOICEPOOL_SITE="voicepool.lan")
    (policy,) = lan["apps"]["tls"]["automation"]["policies"]
    assert policy["subjects"] == ["voicepool.lan"]
    assert [issuer["module"] for issuer in policy["issuers"]] == ["internal"]
    assert lan["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False

    public = _caddy_adapt(VOICEPOOL_SITE="voice.example.org", VOICEPOOL_TLS="ops@example.org")
    (policy,) = public["apps"]["tls"]["automation"]["policies"]
    assert policy["issuers"][0] == {"module": "acme", "email": "ops@example.org"}
    assert public["apps"]["http"]["servers"]["srv0"]["listen"] == [":443"]


def test_caddy_proxies_only_worker_host_names_on_the_one_port() -> None:
    config = _caddy_adapt(VOICEPOOL_SITE="voicepool.lan")
    routes = list(_routes(config["apps"]["http"]["servers"]))
    (worker,) = [r for r in routes if any("path_regexp" in m for m in r.get("match", []))]
    pattern = worker["match"][0]["path_regexp"]["pattern"]
    (dial,) = {
        upstream["dial"]
        for route in _routes(worker["handle"])
        for handler in route["handle"]
        for upstream in handler.get("upstreams", [])
    }
    assert dial == "{http.regexp.worker.1}:8765"
    # Compose containers' host names (12 hex digits) and nothing that names another
    # host or port (Go's RE2 and Python's re agree on this pattern).
    assert re.fullmatch(pattern, "/workers/0123456789ab/ws")
    for path in ("/workers/redis/ws", "/workers/127.0.0.1:6379/ws", "/workers/0123456789ab:22/ws",
                 "/workers/0123456789abc/ws", "/workers/0123456789AB/ws", "/workers//ws",
                 "/workers/0123456789ab/ws/x"):  # fmt: skip
        assert not re.fullmatch(pattern, path), path
    upstreams = {
        upstream["dial"]
        for route in routes
        for handler in route["handle"]
        for upstream in handler.get("upstreams", [])
    }
    assert upstreams == {dial, "api:8000"}
    # Event streams are not buffered on their way through.
    (api,) = [
        handler
        for route in routes
        for handler in route["handle"]
        if handler.get("handler") == "reverse_proxy"
        and handler["upstreams"][0]["dial"] == "api:8000"
    ]
    assert api["flush_interval"] == -1


# --- promtool ----------------------------------------------------------------------------


def promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not on PATH: run `make test-deps` (it installs Debian's "
            "prometheus package, which ships promtool)"
        )
    return subprocess.run(
        [binary, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args", [("check", "rules", ALERTS), ("check", "config", PROMETHEUS)], ids=["rules", "config"]
)
def test_promtool_accepts(args: tuple[str, str, Path]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def expect(alert: str, **labels: str) -> dict[str, Any]:
    """At 10 minutes, ``alert`` fires once with ``labels`` (none given: it does not fire)."""
    fired = [{"exp_labels": labels}] if labels else []
    return {"eval_time": "10m", "alertname": alert, "exp_alerts": fired}


# Two API processes (a, b) report the same fleet gauges. The server pool is full
# with sessions queueing; the jetson pool has no workers while sessions are requested.
FULL_FLEET = {
    "interval": "15s",
    "input_series": [
        *(series("voicepool_pool_workers", "2x80", instance=i, pool="server") for i in "ab"),
        series("voicepool_pool_workers", "0x80", instance="a", pool="jetson"),
        series(
            "voicepool_sessions_requested_total",
            "0+1x80",
            instance="a",
            pool="jetson",
            transport="webrtc",
            profile="echo",
        ),
        *(series("voicepool_queue_depth", "3x80", instance=i, pool="server") for i in "ab"),
        *(
            series("voicepool_live_sessions", "8x80", instance=i, pool="server", state="connected")
            for i in "ab"
        ),
        series("voicepool_live_sessions", "3x80", instance="a", pool="server", state="queued"),
        *(
            series("voicepool_pool_capacity_sessions", "8x80", instance=i, pool="server")
            for i in "ab"
        ),
        series("voicepool_persister_pending_entries", "0x80", instance="a"),
    ],
    "alert_rule_test": [
        expect("VoicepoolPoolWithoutWorkersUnderLoad", severity="critical", pool="jetson"),
        expect("VoicepoolCapacityExhausted", severity="warning", pool="server"),
        expect("VoicepoolPersisterLagging"),
        expect("VoicepoolApiMetricsAbsent"),
    ],
}
# Sessions queue but slots are free (6 of 8 used); no API is scraped.
ROOM_LEFT = {
    "interval": "15s",
    "input_series": [
        series("voicepool_queue_depth", "3x80", pool="server"),
        series("voicepool_live_sessions", "6x80", pool="server", state="connected"),
        series("voicepool_live_sessions", "3x80", pool="server", state="queued"),
        series("voicepool_pool_capacity_sessions", "8x80", pool="server"),
    ],
    "alert_rule_test": [
        expect("VoicepoolCapacityExhausted"),
        expect("VoicepoolApiMetricsAbsent", severity="critical"),
    ],
}

# Two worker processes of the server pool, sampling their loop lag 20 times a
# second (300 samples a scrape): w1's loop is late by 100-250 ms in a tenth of
# them, w2's never by more than 5 ms. w1 has a stuck pipeline (a heartbeat
# timeout every scrape); w2 had one very long bot reply (one timeout).
LAG_BUCKET = "voicepool_worker_event_loop_lag_seconds_bucket"
HEARTBEAT_TIMEOUTS = "voicepool_worker_pipeline_heartbeat_timeouts_total"
WORKER_HEALTH = {
    "interval": "15s",
    "input_series": [
        series(LAG_BUCKET, "0+270x80", instance="w1", pool="server", le="0.1"),
        *(
            series(LAG_BUCKET, "0+300x80", instance="w1", pool="server", le=le)
            for le in ("0.25", "+Inf")
        ),
        *(
            series(LAG_BUCKET, "0+300x80", instance="w2", pool="server", le=le)
            for le in ("0.005", "0.1", "0.25", "+Inf")
        ),
        series(HEARTBEAT_TIMEOUTS, "0+1x80", instance="w1", pool="server"),
        series(HEARTBEAT_TIMEOUTS, "0x30 1x50", instance="w2", pool="server"),
        series("voicepool_pool_workers_stalled", "0x10 1x70", pool="server", instance="api"),
    ],
    "alert_rule_test": [
        expect("VoicepoolWorkerEventLoopLagging", severity="warning", pool="server", instance="w1"),
        expect(
            "VoicepoolPipelineHeartbeatTimeouts", severity="warning", pool="server", instance="w1"
        ),
        expect("VoicepoolWorkersStalled", severity="warning", pool="server"),
    ],
}


# A Jetson pool whose one board went away, the server pool empty of workers with a
# queue; the first failure of a new label set (primed at 0 by the API); event streams
# that would dilute the 5xx ratio of a few failing requests.
FIRSTS = {
    "interval": "15s",
    "input_series": [
        series("up", "1x80", job="voicepool-worker-hosts", instance="board1:9310"),
        series("up", "1x20 0x60", job="voicepool-worker-hosts", instance="board2:9310"),
        series("voicepool_pool_workers", "0x80", pool="server"),
        series("voicepool_queue_depth", "2x80", pool="server"),
        series("voicepool_pool_capacity_sessions", "0x80", pool="server"),
        series("voicepool_live_sessions", "0x80", pool="server", state="connected"),
        series(
            "voicepool_sessions_ended_total", "0x20 1+1x60", pool="jetson", transport="webrtc",
            profile="echo", state="failed", reason="worker_lost",
        ),
        series(
            "voicepool_sessions_ended_total", "0x80", pool="jetson", transport="webrtc",
            profile="echo", state="ended", reason="client_ended",
        ),
        series("voicepool_http_requests_total", "0+1x80", route="POST /api/sessions", status="503"),
        series("voicepool_http_requests_total", "0+5x80", route="POST /api/sessions", status="202"),
        series(
            "voicepool_http_requests_total", "0+600x80",
            route="GET /api/sessions/{session_id}/events", status="200",
        ),
        series("voicepool_persister_pending_entries", "0x80"),
    ],
    "alert_rule_test": [
        expect("VoicepoolWorkerDown", severity="warning", job="voicepool-worker-hosts",
               instance="board2:9310"),
        expect("VoicepoolCapacityExhausted"),  # no worker at all: not "full"
        # Failing from 5 minutes on, `for: 10m`: firing at 16 (counted from the first
        # failure, because the series was at 0 before it: test_failures_are_primed).
        {
            **expect("VoicepoolSessionsFailing", severity="warning", pool="jetson"),
            "eval_time": "16m",
        },
        expect("VoicepoolHttp5xxRate", severity="warning"),
    ],
}  # fmt: skip


def test_alertmanager_accepts_its_config_and_compose_runs_it() -> None:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is not on PATH: run `make test-deps` (package prometheus-alertmanager)")
    result = subprocess.run(
        [binary, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    service = yaml.safe_load(COMPOSE.read_text())["services"]["alertmanager"]
    assert "../ops/alertmanager:/etc/alertmanager:ro" in service["volumes"]
    targets = yaml.safe_load(PROMETHEUS.read_text())["alerting"]["alertmanagers"]
    assert targets[0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_failures_are_primed_so_the_first_one_counts() -> None:
    """A counter series born at 1 has no increase; the API creates its failure and
    refusal series at 0, for every pool, transport and profile it offers."""
    settings = Settings(pools=["server", "jetson"], redis_url="redis://-")
    api.metrics.prime(settings, "0.0.0")
    for transport in settings.available_transports:
        labels = {"pool": "jetson", "transport": transport, "profile": "echo", "state": "failed",
                  "reason": "worker_lost"}  # fmt: skip
        assert REGISTRY.get_sample_value("voicepool_sessions_ended_total", labels) is not None
    for reason in ("no_workers", "queue_full", "no_capacity"):
        labels = {"pool": "jetson", "reason": reason}
        assert REGISTRY.get_sample_value("voicepool_sessions_refused_total", labels) is not None


def test_alerts_fire_on_fleet_scenarios(tmp_path: Path) -> None:
    # promtool compares annotations too: test the expressions on a copy without them.
    rules = yaml.safe_load(ALERTS.read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "15s",
        "tests": [FULL_FLEET, ROOM_LEFT, WORKER_HEALTH, FIRSTS],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
