"""Anchor: voicepool against Pipecat 1.14's own development runner, same client, same pipeline.

Three targets, measured in one invocation with the same client code (a
subclass of harness/ws_client.py's ProtobufClient that only adds timestamps),
the same ``echo`` pipeline and the same WebSocket transport settings:

* ``voicepool``: the real system as harness/system.py starts it: embedded
  Redis, the API under uvicorn, 2 workers x 60 slots (``voicepool worker``),
  log level INFO. One request gives a WS URL: ``POST /api/start`` with
  ``{"transport": "websocket", "body": {"profile": "echo"}}`` creates the
  session, waits until a worker has taken and prepared it, and answers
  ``{"wsUrl": ...}`` with a single-use token in it (``POST /api/sessions`` +
  ``POST /api/sessions/{id}/connect`` would be two requests and a wait). Set
  for a one-user benchmark: no per-user session, rate or in-flight limits,
  ``VOICEPOOL_READY_WAIT=60``. A session is ended with ``DELETE`` after its
  client closes (not timed; otherwise it would wait 5 s for the client to
  come back).
* ``runner-per-session``: one process running ``pipecat.runner.run.main()``
  (ops/bench/runner_bots/echo_bot.py, ``-t websocket --ws-auth token``):
  ``POST /start`` answers ``wsUrl`` + a one-time token; connecting to
  ``/ws-client?token=...`` runs ``bot(runner_args)`` as an asyncio task,
  which builds the pipeline with a fresh ``SileroVADAnalyzer`` (the ONNX
  model is loaded per session, as in Pipecat's examples). The runner
  answers ``wss://`` for any host but ``localhost``; the client connects with
  ``ws://`` (no TLS anywhere here). The bot's log level is set to INFO too
  (the runner's ``main()`` sets DEBUG).
* ``runner-shared``: the same bot with ``--vad shared``: voicepool's
  ``SharedSileroVADAnalyzer`` (worker/vad.py), the model loaded once when the
  server starts. The anchor: the ratio column is voicepool / this.

* ``voicepool-before`` (with ``--before REV``): voicepool as it was at commit
  REV, from a git worktree of it, the same way: a before/after in one run.

The runner imports FastAPI upload routes that need ``python-multipart``, which
pipecat-ai 1.14's ``runner`` extra does not list: the ``test`` extra pins it.

voicepool runs with its product defaults for liveness (heartbeat every 1 s, TTL
10 s, reaper every 0.5 s), not the test harness's tighter ones.

The pipeline is ``input → VADProcessor(Silero, stop_secs 0.5) → EchoTurns →
output`` in all three; voicepool's session adds its ClientGate, its event
tap publishing to Redis and pipeline heartbeats (its own product cost,
counted against it), and runs the gate, the VAD and EchoTurns in Pipecat's
direct mode and Silero's analysis on the event loop, where the runner's bots
keep Pipecat's defaults (a queue and task per processor, a thread per
analyzer). The echo needs the VAD's end of speech: the bot plays a turn back
only after 0.5 s of silence.

What is measured, all on the client, one clock (``time.perf_counter``), each
from the moment just before the start request is sent:

* ``ready``: → the HTTP answer carrying the WS URL. NOT comparable across
  targets: voicepool answers once a worker has dequeued and prepared the
  session; the runner answers at once (it only signs a token) and does all
  its work after the WebSocket connects.
* ``talk``: → the RTVI ``bot-ready`` message received, after the client
  connected and sent RTVI ``client-ready``: the end-to-end number. Includes
  the HTTP request, the WebSocket handshake, building the transport and
  pipeline, (per-session runner) loading Silero, starting the pipeline.
* ``first echo``: → the first bot audio frame with RMS >= 200 (int16). The
  client streams, from the moment it connects, in real-time 20 ms frames,
  hello.wav's first phrase ("Hello voice pool", 0.82 s, 16 kHz) and then
  digital silence; so first echo ~ connect + 0.82 s + 0.5 s VAD stop + the
  pipeline's own latency. Dominated by the audio, by design: it shows that
  the media path works and adds nothing unusual, not how fast a session starts.

Phases per target and rep, in this order: start the target's processes
(fresh each rep; one target's processes up at a time, stopped before the
next target starts); 1 warm-up session (not measured); 2 s settle; idle
window; ``--sequential`` sessions one at a time (open, wait for bot-ready,
then for the echo, close, end; 0.2 s pause); ``--churn`` sessions opened and
closed back to back (after 20 unmeasured ones); 1 call talking, then
``--steady`` calls talking; a burst of ``--burst``
sessions requested at once, every client kept connected and streaming until
all have reached bot-ready or failed (then up to 15 s more for their echoes,
not in the CPU window), then all closed.

* one at a time: p50/p99 of ready and talk, p50 of first echo, over the
  sessions that reached bot-ready (those that did not are listed as errors).
  The client collects its own garbage in the pause before each session and
  keeps its collector off from the request to bot-ready
  (``measure.client_collector_paused``): a full collection of the client's
  heap is 26-65 ms and would be charged to whichever target it hit.
* N calls talking (``--steady``, 16; and 1 alone), for ``--steady-s`` seconds
  each: every client says the phrase again and again with a 2.5 s pause, the
  calls' phrases spread over that loop; the echo delay is from the end of a
  phrase as sent to the first loud bot audio after it (the VAD's 0.5 s of
  silence included), every turn but each call's first; "added" is the p99 at N
  minus the p99 alone. CPU per call: the target's processes' CPU over the
  window / wall time / N, in cores.
* burst: talk p50/p99 over those that reached bot-ready; how many did
  (60 s limit per session for request + connect + bot-ready).
* CPU per session start: user+system CPU of the target's processes
  (voicepool: API, both workers, redis-server; runner: its process) from
  the burst's first request until every session reached bot-ready or failed
  (``window``), / burst size. Includes the VAD and echo work on the audio the
  already connected clients stream meanwhile, so a longer window costs more;
  excludes the clients (this process; in the JSON) and the teardown.
* idle: cores (CPU s / wall s) each process used over ``--idle-s`` seconds with
  no session, after the warm-up session ended.
* memory per churned session: each process's RSS after ``--churn`` sessions
  were opened and closed one after another (request, connect, bot-ready, close,
  end; no echo) minus its RSS before, / ``--churn``, in KB; both read 2 s after
  the last session closed, the first after 20 unmeasured sessions (caches,
  pools and allocator arenas at their working size). What a session leaves
  behind in the process that ran it (voicepool: both workers; the runner: its
  process), and in all of the target's processes (voicepool: with the API and
  redis-server, whose session records and event streams are kept for
  ``VOICEPOOL_STREAM_RETENTION`` by design).
* CPU per churned session: user+system CPU of the target's processes over those
  sessions (no audio but the client's frames until bot-ready; voicepool's
  ``DELETE`` included, its persister's writes as far as they kept up), / ``--churn``;
  and the API's share alone.

Each metric is computed per rep; the table shows median (min-max) over the
reps, and voicepool / runner-shared of the medians. The clients run in this
process on the same 2 cores as the targets, so under the burst part of every
number is waiting for a CPU; the client's own CPU is in the JSON.

Results: ops/bench/results/anchor.{json,md}; the Markdown table is printed.

    .venv/bin/python ops/bench/anchor.py [--reps 3] [--sequential 30] [--burst 100]
        [--idle-s 10] [--targets voicepool,runner-per-session,runner-shared] [--before REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
import numpy as np
import profiling  # ops/bench/profiling.py
import psutil
import websockets
from measure import (
    before_tree,
    bench_process,
    client_collector_paused,
    cpu_seconds,
    machine_facts,
    percentile,
    run_main,
    spread,
    stop_process,
    write_results,
)

from harness.ws_client import ProtobufClient
from shared.connections import free_port

if TYPE_CHECKING:
    from harness.system import System

DESCRIPTION = "Anchor: voicepool vs. Pipecat's development runner, same client and pipeline."
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BOT = HERE / "runner_bots" / "echo_bot.py"
HELLO = ROOT / "tests" / "fixtures" / "hello.wav"
PHRASE_S = 0.82  # "Hello voice pool": hello.wav up to its first pause
WORKERS, CAPACITY = 2, 60
SESSION_TIMEOUT_S = 60.0  # request + connect + bot-ready
ECHO_TIMEOUT_S = 15.0  # after bot-ready
LOUD_RMS = 200.0  # the phrase's quietest 20 ms frame has RMS ~365
SETTLE_S = 2.0
SEATED_COUNTER = "voicepool_sessions_seated_total{"
CHURN_WARM_UP = 20  # sessions before the memory baseline: caches, pools, arenas filled
PAUSE_S = 0.2  # between sequential sessions
STARTUP_TIMEOUT_S = 60.0

TARGETS = {
    "voicepool": "voicepool",
    "voicepool-before": "voicepool before",  # with --before REV
    "runner-per-session": "runner, Silero per session",
    "runner-shared": "runner, one shared Silero",
}
ANCHOR = "runner-shared"
BEFORE = "voicepool-before"
# The product's liveness defaults (shared/settings.py), over the test harness's.
PRODUCT_LIVENESS = {
    "VOICEPOOL_HEARTBEAT_TTL": "10",
    "VOICEPOOL_HEARTBEAT_INTERVAL": "1",
    "VOICEPOOL_REAPER_INTERVAL": "0.5",
}


# --- the client ------------------------------------------------------------------------


class _Tap(list[Any]):
    """Stands in for ProtobufClient's ``messages`` / ``audio`` lists: calls ``seen`` with
    each item as the client appends it (``keep``: and keeps it)."""

    def __init__(self, seen: Callable[[Any], None], *, keep: bool) -> None:
        super().__init__()
        self._seen, self._keep = seen, keep

    def append(self, item: Any) -> None:
        self._seen(item)
        if self._keep:
            super().append(item)


class TimedClient(ProtobufClient):
    """harness/ws_client.py's client, unchanged but for when it saw bot-ready and the first
    loud bot audio (``perf_counter``), and a longer WebSocket open timeout (5 s there)."""

    def __init__(self, websocket: Any, wav: Path | None = None, *, loop: bool = False):
        super().__init__(websocket, wav, loop=loop)  # its tasks have not run yet
        self.bot_ready = asyncio.Event()
        self.echoed = asyncio.Event()
        self.bot_ready_at = math.nan
        self.echo_at = math.nan
        self.messages = _Tap(self._message, keep=True)
        self.audio = _Tap(self._audio, keep=False)  # 100 clients' echoes add up

    @classmethod
    async def connect(
        cls, url: str, wav: Path | None = None, *, loop: bool = False, **connect: Any
    ) -> Self:
        ws = await websockets.connect(url, max_size=None, open_timeout=SESSION_TIMEOUT_S, **connect)
        client = cls(ws, wav, loop=loop)
        about = {"version": "1.0.0", "about": {"library": "anchor"}}
        await client.send_message(
            {"label": "rtvi-ai", "type": "client-ready", "id": "c1", "data": about}
        )
        return client

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "bot-ready" and not self.bot_ready.is_set():
            self.bot_ready_at = time.perf_counter()
            self.bot_ready.set()

    def _audio(self, item: tuple[np.ndarray, int]) -> None:
        if self.echoed.is_set():
            return
        samples = item[0].astype(np.float64)
        if samples.size and math.sqrt(float(np.mean(samples**2))) >= LOUD_RMS:
            self.echo_at = time.perf_counter()
            self.echoed.set()


class SteadyClient(TimedClient):
    """Says the phrase again and again (then a 2.5 s pause), and notes each echo's delay:
    from the end of a phrase as sent to the first loud bot audio after it."""

    def __init__(self, websocket: Any, wav: Path | None = None, *, loop: bool = True):
        super().__init__(websocket, wav, loop=True)
        self.delays: list[float] = []
        self._answered = -1  # the last phrase an echo was counted for

    def _audio(self, item: tuple[np.ndarray, int]) -> None:
        samples = item[0].astype(np.float64)
        if not samples.size or math.sqrt(float(np.mean(samples**2))) < LOUD_RMS:
            return
        now = time.monotonic()
        said = (now - self.sending_since - PHRASE_S) // self.period_s  # the last phrase ended
        if said > self._answered and said >= 1:  # not the first: it met a cold turn state
            self._answered = int(said)
            ended = self.sending_since + said * self.period_s + PHRASE_S
            self.delays.append(now - ended)


async def first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def phrase_wav(out: Path) -> Path:
    """hello.wav's first phrase: what every client says."""
    with wave.open(str(HELLO), "rb") as src:
        rate = src.getframerate()
        frames = src.readframes(int(rate * PHRASE_S))
        params = src.getparams()
    with wave.open(str(out), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)
    return out


