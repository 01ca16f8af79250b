"""A KEDA-like autoscaler you can run on one machine: the ScaledObject of a worker pool,
applied to real ``voicepool worker`` processes.

It reads the *rendered* ScaledObject (``kubectl kustomize`` of an overlay, or a file of
rendered manifests): its Prometheus query and threshold, polling interval, replica
bounds and the HPA behavior (stabilization windows, scale-up and scale-down policies).
Then, as KEDA and the Horizontal Pod Autoscaler would:

* every ``pollingInterval`` it runs the query against a real Prometheus (the HTTP query
  API KEDA's Prometheus scaler calls) and wakes a pool at zero replicas when the value
  passes ``activationThreshold`` (KEDA's own loop);
* every HPA sync period (15 s, kube-controller-manager's default) it computes the
  replica count the HPA would: ``ceil(value / threshold)`` outside the 10 % tolerance,
  stabilized over the behavior's windows and limited by its policies;
* it starts worker processes to match, and stops the newest first with SIGTERM (a
  ReplicaSet deletes the youngest pod): the worker drains, moving its calls to the
  others, and gets SIGKILL only after the Deployment's ``terminationGracePeriodSeconds``.

    kubectl kustomize deploy/k8s/overlays/production > /tmp/k8s.yaml   # or pass the dir
    VOICEPOOL_REDIS_URL=redis://... .venv/bin/python ops/scale/keda_loop.py \\
        --manifests /tmp/k8s.yaml --pool server --prometheus http://127.0.0.1:9090

Prometheus must scrape the API's ``/metrics``. What it leaves out of a cluster: pod
scheduling and image pulls (a worker here is a process start), and KEDA's metrics
server cache. ``ops/bench/autoscale.py`` drives it with a burst of real calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the test extra

from shared.connections import free_port

HPA_SYNC_S = 15.0  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance

# --- the ScaledObject ----------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    type: str  # Pods or Percent
    value: int
    period_s: float


@dataclass(frozen=True)
class Rules:
    """One direction of ``behavior`` (scaleUp or scaleDown)."""

    stabilization_s: float
    policies: tuple[Policy, ...]
    select: str = "Max"  # Max, Min or Disabled


# Kubernetes' defaults when a ScaledObject gives no behavior (autoscaling/v2).
DEFAULT_UP = Rules(0, (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DEFAULT_DOWN = Rules(300, (Policy("Percent", 100, 15),))


def _rules(raw: dict[str, Any] | None, default: Rules) -> Rules:
    if not raw:
        return default
    policies = tuple(
        Policy(p["type"], int(p["value"]), float(p["periodSeconds"]))
        for p in raw.get("policies", [])
    )
    return Rules(
        float(raw.get("stabilizationWindowSeconds", default.stabilization_s)),
        policies or default.policies,
        raw.get("selectPolicy", "Max"),
    )


@dataclass(frozen=True)
class Scaling:
    """What the loop takes from a ScaledObject and the Deployment it scales."""

    name: str
    target: str
    query: str
    threshold: float
    activation_threshold: float
    ignore_null_values: bool
    polling_interval_s: float
    cooldown_s: float
    min_replicas: int
    max_replicas: int
    scale_up: Rules
    scale_down: Rules
    command: tuple[str, ...] = ()  # the target Deployment's worker command
    grace_s: float = 30.0  # its terminationGracePeriodSeconds

    @classmethod
    def from_manifests(cls, objects: Iterable[dict[str, Any]], pool: str) -> Scaling:
        """The ScaledObject of ``pool``'s worker Deployment (its command says --pool)."""
        objects = list(objects)
        deployments = {
            o["metadata"]["name"]: o
            for o in objects
            if o.get("kind") == "Deployment" and pool_of(o) == pool
        }
        for obj in objects:
            if obj.get("kind") != "ScaledObject":
                continue
            spec = obj["spec"]
            target = spec["scaleTargetRef"]["name"]
            if target not in deployments:
                continue
            trigger = next(t for t in spec["triggers"] if t["type"] == "prometheus")
            meta = trigger["metadata"]
            behavior = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
            behavior = behavior.get("behavior") or {}
            pod = deployments[target]["spec"]["template"]["spec"]
            return cls(
                name=obj["metadata"]["name"],
                target=target,
                query=meta["query"],
                threshold=float(meta["threshold"]),
                activation_threshold=float(meta.get("activationThreshold", 0)),
                ignore_null_values=meta.get("ignoreNullValues", "true").lower() == "true",
                polling_interval_s=float(spec.get("pollingInterval", 30)),
                cooldown_s=float(spec.get("cooldownPeriod", 300)),
                min_replicas=int(spec.get("minReplicaCount", 0)),
                max_replicas=int(spec.get("maxReplicaCount", 100)),
                scale_up=_rules(behavior.get("scaleUp"), DEFAULT_UP),
                scale_down=_rules(behavior.get("scaleDown"), DEFAULT_DOWN),
                command=tuple(pod["containers"][0]["command"]),
                grace_s=float(pod.get("terminationGracePeriodSeconds", 30)),
            )
        raise LookupError(f"no ScaledObject scales a worker Deployment of pool {pool!r}")

    @property
    def capacity(self) -> int:
        return int(flag(self.command, "--capacity"))


