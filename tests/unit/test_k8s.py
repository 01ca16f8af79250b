"""deploy/k8s, checked offline: each overlay rendered by kubectl's own kustomize, every
object validated against its schema (Kubernetes' built-in kinds with kubernetes-validate,
strict; KEDA's ScaledObject and TriggerAuthentication against KEDA's CRD types from
cloudcoil-models-keda, unknown fields refused), then what the deployment relies on:
drains that fit in the grace period, a ScaledObject and a PodDisruptionBudget per pool,
a query that counts the pool's sessions once, non-root containers, the overlay's image,
and settings the code knows. No cluster is needed; ops/scale/keda_loop.py's HPA
arithmetic is checked here too."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the test extra
from cloudcoil.models.keda import v1alpha1 as keda
from prometheus_client import REGISTRY

import api.metrics
import worker.metrics
from shared.settings import Settings

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {
    "production": K8S / "overlays" / "production",
    "jetson": K8S / "overlays" / "jetson",
    "prometheus-auth": K8S / "examples" / "prometheus-auth",
}
SECRET = K8S / "examples" / "secret.example.yaml"
# The oldest Kubernetes these target (KEDA 2.16 supports 1.29-1.31) and the newest
# kubernetes-validate knows.
VERSIONS = ("1.30.0", "1.37.0")
KEDA_KINDS = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}
NAMESPACE = "voicepool"
# The Prometheus scaler's metadata (KEDA 2.16); anything else is a typo KEDA ignores.
PROMETHEUS_METADATA = {
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
    "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "authModes", "timeout",
}  # fmt: skip


def kubectl() -> str:
    binary = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    if binary is None:
        pytest.fail(
            "kubectl is not on PATH: run `make test-deps` (Debian's kubernetes-client; its "
            "kubectl 1.20 renders these kustomizations)"
        )
    return binary


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS[overlay])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered(overlay) if o["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in of_kind(overlay, kind) if o["metadata"]["name"] == name)


def pods(overlay: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in of_kind(overlay, "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def worker_deployments(overlay: str) -> dict[str, dict[str, Any]]:
    """Worker Deployments by pool (their command's --pool)."""
    found = {}
    for deployment in of_kind(overlay, "Deployment"):
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        if command[:2] == ["voicepool", "worker"]:
            found[command[command.index("--pool") + 1]] = deployment
    return found


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def secret_values() -> dict[str, str]:
    return dict(yaml.safe_load(SECRET.read_text())["stringData"])


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets: its ConfigMaps, then its own env (secrets from
    the example Secret), as the kubelet builds it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    secrets = secret_values()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "voicepool-secrets"
            assert ref["key"] in secrets or ref.get("optional"), ref["key"]
            if ref["key"] in secrets:
                env[item["name"]] = secrets[ref["key"]]
    return env


def setting_names() -> set[str]:
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        if field.validation_alias is not None:
            names.update(str(c) for c in field.validation_alias.choices)  # type: ignore[union-attr]
        else:
            names.add(f"VOICEPOOL_{name.upper()}")
    return names


def images_of(overlay: Path) -> dict[str, str]:
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    return {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}


# --- schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_built_in_kinds_match_the_kubernetes_schema(overlay: str, version: str) -> None:
    for obj in rendered(overlay):
        if obj["kind"] not in KEDA_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


def differences(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    """Where ``kept`` (the model's dump) is not ``given``: fields the model dropped
    (unknown to KEDA) or values it had to convert (wrong type)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        for key in given:
            if key not in kept:
                yield f"{path}.{key}: unknown field"
            else:
                yield from differences(given[key], kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        for i, (a, b) in enumerate(zip(given, kept, strict=True)):
            yield from differences(a, b, f"{path}[{i}]")
    elif given != kept or type(given) is not type(kept):
        yield f"{path}: {given!r} read as {kept!r}"


def keda_problems(obj: dict[str, Any]) -> list[str]:
    model = KEDA_KINDS[obj["kind"]].model_validate(obj)  # raises on a wrong or missing field
    return list(differences(obj, model.model_dump(by_alias=True, exclude_unset=True, mode="json")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_match_kedas_crds(overlay: str) -> None:
    found = [o for o in rendered(overlay) if o["kind"] in KEDA_KINDS]
    assert found
    for obj in found:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert keda_problems(obj) == [], obj["metadata"]["name"]
        for trigger in obj["spec"].get("triggers", []):
            assert trigger["type"] == "prometheus"
            assert set(trigger["metadata"]) <= PROMETHEUS_METADATA


def test_the_keda_check_refuses_unknown_fields_and_wrong_types() -> None:
    scaled = dict(named("production", "ScaledObject", "voicepool-worker-server"))
    scaled["spec"] = {**scaled["spec"], "pollingIntervall": 5, "minReplicaCount": "1"}
    assert sorted(keda_problems(scaled)) == [
        ".spec.minReplicaCount: '1' read as 1",
        ".spec.pollingIntervall: unknown field",
    ]


def test_the_example_secret_matches_the_schema_and_every_key_the_pods_need() -> None:
    secret = yaml.safe_load(SECRET.read_text())
    kubernetes_validate.validate(secret, VERSIONS[-1], strict=True)
    assert secret["metadata"] == {"name": "voicepool-secrets", "namespace": NAMESPACE}
    for overlay in OVERLAYS:
        for _, pod in pods(overlay):
            for item in pod["containers"][0].get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret["stringData"], ref["key"]


# --- what the deployment relies on ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pool_has_a_scaled_object_and_a_disruption_budget(overlay: str) -> None:
    workers = worker_deployments(overlay)
    assert set(workers) == ({"server", "jetson"} if overlay == "jetson" else {"server"})
    config = named(overlay, "ConfigMap", next(
        o["metadata"]["name"] for o in of_kind(overlay, "ConfigMap")
        if o["metadata"]["name"].startswith("voicepool-config")
    ))["data"]  # fmt: skip
    assert set(config["VOICEPOOL_POOLS"].split(",")) == set(workers)  # the API admits them
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(overlay, "ScaledObject")}
    budgets = of_kind(overlay, "PodDisruptionBudget")
    for pool, deployment in workers.items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"]  # the HPA owns it
        assert scaled[name]["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        query = scaled[name]["spec"]["triggers"][0]["metadata"]["query"]
        assert f'pool="{pool}"' in query
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
            and b["spec"]["selector"]["matchLabels"].get("voicepool/pool") == pool
        ]  # fmt: skip
        assert len(covering) == 1, pool
        assert covering[0]["spec"] == {**covering[0]["spec"], "maxUnavailable": 1}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_drain_within_their_grace_period(overlay: str) -> None:
    for pool, deployment in worker_deployments(overlay).items():
        pod = deployment["spec"]["template"]["spec"]
        env = container_env(overlay, pod["containers"][0])
        drain = float(
            env.get("VOICEPOOL_DRAIN_TIMEOUT", Settings.model_fields["drain_timeout"].default)
        )
        # SIGTERM drains; the kubelet's SIGKILL must come after the drain timeout.
        assert pod["terminationGracePeriodSeconds"] > drain, pool
        assert "preStop" not in pod["containers"][0].get("lifecycle", {}), pool
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] in (0, 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaling_targets_a_share_of_each_workers_slots(overlay: str) -> None:
    workers = worker_deployments(overlay)
    for scaled in of_kind(overlay, "ScaledObject"):
        spec = scaled["spec"]
        deployment = next(
            d for d in workers.values() if d["metadata"]["name"] == spec["scaleTargetRef"]["name"]
        )
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        capacity = int(flag(command, "--capacity"))
        trigger = spec["triggers"][0]
        assert trigger.get("metricType", "AverageValue") == "AverageValue"  # per pod
        share = float(trigger["metadata"]["threshold"]) / capacity
        assert 0.6 <= share <= 0.9, (scaled["metadata"]["name"], share)  # headroom
        assert trigger["metadata"]["ignoreNullValues"] == "false"  # blind: hold, not shrink
        assert trigger["metadata"]["serverAddress"].startswith("http")  # the var resolved
        assert spec["pollingInterval"] <= 10
        assert spec["minReplicaCount"] >= 1 or "activationThreshold" in trigger["metadata"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        down = behavior["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 60
        assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_without_privileges(overlay: str) -> None:
    for name, pod in pods(overlay):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's user
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        # A Service's env vars (VOICEPOOL_API_PORT=tcp://...) would clash with settings.
        assert pod["enableServiceLinks"] is False, name
        assert pod["automountServiceAccountToken"] is False, name
        assert "hostNetwork" not in pod, name
        mounts = set()
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "limits" in container["resources"] and "requests" in container["resources"]
            mounts |= {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/voicepool"} <= mounts, name  # writable where it writes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_scrape_annotations_use_the_right_ports(overlay: str) -> None:
    for name, pod in pods(overlay):
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = named(overlay, "Deployment", name)["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert int(annotations["prometheus.io/port"]) == ports["metrics"], name
        if container["command"][1] == "worker":
            assert int(flag(container["command"], "--metrics-port")) == ports["metrics"]
            probe = " ".join(container["readinessProbe"]["exec"]["command"])
            assert f"127.0.0.1:{ports['metrics']}/metrics" in probe
            assert "voicepool_worker_capacity_sessions{" in probe
            assert pod["subdomain"] == "voicepool-workers"
        else:
            env = container_env(overlay, container)
            assert env["VOICEPOOL_METRICS_BIND"].endswith(f":{ports['metrics']}")
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_one_namespace_with_the_overlays_image(overlay: str) -> None:
    for obj in rendered(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    production = images_of(OVERLAYS["production"])
    assert set(production) == {"voicepool"}
    # kustomize applies an overlay's images only to what it includes: the jetson overlay
    # repeats production's, and they must agree.
    assert images_of(OVERLAYS["jetson"]) == production
    for _, pod in pods(overlay):
        for container in pod["containers"]:
            assert container["image"] == production["voicepool"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_known_to_the_code_and_valid(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = setting_names()
    for name, pod in pods(overlay):
        env = container_env(overlay, pod["containers"][0])
        unknown = {k for k in env if k.startswith("VOICEPOOL_") and k not in known}
        assert not unknown, (name, unknown)  # a typo would be ignored silently
        for key in [k for k in os.environ if k.startswith("VOICEPOOL_") or k in known]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.webrtc_ice_policy == "relay" and settings.turn_urls, name


def test_metric_names_in_the_manifests_exist() -> None:
    assert api.metrics and worker.metrics  # imported for their registrations
    families = {f.name for f in REGISTRY.collect()}
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    used = set(re.findall(r"\bvoicepool_[a-z_]+\b", text))
    assert used and used <= families, used - families


# --- the query -----------------------------------------------------------------------------


def test_the_query_counts_every_waiting_or_live_session_once(tmp_path: Path) -> None:
    """Two API replicas report the same fleet-wide gauges; the query must count each
    session once, for its own pool only, queued ones included."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: run `make test-deps` (package prometheus)")
    counts = {
        "server": {"queued": 5, "starting": 1, "ready": 1, "connected": 6, "reconnecting": 1,
                   "recovering": 1},
        "jetson": {"queued": 0, "starting": 0, "ready": 0, "connected": 2, "reconnecting": 0,
                   "recovering": 1},
    }  # fmt: skip
    series = [
        {
            "series": f'voicepool_live_sessions{{instance="{api}",pool="{pool}",state="{state}"}}',
            "values": f"{count}x8",
        }
        for api in ("10.0.0.1:9101", "10.0.0.2:9101")
        for pool, states in counts.items()
        for state, count in states.items()
    ]
    tests = []
    for scaled in of_kind("jetson", "ScaledObject"):
        metadata = scaled["spec"]["triggers"][0]["metadata"]
        pool = scaled["metadata"]["labels"]["voicepool/pool"]
        demand = sum(counts[pool].values())
        tests.append({"expr": metadata["query"], "eval_time": "1m",
                      "exp_samples": [{"labels": "{}", "value": demand}]})  # fmt: skip
    assert len(tests) == 2
    spec = {"rule_files": [], "tests": [{"interval": "15s", "input_series": series,
                                          "promql_expr_test": tests}]}  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# --- ops/scale/keda_loop.py ------------------------------------------------------------------


@functools.cache
def keda_loop() -> ModuleType:
    path = ROOT / "ops" / "scale" / "keda_loop.py"
    spec = importlib.util.spec_from_file_location("keda_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["keda_loop"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_loop_reads_the_rendered_scaled_object() -> None:
    scaling = keda_loop().Scaling.from_manifests(rendered("jetson"), "jetson")
    assert scaling.target == "voicepool-worker-jetson"
    assert (scaling.capacity, scaling.threshold, scaling.min_replicas) == (2, 1.5, 1)
    assert scaling.polling_interval_s == 5 and scaling.grace_s == 330
    assert scaling.scale_down.stabilization_s == 300
    assert 'pool="jetson"' in scaling.query


def test_the_loop_scales_as_the_hpa_would() -> None:
    loop = keda_loop()
    hpa = loop.Hpa(loop.Scaling.from_manifests(rendered("production"), "server"))

    def step(now: float, current: int, value: float) -> int:
        desired = int(hpa.desired(now, current, value))
        hpa.scaled(now, desired - current)
        return desired

    # A burst: 14 sessions want ceil(14 / 3) = 5 workers; +4 pods per 15 s allows it.
    assert step(0, 1, 14) == 5
    # 30 want 10, but within the same 15 s period no more than +4 from where it began.
    assert step(5, 5, 30) == 5
    assert step(15, 5, 30) == 10
    # Within 10 % of the target: no change.
    assert step(30, 10, 31) == 10
    # Quiet again: nothing for 300 s (the highest recommendation in the window wins),
    # then one pod a minute, never below minReplicaCount.
    assert step(60, 10, 1) == 10
    assert step(329, 10, 1) == 10
    assert step(346, 10, 1) == 9
    assert step(361, 9, 1) == 9
    assert step(406, 9, 1) == 8
    got, now, current = [], 406.0, 8
    while current > 1:
        now += 60
        current = step(now, current, 0)
        got.append(current)
    assert got == [7, 6, 5, 4, 3, 2, 1]
    assert step(now + 60, 1, 0) == 1
    assert math.ceil(2.9 / 3) == 1  # the arithmetic the threshold comment promises


class FakeWorker:
    """Stands in for a worker process: SIGTERM ends it at once."""

    def __init__(self) -> None:
        self.pid = 0
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.returncode = 0

    def kill(self) -> None:
        self.returncode = -9


async def test_the_loop_wakes_an_empty_pool_holds_when_blind_and_cools_down_to_zero() -> None:
    loop = keda_loop()
    base = loop.Scaling.from_manifests(rendered("production"), "server")
    scaling = dataclasses.replace(
        base, min_replicas=0, polling_interval_s=0.01, cooldown_s=0.2, activation_threshold=0.0
    )
    values: list[float | None] = [0.0, 2.0, None, 7.0, 0.0]
    stop = asyncio.Event()

    class Source:
        async def query(self, client: object, expr: str, ignore_null: bool) -> float:
            assert expr == base.query and ignore_null is False
            value = values.pop(0) if len(values) > 1 else values[0]
            if value is None:
                raise loop.QueryError("no answer")
            return value

    workers = loop.Workers(spawn=FakeWorker, grace_s=1)
    autoscaler = loop.Autoscaler(scaling, Source(), workers, hpa_sync_s=0)
    task = asyncio.create_task(autoscaler.run(stop))
    for _ in range(1000):  # at most 10 s on a loaded machine; about 0.3 s on an idle one
        if any(d.desired == 0 and d.current for d in autoscaler.decisions):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    steps = [(d.current, d.desired, d.why.split(" ")[0]) for d in autoscaler.decisions]
    assert steps[:4] == [(0, 0, "hold"), (0, 1, "activate"), (1, 1, "no"), (1, 3, "hpa")]
    # Quiet: the HPA's scale-down window holds 3, KEDA's cooldown takes the pool to zero.
    assert (3, 0, "cooldown:") in steps
    assert steps[-1][1] == 0 and not workers.running