# --- the targets -----------------------------------------------------------------------


class Target:
    key: str

    @property
    def label(self) -> str:
        return TARGETS[self.key]

    def start(self, tmp: Path) -> None:
        raise NotImplementedError

    def processes(self) -> dict[str, psutil.Process]:
        raise NotImplementedError

    def http(self, connections: int) -> httpx.AsyncClient:
        raise NotImplementedError

    async def request(self, http: httpx.AsyncClient) -> tuple[str, str | None]:
        """One HTTP call: (WS URL to connect to, session to end afterwards or None)."""
        raise NotImplementedError

    async def end(self, http: httpx.AsyncClient, session: str | None) -> None:
        return None

    def seated(self) -> float | None:
        """Sessions started so far with no hop through a queue (voicepool's seats), or None
        for a target that has no queue."""
        return None

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""


class Voicepool(Target):
    def __init__(self, key: str = "voicepool", root: Path = ROOT) -> None:
        self.key, self.root = key, root
        self.system: System | None = None
        self.token = ""

    def start(self, tmp: Path) -> None:
        from harness.system import System

        settings = {
            "VOICEPOOL_MAX_SESSIONS_PER_USER": "0",
            "VOICEPOOL_SESSIONS_PER_MINUTE": "0",
            "VOICEPOOL_MAX_REQUESTS_PER_CREDENTIAL": "0",
            "VOICEPOOL_READY_WAIT": str(SESSION_TIMEOUT_S),
            **PRODUCT_LIVENESS,
        }
        self.system = System(tmp, settings=settings, root=self.root)
        self.system.start(workers=WORKERS, capacity=CAPACITY)
        self.token = self.system.create_user("bench")

    def processes(self) -> dict[str, psutil.Process]:
        s = self.system
        assert s is not None and s.api is not None
        procs = {"api": psutil.Process(s.api.pid)}
        procs |= {f"worker{i + 1}": psutil.Process(w.pid) for i, w in enumerate(s.workers)}
        if s.redis_server is not None and s.redis_server.process is not None:
            procs["redis"] = psutil.Process(s.redis_server.process.pid)
        return procs

    def http(self, connections: int) -> httpx.AsyncClient:
        assert self.system is not None
        return httpx.AsyncClient(
            base_url=self.system.api_url,
            headers={"Authorization": f"Bearer {self.token}"},
            limits=httpx.Limits(max_connections=connections),
            timeout=SESSION_TIMEOUT_S + 5,
        )

    async def request(self, http: httpx.AsyncClient) -> tuple[str, str | None]:
        body = {"transport": "websocket", "body": {"profile": "echo"}}
        response = await http.post("/api/start", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST /api/start: {response.status_code} {response.text[:200]}")
        return response.json()["wsUrl"], response.headers["X-Session-Id"]

    async def end(self, http: httpx.AsyncClient, session: str | None) -> None:
        if session:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/api/sessions/{session}")

    def seated(self) -> float | None:
        assert self.system is not None  # (0 at a commit before seats: the counter is absent)
        samples = self.system.metrics(f"{self.system.api_url}/metrics")
        return sum(v for k, v in samples.items() if k.startswith(SEATED_COUNTER))

    def stop(self) -> None:
        if self.system is not None:
            self.system.stop()

    def log_tail(self) -> str:
        return self.system.log_tail() if self.system is not None else ""


class Runner(Target):
    def __init__(self, key: str, vad: str) -> None:
        self.key, self.vad = key, vad
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The runner process's command line (``self.port`` is chosen by then)."""
        return [sys.executable, str(BOT), "-t", "websocket", "--host", "127.0.0.1",
                "--port", str(self.port), "--ws-auth", "token", "--vad", self.vad,
                "--log-level", "INFO"]  # fmt: skip

    def start(self, tmp: Path) -> None:
        self.launch(tmp)
        self.wait_ready()

    def launch(self, tmp: Path) -> None:
        """Start the process; ``wait_ready`` waits until it serves."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.log = free_port(), tmp / "runner.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPECAT_", "VOICEPOOL_"))}
        env["PYTHONUNBUFFERED"] = "1"
        # As voicepool's workers run it (worker/__init__.py): no telemetry thread, and
        # nothing sent off this machine.
        env["ORT_DISABLE_TELEMETRY"] = "1"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=out, stderr=out)

    def wait_ready(self) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"the runner exited with {code}\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/status", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the runner did not start in time\n{self.log_tail()}")

    def processes(self) -> dict[str, psutil.Process]:
        assert self.proc is not None
        return {"runner": psutil.Process(self.proc.pid)}

    def http(self, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            limits=httpx.Limits(max_connections=connections),
            timeout=SESSION_TIMEOUT_S + 5,
        )

    async def request(self, http: httpx.AsyncClient) -> tuple[str, str | None]:
        response = await http.post("/start", json={"transport": "websocket"})
        if response.status_code != 200:
            raise RuntimeError(f"POST /start: {response.status_code} {response.text[:200]}")
        body = response.json()
        url = "ws://" + body["wsUrl"].split("://", 1)[1]  # wss:// for any host but localhost
        return f"{url}?token={body['token']}", None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        if self.log is None or not self.log.exists():
            return ""
        tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log.name} ---\n" + "\n".join(tail)


def make_target(key: str, args: argparse.Namespace) -> Target:
    if key == "voicepool":
        return Voicepool()
    if key == BEFORE:
        return Voicepool(BEFORE, args.before_tree)
    vad = "per-session" if key == "runner-per-session" else "shared"
    return Runner(key, vad)


# --- one session -----------------------------------------------------------------------


@dataclass
class Run:
    ready_s: float = math.nan
    talk_s: float = math.nan
    echo_s: float = math.nan
    error: str = ""


@dataclass
class Opened:
    run: Run
    t0: float
    client: TimedClient | None = None
    session: str | None = None


async def open_session(target: Target, http: httpx.AsyncClient, wav: Path) -> Opened:
    """Request → connect → client-ready → bot-ready; errors are recorded, not raised."""
    opened = Opened(Run(), time.perf_counter())
    stage = "request"
    try:
        async with asyncio.timeout(SESSION_TIMEOUT_S):
            url, opened.session = await target.request(http)
            opened.run.ready_s = time.perf_counter() - opened.t0
            stage = "connect"
            opened.client = client = await TimedClient.connect(url, wav)
            stage = "bot-ready"
            await first_of(client.bot_ready, client.closed)
            if not client.bot_ready.is_set():
                raise RuntimeError("the socket closed before bot-ready")
            opened.run.talk_s = client.bot_ready_at - opened.t0
    except Exception as exc:  # TimeoutError, refused, HTTP errors: one failed session
        opened.run.error = f"{stage}: {type(exc).__name__} {exc}".strip()[:200]
    return opened


async def wait_echo(opened: Opened) -> None:
    client = opened.client
    if client is None or opened.run.error:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ECHO_TIMEOUT_S):
            await first_of(client.echoed, client.closed)
    if client.echoed.is_set():
        opened.run.echo_s = client.echo_at - opened.t0
    else:
        opened.run.error = "no echo" + (" (socket closed)" if client.closed.is_set() else "")


async def close(target: Target, http: httpx.AsyncClient, opened: Opened) -> None:
    if opened.client is not None:
        with contextlib.suppress(Exception):
            await opened.client.close()
    await target.end(http, opened.session)


# --- phases ----------------------------------------------------------------------------


def ms(values: Sequence[float], q: float) -> float:
    ok = [v * 1000 for v in values if not math.isnan(v)]
    return round(percentile(ok, q), 1) if ok else math.nan


def error_counts(runs: Sequence[Run]) -> dict[str, int]:
    return dict(Counter(r.error for r in runs if r.error))


def _seated_since(target: Target, before: float | None) -> float | None:
    after = target.seated()
    return None if before is None or after is None else after - before


async def sequential(target: Target, count: int, wav: Path) -> dict[str, Any]:
    runs: list[Run] = []
    seated = target.seated()
    async with target.http(4) as http:
        for i in range(count):
            with client_collector_paused():
                opened = await open_session(target, http, wav)
            await wait_echo(opened)
            await close(target, http, opened)
            runs.append(opened.run)
            r = opened.run
            print(
                f"    {i + 1}/{count}: ready {r.ready_s * 1000:.0f} ms, talk "
                f"{r.talk_s * 1000:.0f} ms, echo {r.echo_s * 1000:.0f} ms {r.error}",
                flush=True,
            )
            await asyncio.sleep(PAUSE_S)
    talk = [r.talk_s for r in runs]
    return {
        "n": count,
        "reached_talk": sum(not math.isnan(t) for t in talk),
        "ready_p50_ms": ms([r.ready_s for r in runs if not math.isnan(r.talk_s)], 50),
        "ready_p99_ms": ms([r.ready_s for r in runs if not math.isnan(r.talk_s)], 99),
        "talk_p50_ms": ms(talk, 50),
        "talk_p99_ms": ms(talk, 99),
        "echo_p50_ms": ms([r.echo_s for r in runs], 50),
        "seated": _seated_since(target, seated),
        "errors": error_counts(runs),
        "runs": [asdict(r) for r in runs],
    }


def each(
    procs: dict[str, psutil.Process], read: Callable[[psutil.Process], float]
) -> dict[str, float]:
    """``read`` of each process, NaN for one that is gone."""
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = read(proc)
        except psutil.Error:
            out[name] = math.nan
    return out


def cpu_now(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return each(procs, cpu_seconds)


def rss_now(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return each(procs, lambda proc: float(proc.memory_info().rss))


async def churn(target: Target, count: int, wav: Path) -> dict[str, Any]:
    """Sessions opened and closed back to back: RSS left behind per session, in KB."""
    procs = target.processes()
    async with target.http(4) as http:

        async def cycle(n: int) -> list[Run]:
            runs = []
            for _ in range(n):
                opened = await open_session(target, http, wav)
                await close(target, http, opened)
                runs.append(opened.run)
            return runs

        await cycle(CHURN_WARM_UP)
        await asyncio.sleep(SETTLE_S)
        seated = target.seated()
        before, cpu_before = rss_now(procs), cpu_now(procs)
        runs = await cycle(count)
        cpu_after = cpu_now(procs)
        seated = _seated_since(target, seated)
    await asyncio.sleep(SETTLE_S)
    after = rss_now(procs)
    kb = {name: round((after[name] - before[name]) / count / 1024, 1) for name in procs}
    cpu_ms = {name: round((cpu_after[name] - cpu_before[name]) / count * 1000, 2) for name in procs}
    bots = [name for name in procs if name.startswith(("worker", "runner"))]
    return {
        "n": count,
        "reached_talk": sum(not math.isnan(r.talk_s) for r in runs),
        "rss_before_mb": {name: round(v / 2**20, 1) for name, v in before.items()},
        "kb_per_session": kb,
        "bots_kb_per_session": round(sum(kb[name] for name in bots), 1),
        "total_kb_per_session": round(sum(kb.values()), 1),
        "cpu_ms_per_session": cpu_ms,
        "total_cpu_ms_per_session": round(sum(cpu_ms.values()), 2),
        "seated": seated,
        "errors": error_counts(runs),
    }


async def burst(target: Target, count: int, wav: Path) -> dict[str, Any]:
    procs, me = target.processes(), psutil.Process()
    seated = target.seated()
    async with target.http(count + 8) as http:
        before, mine, started = cpu_now(procs), cpu_seconds(me), time.perf_counter()
        opening = (open_session(target, http, wav) for _ in range(count))
        opened = list(await asyncio.gather(*opening))
        window = time.perf_counter() - started
        after, mine = cpu_now(procs), cpu_seconds(me) - mine
        # Still all connected and streaming: their echoes, outside the CPU window.
        await asyncio.gather(*(wait_echo(o) for o in opened))
        await asyncio.gather(*(close(target, http, o) for o in opened))
    runs = [o.run for o in opened]
    cpu = {name: round(after[name] - before[name], 3) for name in procs}
    talk = [r.talk_s for r in runs]
    return {
        "n": count,
        "reached_talk": sum(not math.isnan(t) for t in talk),
        "talk_p50_ms": ms(talk, 50),
        "talk_p99_ms": ms(talk, 99),
        "talk_max_ms": ms(talk, 100),
        "ready_p50_ms": ms([r.ready_s for r in runs], 50),
        "ready_p99_ms": ms([r.ready_s for r in runs], 99),
        "echo_p50_ms": ms([r.echo_s for r in runs], 50),
        "echoed": sum(not math.isnan(r.echo_s) for r in runs),
        "seated": _seated_since(target, seated),
        "window_s": round(window, 3),
        "cpu_s": cpu,
        "cpu_ms_per_start": round(sum(cpu.values()) / count * 1000, 1),
        "client_cpu_s": round(mine, 3),
        "errors": error_counts(runs),
        "runs": [asdict(r) for r in runs],
    }


async def steady(target: Target, count: int, seconds: float, wav: Path) -> dict[str, Any]:
    """``count`` calls talking at once for ``seconds`` (their phrases spread over the
    loop): each echo's delay after its phrase ended, and the target's CPU per call."""
    procs = target.processes()
    clients: list[SteadyClient] = []
    async with target.http(count + 4) as http:
        sessions: list[str | None] = []
        for _ in range(count):
            url, session = await target.request(http)
            sessions.append(session)
            clients.append(await SteadyClient.connect(url, wav))
            # Turns spread over the phrase's loop, as unrelated callers' are.
            await asyncio.sleep(clients[0].period_s / count)
        before, started = cpu_now(procs), time.perf_counter()
        await asyncio.sleep(seconds)
        after, wall = cpu_now(procs), time.perf_counter() - started
        for client in clients:
            await client.close()
        for session in sessions:
            await target.end(http, session)
    delays = [d for c in clients for d in c.delays]
    cpu = sum(after[n] - before[n] for n in procs)
    return {
        "n": count,
        "window_s": round(wall, 2),
        "echoes": len(delays),
        "echo_delay_p50_ms": ms(delays, 50),
        "echo_delay_p99_ms": ms(delays, 99),
        "cores_per_call": round(cpu / wall / count, 4),
    }


async def idle(target: Target, seconds: float) -> dict[str, Any]:
    procs = target.processes()
    before, started = cpu_now(procs), time.perf_counter()
    await asyncio.sleep(seconds)
    after, wall = cpu_now(procs), time.perf_counter() - started
    cores = {name: round((after[name] - before[name]) / wall, 4) for name in procs}
    total = round(sum(cores.values()), 4)
    return {"window_s": round(wall, 2), "cores": cores, "total_cores": total}


async def measure(target: Target, args: argparse.Namespace, wav: Path) -> dict[str, Any]:
    async with target.http(4) as http:  # warm-up: first request, first pipeline, caches
        opened = await open_session(target, http, wav)
        await wait_echo(opened)
        await close(target, http, opened)
        if opened.run.error:
            print(f"    warm-up session failed: {opened.run.error}", flush=True)
    await asyncio.sleep(SETTLE_S)
    print(f"  idle {args.idle_s} s", flush=True)
    result: dict[str, Any] = {"idle": await idle(target, args.idle_s)}
    print(f"  {args.sequential} sessions one at a time", flush=True)
    result["sequential"] = await sequential(target, args.sequential, wav)
    print(f"  {args.churn} sessions opened and closed back to back", flush=True)
    result["churn"] = c = await churn(target, args.churn, wav)
    print(
        f"    RSS per session {c['bots_kb_per_session']} KB where the bots run, "
        f"{c['total_kb_per_session']} KB in all; CPU per session "
        f"{c['total_cpu_ms_per_session']} ms {c['errors'] or ''}",
        flush=True,
    )
    for n in (1, args.steady):
        print(f"  {n} call(s) talking for {args.steady_s} s", flush=True)
        result[f"steady{n}"] = await steady(target, n, args.steady_s, wav)
    print(f"  burst of {args.burst}", flush=True)
    result["burst"] = await burst(target, args.burst, wav)
    b = result["burst"]
    print(
        f"    reached talk {b['reached_talk']}/{b['n']}, talk p50 {b['talk_p50_ms']} ms, p99 "
        f"{b['talk_p99_ms']} ms, CPU {b['cpu_ms_per_start']} ms/start, window "
        f"{b['window_s']} s {b['errors'] or ''}",
        flush=True,
    )
    return result


# --- where the burst's time goes (py-spy) ---------------------------------------------

PROFILE_S = 45  # sampling window: the burst, its echoes and its teardown fit in it
PROFILE_TOP = 8


async def profiled_burst(
    target: Target, args: argparse.Namespace, wav: Path, out: Path
) -> dict[str, Any]:
    """One more burst, unmeasured, with py-spy on the API and the workers: their hottest
    functions (self time, and our own code's inclusive time) over the burst."""
    async with target.http(4) as http:  # warm-up, as before the measured burst
        await close(target, http, await open_session(target, http, wav))
    await asyncio.sleep(SETTLE_S)
    procs = {k: p for k, p in target.processes().items() if k != "redis"}
    spies = {k: profiling.start(p.pid, PROFILE_S, out / f"{k}.raw") for k, p in procs.items()}
    if any(spy is None for spy in spies.values()):
        return {}
    await asyncio.sleep(1.0)  # py-spy attached
    await burst(target, args.burst, wav)
    for spy in spies.values():
        assert spy is not None
        await asyncio.to_thread(spy.wait)
    workers = out / "workers.raw"  # the workers' collapsed stacks, added up
    workers.write_text("".join((out / f"{k}.raw").read_text() for k in procs if k != "api"))
    found = {}
    for name, raw in (("API", out / "api.raw"), ("workers", workers)):
        summary = profiling.summarize(raw, ours=("api", "shared", "worker"), top=PROFILE_TOP)
        found[name] = {k: summary[k] for k in ("self_time", "inclusive_ours", "working_samples")}
    return found


def profile_targets(args: argparse.Namespace, wav: Path, tmp: Path) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    for key in (k for k in args.targets if k in ("voicepool", BEFORE)):
        target = make_target(key, args)
        print(f"py-spy over a burst: {target.label}", flush=True)
        folder = tmp / f"profile-{key}"
        try:
            target.start(folder)
            profiles[key] = asyncio.run(profiled_burst(target, args, wav, folder))
        except Exception as exc:
            profiles[key] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            target.stop()
    return profiles


def profile_markdown(result: dict[str, Any]) -> list[str]:
    profiles = result.get("profiles") or {}
    if not any(profiles.values()):
        return []
    lines = [
        "",
        f"## Where the burst's time goes (py-spy, {profiling.RATE_HZ} Hz)",
        "",
        f"One more burst of {result['config']['burst']} per voicepool target after the "
        "measured reps, not measured, py-spy sampling the API and both workers (added up). "
        "Shares are of the samples where a thread was working.",
    ]
    for key, found in profiles.items():
        label = result["labels"].get(key, key)
        if "failed" in found:
            lines += ["", f"{label}: failed: {found['failed']}"]
            continue
        for process, summary in found.items():
            lines += [
                "",
                f"**{label}, {process}** ({summary['working_samples']} working samples)",
                "",
                "| self time | share | our code, inclusive | share |",
                "|---|---:|---|---:|",
            ]
            own, ours = summary["self_time"], summary["inclusive_ours"]
            blank: dict[str, Any] = {"function": "", "share": None}
            for i in range(max(len(own), len(ours))):
                a = own[i] if i < len(own) else blank
                b = ours[i] if i < len(ours) else blank
                lines.append(
                    f"| `{a['function']}` | {_pct(a['share'])} | "
                    f"`{b['function']}` | {_pct(b['share'])} |"
                    if b["function"]
                    else f"| `{a['function']}` | {_pct(a['share'])} | | |"
                )
    return lines


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share * 100:.1f}%"


# --- report ----------------------------------------------------------------------------

# (row, unit, value of one rep's result or None where it does not apply, ratio shown)
Row = tuple[str, str, Callable[[dict[str, Any]], float | None], bool]


def _steady(result: dict[str, Any]) -> dict[str, Any]:
    """The run with several calls at once (its key names how many)."""
    return next(v for k, v in result.items() if k.startswith("steady") and k != "steady1")


def _cores(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: r["idle"]["cores"].get(name)


ROWS: list[Row] = [
    ("one at a time: ready p50", "ms", lambda r: r["sequential"]["ready_p50_ms"], False),
    ("one at a time: ready p99", "ms", lambda r: r["sequential"]["ready_p99_ms"], False),
    ("one at a time: talk p50", "ms", lambda r: r["sequential"]["talk_p50_ms"], True),
    ("one at a time: talk p99", "ms", lambda r: r["sequential"]["talk_p99_ms"], True),
    ("one at a time: first echo p50", "ms", lambda r: r["sequential"]["echo_p50_ms"], True),
    ("one at a time: reached talk", "n", lambda r: r["sequential"]["reached_talk"], False),
    ("one at a time: seated (no queue)", "n", lambda r: r["sequential"].get("seated"), False),
    # KB per session are small differences of large numbers: no ratio of them.
    (
        "churn: RSS per session, where the bots run",
        "KB",
        lambda r: r["churn"]["bots_kb_per_session"],
        False,
    ),
    (
        "churn: RSS per session, all processes",
        "KB",
        lambda r: r["churn"]["total_kb_per_session"],
        False,
    ),
    ("churn: reached talk", "n", lambda r: r["churn"]["reached_talk"], False),
    ("churn: seated (no queue)", "n", lambda r: r["churn"].get("seated"), False),
    (
        "churn: CPU per session, all processes",
        "ms",
        lambda r: r["churn"]["total_cpu_ms_per_session"],
        True,
    ),
    (
        "churn: CPU per session, API",
        "ms",
        lambda r: r["churn"]["cpu_ms_per_session"].get("api"),
        False,
    ),
    (
        "1 call: echo delay after the phrase p50",
        "ms",
        lambda r: r["steady1"]["echo_delay_p50_ms"],
        True,
    ),
    ("1 call: echo delay p99", "ms", lambda r: r["steady1"]["echo_delay_p99_ms"], True),
    ("N calls: echo delay p99", "ms", lambda r: _steady(r)["echo_delay_p99_ms"], True),
    (
        "N calls: echo p99 added (N vs 1)",
        "ms",
        lambda r: _steady(r)["echo_delay_p99_ms"] - r["steady1"]["echo_delay_p99_ms"],
        True,
    ),
    ("N calls: CPU per call", "cores", lambda r: _steady(r)["cores_per_call"], True),
    ("burst: talk p50", "ms", lambda r: r["burst"]["talk_p50_ms"], True),
    ("burst: talk p99", "ms", lambda r: r["burst"]["talk_p99_ms"], True),
    ("burst: reached talk", "n", lambda r: r["burst"]["reached_talk"], True),
    ("burst: seated (no queue)", "n", lambda r: r["burst"].get("seated"), False),
    ("burst: CPU per session start", "ms", lambda r: r["burst"]["cpu_ms_per_start"], True),
    (
        "burst: CPU window (first request → last bot-ready)",
        "s",
        lambda r: r["burst"]["window_s"],
        True,
    ),
    ("burst: first echo p50", "ms", lambda r: r["burst"]["echo_p50_ms"], True),
    ("idle: API", "cores", _cores("api"), False),
    ("idle: worker 1", "cores", _cores("worker1"), False),
    ("idle: worker 2", "cores", _cores("worker2"), False),
    ("idle: redis-server", "cores", _cores("redis"), False),
    ("idle: runner process", "cores", _cores("runner"), False),
    ("idle: all processes", "cores", lambda r: r["idle"]["total_cores"], True),
]


def summarize(reps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, unit, get, with_ratio in ROWS:
        cells = {key: spread([get(r) for r in runs]) for key, runs in reps.items()}
        vp = cells.get("voicepool")
        ratios = {}
        for versus in (ANCHOR, BEFORE):
            other = cells.get(versus)
            if with_ratio and vp and other and other["median"]:
                ratios[versus] = round(vp["median"] / other["median"], 2)
        if any(cells.values()):
            table[name] = {
                "unit": unit,
                "cells": cells,
                "ratio_vs_anchor": ratios.get(ANCHOR),
                "ratio_vs_before": ratios.get(BEFORE),
            }
    return table


def _fmt(value: float, unit: str) -> str:
    if unit == "cores":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.1f}"
    return f"{value:.0f}"


def _cell(cell: dict[str, float] | None, unit: str) -> str:
    if cell is None:
        return "—"
    if cell["min"] == cell["max"]:
        return _fmt(cell["median"], unit)
    return f"{_fmt(cell['median'], unit)} ({_fmt(cell['min'], unit)}-{_fmt(cell['max'], unit)})"


def markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    keys = result["targets"]
    lines = [
        "# Anchor: voicepool vs. Pipecat's development runner (same client, same echo pipeline)",
        "",
        f"{result['date']} · {m['nproc']} CPUs ({m['cpu_model']}) · Python {m['python']} · "
        f"pipecat-ai {m['pipecat']} · commit {m['commit']} · load average at start "
        f"{', '.join(str(x) for x in m['loadavg_at_start'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{c['reps']} reps, target order rotated each rep; cells are median (min-max) over "
        f"the reps. One at a time: {c['sequential']} sessions; burst: {c['burst']} at once; "
        f"idle window {c['idle_s']} s. Times from just before the start request, on the client.",
        "",
        "| metric | unit | "
        + " | ".join(result["labels"][k] for k in keys)
        + " | voicepool / anchor |"
        + (" voicepool / before |" if BEFORE in keys else ""),
        "|---|---|" + "---:|" * (len(keys) + 1 + (BEFORE in keys)),
    ]
    for name, row in result["table"].items():
        cells = [_cell(row["cells"].get(k), row["unit"]) for k in keys]
        ratios = [row["ratio_vs_anchor"]] + ([row["ratio_vs_before"]] if BEFORE in keys else [])
        shown = " | ".join("—" if r is None else f"{r}x" for r in ratios)
        lines.append(f"| {name} | {row['unit']} | " + " | ".join(cells) + f" | {shown} |")
    lines += profile_markdown(result)
    lines += ["", "Notes:", "", *[f"- {n}" for n in result["notes"]]]
    odd = result["anomalies"]
    lines += ["", "Anomalies:", ""] + ([f"- {a}" for a in odd] if odd else ["- none"])
    return "\n".join(lines) + "\n"


def anomalies(reps: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = []
    for key, runs in reps.items():
        for r in runs:
            where = f"rep {r['rep']}, {TARGETS[key]}"
            if "failed" in r:
                out.append(f"{where}: the target failed: {r['failed']}")
            for phase in ("sequential", "burst"):
                for error, n in r.get(phase, {}).get("errors", {}).items():
                    out.append(f"{where}, {phase}: {n} x {error}")
            for line, n in r.get("log_problems", {}).items():
                out.append(f"{where}, logged {n} x: `{line}`")
    return out


PROBLEM = re.compile(r"\b(ERROR|WARNING|CRITICAL|Traceback)\b")
NOISE = re.compile(
    r"^[\d:.,\- ]+\|?\s*|0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27}|\b[0-9a-f]{32}\b|\b\d+(\.\d+)?\b"
)


def log_problems(folder: Path) -> dict[str, int]:
    """Warnings and errors the target's processes logged, alike lines counted together."""
    found: Counter[str] = Counter()
    for log in folder.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if PROBLEM.search(line):
                found[NOISE.sub("#", line.strip())[:200]] += 1
    return dict(found.most_common(8))


NOTES = [
    "ready is not comparable across targets: voicepool's /api/start answers once a worker "
    "has taken and prepared the session; the runner's /start only signs a token (its work "
    "starts when the WebSocket connects). talk (→ RTVI bot-ready) is the end-to-end number.",
    "first echo includes the audio itself: the client says a 0.82 s phrase from the moment "
    "it connects, and the bot plays it back only after the VAD's 0.5 s of silence.",
    "CPU per session start = CPU s of the target's processes (voicepool: API, 2 workers, "
    "redis-server; runner: its one process) over the burst's window, / burst size; includes "
    "the VAD and echo work on what the connected clients stream meanwhile; excludes the "
    "clients and teardown.",
    "Each target's processes are started fresh each rep, one target at a time; 1 unmeasured "
    "warm-up session first. voicepool: 2 workers x 60 slots, INFO logs, no per-user limits, "
    "sessions ended with DELETE after the client closes. Runner: Pipecat's runner, "
    "-t websocket --ws-auth token, bot logs at INFO (the runner's default is DEBUG).",
    "Everything (targets, 100 streaming clients) shares this machine's cores; under the "
    "burst part of every number is waiting for a CPU. Client CPU is in the JSON.",
]


# --- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=30, help="sessions one at a time")
    parser.add_argument("--burst", type=int, default=100, help="sessions requested at once")
    parser.add_argument(
        "--churn", type=int, default=100, help="sessions opened and closed back to back"
    )
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU window, s")
    parser.add_argument("--steady", type=int, default=16, help="calls talking at once")
    parser.add_argument("--steady-s", type=float, default=20.0, help="how long they talk, s")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also measure voicepool as of this commit (a git worktree), as a before/after",
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the extra burst under py-spy (per voicepool target, after the reps)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t and t != BEFORE]
    if args.before:
        args.targets.insert(1, BEFORE)
        TARGETS[BEFORE] = f"voicepool at {args.before}"
    if args.steady < 2:
        parser.error("--steady: 2 or more (the run is compared with 1 call talking)")
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {list(TARGETS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    bench_process()
    args = parse_args(argv)
    facts = machine_facts()
    started = time.monotonic()
    reps: dict[str, list[dict[str, Any]]] = {k: [] for k in args.targets}
    with (
        tempfile.TemporaryDirectory(prefix="vp-bench-anchor-") as tmp_dir,
        before_tree(args.before, Path(tmp_dir) / "before") as args.before_tree,
    ):
        tmp = Path(tmp_dir)
        wav = phrase_wav(tmp / "phrase.wav")
        for rep in range(1, args.reps + 1):
            shift = (rep - 1) % len(args.targets)
            order = args.targets[shift:] + args.targets[:shift]
            for position, key in enumerate(order):
                target = make_target(key, args)
                print(f"rep {rep}: {target.label}", flush=True)
                entry: dict[str, Any] = {"rep": rep, "position": position}
                try:
                    t0 = time.perf_counter()
                    target.start(tmp / f"rep{rep}-{key}")
                    entry["startup_s"] = round(time.perf_counter() - t0, 2)
                    entry |= asyncio.run(measure(target, args, wav))
                except Exception as exc:  # one target failing leaves the others' numbers
                    entry["failed"] = f"{type(exc).__name__}: {exc}"[:500]
                    print(f"  failed: {entry['failed']}\n{target.log_tail()}", file=sys.stderr)
                finally:
                    target.stop()  # also on Ctrl-C / SIGTERM
                entry["log_problems"] = log_problems(tmp / f"rep{rep}-{key}")
                reps[key].append(entry)
        profiles = profile_targets(args, wav, tmp) if args.profile else {}

    measured = {k: [r for r in v if "failed" not in r] for k, v in reps.items()}
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {
            "workers": WORKERS,
            "capacity": CAPACITY,
            "phrase_s": PHRASE_S,
            "session_timeout_s": SESSION_TIMEOUT_S,
            "echo_timeout_s": ECHO_TIMEOUT_S,
            "loud_rms": LOUD_RMS,
        },
        "targets": args.targets,
        "labels": {k: TARGETS[k] for k in args.targets},
        "anchor": ANCHOR,
        "table": summarize(measured),
        "notes": [*NOTES, f"Total run time {time.monotonic() - started:.0f} s."],
        "anomalies": anomalies(reps),
        "profiles": profiles,
        "reps": reps,
    }
    write_results(args.out, "anchor", result, markdown)


if __name__ == "__main__":
    run_main(main)