def flag(command: Sequence[str], name: str) -> str:
    return command[list(command).index(name) + 1]


def pool_of(deployment: dict[str, Any]) -> str | None:
    """The --pool of a worker Deployment's container command (None: not a worker)."""
    command = deployment["spec"]["template"]["spec"]["containers"][0].get("command") or []
    if "worker" not in command or "--pool" not in command:
        return None
    return flag(command, "--pool")


def render(path: Path, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """Objects of a kustomization directory (``kubectl kustomize``), or of a YAML file."""
    if path.is_dir():
        binary = shutil.which(kubectl)
        if binary is None:
            raise SystemExit(f"{kubectl} not found: render the overlay elsewhere, pass the file")
        text = subprocess.run(
            [binary, "kustomize", str(path)], capture_output=True, text=True, check=True
        ).stdout
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- the HPA's arithmetic ------------------------------------------------------------


@dataclass
class Hpa:
    """The replica count the Horizontal Pod Autoscaler would ask for, for one External
    metric of type AverageValue (KEDA's Prometheus trigger), with ``behavior``: as in
    Kubernetes' pkg/controller/podautoscaler (replica calculation, then stabilization,
    then the policies' rate limits)."""

    scaling: Scaling
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (when, +/- replicas)

    def raw(self, current: int, value: float) -> int:
        threshold = self.scaling.threshold
        if current > 0 and abs(value / (threshold * current) - 1) <= TOLERANCE:
            return current  # within tolerance: no change
        return math.ceil(value / threshold)

    def desired(self, now: float, current: int, value: float) -> int:
        s = self.scaling
        raw = self.raw(current, value)
        longest = max(s.scale_up.stabilization_s, s.scale_down.stabilization_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if now - t <= longest]
        self.recommendations.append((now, raw))
        up = min(r for t, r in self.recommendations if now - t <= s.scale_up.stabilization_s)
        down = max(r for t, r in self.recommendations if now - t <= s.scale_down.stabilization_s)
        wanted = min(max(current, up), down)
        low, high = max(s.min_replicas, 1), s.max_replicas  # the HPA never goes below 1
        if wanted > current:
            limit = max(self._limit(now, current, s.scale_up, up=True), current)
            return max(min(wanted, limit, high), low)
        if wanted < current:
            limit = min(self._limit(now, current, s.scale_down, up=False), current)
            return min(max(wanted, limit, low), high)
        return min(max(wanted, low), high)

    def _limit(self, now: float, current: int, rules: Rules, *, up: bool) -> int:
        if rules.select == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            added = sum(d for t, d in self.events if d > 0 and now - t < policy.period_s)
            removed = -sum(d for t, d in self.events if d < 0 and now - t < policy.period_s)
            start = current - added + removed  # replicas when the period began
            if policy.type == "Pods":
                proposals.append(start + policy.value if up else start - policy.value)
            elif up:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                proposals.append(math.floor(start * (1 - policy.value / 100)))
        # "Max" picks the policy that allows the largest change, "Min" the smallest.
        largest = max if up else min
        smallest = min if up else max
        return (largest if rules.select == "Max" else smallest)(proposals)

    def scaled(self, now: float, delta: int) -> None:
        if delta:
            self.events.append((now, delta))
        rules = (self.scaling.scale_up, self.scaling.scale_down)
        longest = max((p.period_s for r in rules for p in r.policies), default=0.0)
        self.events = [(t, d) for t, d in self.events if now - t < longest]


# --- where the number comes from -------------------------------------------------------


class QueryError(Exception):
    pass


@dataclass
class PrometheusSource:
    """Prometheus' instant query API, as KEDA's Prometheus scaler calls it."""

    url: str
    bearer: str | None = None

    async def query(self, client: httpx.AsyncClient, expr: str, ignore_null: bool) -> float:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        response = await client.get(
            f"{self.url.rstrip('/')}/api/v1/query", params={"query": expr}, headers=headers
        )
        response.raise_for_status()
        data = response.json()["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        result = data["result"]
        if not result:
            if ignore_null:
                return 0.0
            raise QueryError("the query returned no value (ignoreNullValues: false)")
        if len(result) > 1:
            raise QueryError(f"the query returned {len(result)} series, not one")
        value = float(result[0]["value"][1])
        if math.isnan(value) or math.isinf(value):
            raise QueryError(f"the query returned {value}")
        return value


# --- the workers -------------------------------------------------------------------------


Spawn = Callable[[], "subprocess.Popen[bytes]"]


@dataclass
class Workers:
    """The pool's worker processes: running ones (the replica count) and terminating ones
    (SIGTERM sent: draining), which a Deployment no longer counts either."""

    spawn: Spawn
    grace_s: float
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    terminating: dict[subprocess.Popen[bytes], float] = field(default_factory=dict)
    exits: list[tuple[int, float, int | None]] = field(default_factory=list)  # pid, s, code

    def start(self) -> None:
        self.running.append(self.spawn())

    def stop_newest(self) -> None:
        proc = self.running.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # drains: calls move to the others
        self.terminating[proc] = time.monotonic()

    def reap(self) -> None:
        """Forget exited processes; SIGKILL a drain that outlived the grace period. A
        running worker that exited on its own is replaced (the ReplicaSet would)."""
        now = time.monotonic()
        for proc, since in list(self.terminating.items()):
            if proc.poll() is None and now - since > self.grace_s:
                proc.kill()
            if proc.poll() is not None:
                self.exits.append((proc.pid, round(now - since, 2), proc.returncode))
                del self.terminating[proc]
        for proc in [p for p in self.running if p.poll() is not None]:
            self.running.remove(proc)
            self.start()

    def stop_all(self) -> None:
        while self.running:
            self.stop_newest()


# --- the loop ---------------------------------------------------------------------------


@dataclass
class Decision:
    t: float  # seconds since the loop started
    value: float | None
    current: int
    desired: int
    why: str


@dataclass
class Autoscaler:
    scaling: Scaling
    source: PrometheusSource
    workers: Workers
    hpa_sync_s: float = HPA_SYNC_S
    decisions: list[Decision] = field(default_factory=list)
    on_decision: Callable[[Decision], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.scaling
        hpa = Hpa(s)
        started = time.monotonic()
        next_sync = started
        last_active = started
        async with httpx.AsyncClient(timeout=5) as client:
            while not stop.is_set():
                tick = time.monotonic()
                self.workers.reap()
                value: float | None = None
                error = ""
                try:
                    value = await self.source.query(client, s.query, s.ignore_null_values)
                except (httpx.HTTPError, QueryError, KeyError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                current = len(self.workers.running)
                desired, why = current, "hold"
                active = value is not None and value > s.activation_threshold
                if active:
                    last_active = tick
                if current < s.min_replicas:  # a new ScaledObject, or a crashed start
                    desired, why = s.min_replicas, "minReplicaCount"
                elif value is None:
                    # KEDA reports the error; the HPA keeps the replicas it has.
                    why = f"no metric, hold ({error})"
                elif current == 0:
                    if active:  # KEDA's own loop wakes a pool at zero
                        desired, why = max(s.min_replicas, 1), "activate"
                elif s.min_replicas == 0 and not active and tick - last_active >= s.cooldown_s:
                    desired, why = 0, "cooldown: to zero"
                elif tick >= next_sync:
                    next_sync = tick + self.hpa_sync_s
                    desired = hpa.desired(tick, current, value)
                    why = "hpa"
                self._apply(tick, current, desired, hpa)
                decision = Decision(round(tick - started, 2), value, current, desired, why)
                self.decisions.append(decision)
                if self.on_decision is not None:
                    self.on_decision(decision)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(s.polling_interval_s - (time.monotonic() - tick), 0)
                    )

    def _apply(self, now: float, current: int, desired: int, hpa: Hpa) -> None:
        for _ in range(desired - current):
            self.workers.start()
        for _ in range(current - desired):
            self.workers.stop_newest()
        hpa.scaled(now, desired - current)


# --- running it on its own ---------------------------------------------------------------


def local_spawn(command: Sequence[str]) -> Spawn:
    """The Deployment's worker command on this machine: its own metrics port each."""
    tail = list(command[1:])  # after `voicepool`
    at = tail.index("--metrics-port") + 1 if "--metrics-port" in tail else None

    def spawn() -> subprocess.Popen[bytes]:
        args = list(tail)
        if at is not None:
            args[at] = str(free_port())
        return subprocess.Popen([sys.executable, "-m", "voicepool", *args])

    return spawn


def with_overrides(scaling: Scaling, args: argparse.Namespace) -> Scaling:
    """Shorter windows for a demo or a benchmark; everything else as rendered."""
    down = scaling.scale_down
    if args.scale_down_window is not None:
        down = replace(down, stabilization_s=args.scale_down_window)
    if args.scale_down_period is not None:
        down = replace(
            down, policies=tuple(replace(p, period_s=args.scale_down_period) for p in down.policies)
        )
    grace = args.grace if args.grace is not None else scaling.grace_s
    return replace(scaling, scale_down=down, grace_s=grace)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifests",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "deploy/k8s/overlays/production",
        help="an overlay directory (rendered with kubectl kustomize) or a rendered YAML file",
    )
    parser.add_argument("--pool", default="server")
    parser.add_argument("--hpa-sync", type=float, default=HPA_SYNC_S, help="seconds (15)")
    parser.add_argument("--scale-down-window", type=float, help="override (seconds)")
    parser.add_argument("--scale-down-period", type=float, help="override policies' period")
    parser.add_argument("--grace", type=float, help="override terminationGracePeriodSeconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    args = parser.parse_args()
    scaling = with_overrides(Scaling.from_manifests(render(args.manifests), args.pool), args)
    workers = Workers(local_spawn(scaling.command), scaling.grace_s)
    token = os.environ.get("PROMETHEUS_BEARER_TOKEN")
    loop = Autoscaler(
        scaling,
        PrometheusSource(args.prometheus, token),
        workers,
        hpa_sync_s=args.hpa_sync,
        on_decision=lambda d: print(
            f"{d.t:7.1f}s  value={d.value}  replicas {d.current} -> {d.desired}  ({d.why})",
            flush=True,
        ),
    )
    print(f"{scaling.name}: {scaling.query} / {scaling.threshold} per worker", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await loop.run(stop)
        workers.stop_all()  # drain what is left
        while workers.terminating:
            workers.reap()
            await asyncio.sleep(0.5)

    asyncio.run(run())


if __name__ == "__main__":
    main()
