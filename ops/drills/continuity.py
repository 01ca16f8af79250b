"""Continuity drill: faults a live call should survive, and what its caller heard.

For each fault, a few calls through the real system (embedded redis-server, the
API, worker processes; aiortc clients on loopback; the echo bot, or the
assistant on the fake Realtime model), with the fleet's default heartbeat TTL
and reconnect grace:

- **client blip**: the caller's peer connection closes without a DELETE (a page
  reload, a network switch); it offers again 2 s later.
- **model drop**: the model's socket closes in the middle of the greeting.
- **worker kill -9**: the worker running the call dies; another one is free.
- **drain**: the call's worker is drained; another one has free slots.

Each row: calls that survived (connected again, the same session, ended only by
the caller's DELETE) out of calls tried; the audio gap the caller heard, p50 and
p95 (from the fault, or for a blip from the caller's return, to the first bot
audio after it); and conversation events lost (published on the call's live
stream but not in its stored conversation; must be 0). A baseline row measures a
new call's first echo (offer to echo heard) in the same run: an echo call can
say nothing until the caller has said something and stopped, so every echo gap
contains one of these.

    .venv/bin/python ops/drills/continuity.py [--trials 3] [--json F] [--markdown F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from harness.api import connect_webrtc
from harness.doubles.openai_realtime import FakeRealtimeServer, Fault
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import RECEIVED_SAMPLE_RATE, WebRTCTestClient, allow_loopback_ice

ROOT = Path(__file__).resolve().parents[2]
HELLO_WAV = str(ROOT / "tests" / "fixtures" / "hello.wav")
LOOP_PAUSE_S = 2.5  # the caller says its line again after this pause: the bot's turn
BLIP_S = 2.0  # how long the caller is away in a blip
DRAIN_PAUSE_S = 8.0  # callers in the drain pause longer than their line and its echo
LOUD_RMS = 300  # the fixture's speech and the fake model's audio are ~1000+; silence ~0
FRAME_S = 0.02
OPENAI_KEY = "sk-drill-voicepool-0123456789"
# The fleet as shipped: heartbeat TTL, interval and reconnect grace at their defaults
# (harness.system shortens them for tests).
DEFAULTS = {
    "VOICEPOOL_HEARTBEAT_TTL": "10",
    "VOICEPOOL_HEARTBEAT_INTERVAL": "1",
    "VOICEPOOL_REAPER_INTERVAL": "0.5",
    "VOICEPOOL_RECONNECT_GRACE": "30",
}


@dataclass
class Trial:
    survived: bool
    gap_s: float | None
    lost: int
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    fault: str
    tried: int
    survived: int
    gap_p50_s: float | None
    gap_p95_s: float | None
    lost: int
    trials: list[Trial]
    beyond_p50_s: float | None = None
    """The gap less the baseline's median first echo (echo calls): what the fault added."""
    beyond_p95_s: float | None = None


class Listener:
    """When each stretch of the caller's received audio arrived, so a stream offset can be
    told in wall-clock time (a client heard audio when it arrived, not when it was sent)."""

    def __init__(self, client: WebRTCTestClient) -> None:
        self.client = client
        self.marks: list[tuple[float, float]] = []  # (time.time(), received seconds)
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self.marks.append((time.time(), self.client.received_seconds()))
            await asyncio.sleep(FRAME_S)

    def offset_at(self, at: float) -> float:
        """Received seconds at wall-clock ``at``."""
        return next((s for t, s in self.marks if t >= at), self.client.received_seconds())

    def time_of(self, offset: float) -> float:
        """Wall-clock time the audio at ``offset`` had arrived by."""
        return next(t for t, s in self.marks if s >= offset)

    def first_loud_after(self, at: float) -> float | None:
        """Wall-clock time of the first loud 20 ms of audio received after ``at``."""
        start = self.offset_at(at)
        pcm = np.frombuffer(bytes(self.client.received_pcm), dtype=np.int16).astype(np.float64)
        frame = int(RECEIVED_SAMPLE_RATE * FRAME_S)
        first = int(start * RECEIVED_SAMPLE_RATE)
        for begin in range(first, len(pcm) - frame + 1, frame):
            if np.sqrt(np.mean(pcm[begin : begin + frame] ** 2)) > LOUD_RMS:
                return self.time_of((begin + frame) / RECEIVED_SAMPLE_RATE)
        return None

    def last_loud_before(self, at: float) -> float | None:
        """Wall-clock time the last loud 20 ms of audio received before ``at`` had arrived."""
        end = self.offset_at(at)
        pcm = np.frombuffer(bytes(self.client.received_pcm), dtype=np.int16).astype(np.float64)
        frame = int(RECEIVED_SAMPLE_RATE * FRAME_S)
        for stop in range(int(end * RECEIVED_SAMPLE_RATE), frame - 1, -frame):
            if np.sqrt(np.mean(pcm[stop - frame : stop] ** 2)) > LOUD_RMS:
                return self.time_of(stop / RECEIVED_SAMPLE_RATE)
        return None

    async def heard_after(self, at: float, timeout: float = 30) -> float:
        return await eventually(
            lambda: self.first_loud_after(at), timeout=timeout, what="bot audio heard"
        )

    async def aclose(self) -> None:
        self._task.cancel()
        await self.client.close()


async def _session(api: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    described: dict[str, Any] = (await api.get(f"/api/sessions/{sid}")).json()
    return described


async def _reaches(
    api: httpx.AsyncClient, sid: str, status: str, reason: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    async def there() -> dict[str, Any] | None:
        got = await _session(api, sid)
        if got["status"] in ("ended", "failed", "expired", "cancelled") and got["status"] != status:
            raise AssertionError(f"the call ended: {got['status']}/{got['reason']}")
        ok = got["status"] == status and (reason is None or got["reason"] == reason)
        return got if ok else None

    return await eventually(there, timeout=timeout, interval=0.02, what=f"{status}/{reason}")


def _events(system: System, sid: str) -> list[dict[str, Any]]:
    with system.redis as r:
        return [
            {"seq": int(f["seq"]), "ts": float(f["ts"]), "type": f["type"], **json.loads(f["data"])}
            for _id, f in r.xrange(f"vp:session:{sid}:events")
        ]


def _event_ts(system: System, sid: str, kind: str, after: float = 0.0) -> float | None:
    return next(
        (e["ts"] for e in _events(system, sid) if e["type"] == kind and e["ts"] > after), None
    )


def _state_ts(system: System, sid: str, state: str, after: float = 0.0) -> float | None:
    return next(
        (
            e["ts"]
            for e in _events(system, sid)
            if e["type"] == "session.state" and e.get("state") == state and e["ts"] > after
        ),
        None,
    )


async def _lost(system: System, api: httpx.AsyncClient, session: dict[str, Any]) -> int:
    """Events on the call's live stream that never reached its stored conversation."""
    published = {e["seq"] for e in _events(system, session["session_id"])}

    async def stored() -> set[int]:
        got = await api.get(f"/api/conversations/{session['conversation_id']}")
        return {e["seq"] for e in got.json()["events"] if e["session_id"] == session["session_id"]}

    try:
        await eventually(
            lambda: _covers(stored, published), timeout=20, what="the conversation stored"
        )
    except AssertionError:
        pass  # what is still missing is counted below
    return len(published - await stored())


async def _covers(stored: Callable[[], Awaitable[set[int]]], published: set[int]) -> bool:
    return published <= await stored()


async def _end(api: httpx.AsyncClient, sid: str) -> bool:
    """DELETE the call; True if that is what ended it."""
    await api.delete(f"/api/sessions/{sid}")
    got = await _reaches(api, sid, "ended", timeout=20)
    return bool(got["reason"] == "client_ended")


async def _call(
    api: httpx.AsyncClient, pause_s: float = LOOP_PAUSE_S
) -> tuple[dict[str, Any], Listener, float]:
    """A new WebRTC call whose caller says its line again and again: the call, its
    listener, and how long the first bot audio took from the offer (the baseline)."""
    session = (await api.post("/api/sessions", json={"profile": "echo"})).json()
    await _reaches(api, session["session_id"], "ready")
    offered = time.time()
    client = await connect_webrtc(api, session["session_id"], HELLO_WAV, loop_pause_s=pause_s)
    listener = Listener(client)
    first = await listener.heard_after(offered)
    return session, listener, first - offered


async def _offer_again(api: httpx.AsyncClient, sid: str) -> Listener:
    client = await connect_webrtc(api, sid, HELLO_WAV, loop_pause_s=LOOP_PAUSE_S)
    return Listener(client)


async def _follow_move(api: httpx.AsyncClient, sid: str) -> tuple[dict[str, Any], Listener]:
    """What the web app does for a call that moved: once it is ready again on another
    worker (``recovered``), offer again, until it is ``connected`` (``client_reconnected``).
    The call as it was ready, and the new connection's listener."""
    ready = await _reaches(api, sid, "ready", "recovered", timeout=60)
    again = await _offer_again(api, sid)
    try:
        await _reaches(api, sid, "connected", "client_reconnected")
    except BaseException:
        await again.aclose()
        raise
    return ready, again


# --- the faults ------------------------------------------------------------------------------


async def client_blip(system: System, api: httpx.AsyncClient, baseline: list[float]) -> Trial:
    session, listener, first = await _call(api)
    sid = session["session_id"]
    baseline.append(first)
    await listener.aclose()  # the page goes away: its peer connection closes, no DELETE
    gone = time.time()
    await _reaches(api, sid, "reconnecting", "client_lost")
    lost_after = (_state_ts(system, sid, "reconnecting") or gone) - gone
    await asyncio.sleep(BLIP_S)  # time, not a condition: the caller is away
    back = time.time()
    again = await _offer_again(api, sid)
    try:
        await _reaches(api, sid, "connected", "client_reconnected")
        heard = await again.heard_after(back)
    finally:
        ended_by_caller = await _end(api, sid)
        await again.aclose()
    return Trial(
        ended_by_caller,
        heard - back,
        await _lost(system, api, session),
        {"to_reconnecting_s": round(lost_after, 3), "first_echo_s": round(first, 3)},
    )


async def worker_kill(system: System, api: httpx.AsyncClient, baseline: list[float]) -> Trial:
    session, listener, first = await _call(api)
    sid = session["session_id"]
    baseline.append(first)
    owner = (await _session(api, sid))["worker_id"]
    os.kill(system.worker_process(owner).pid, signal.SIGKILL)
    killed = time.time()
    again: Listener | None = None
    try:
        ready, again = await _follow_move(api, sid)
        recovering = _state_ts(system, sid, "recovering", after=killed - 1)
        heard = await again.heard_after(killed)
    finally:
        await listener.aclose()
        ended_by_caller = await _end(api, sid)
        if again is not None:
            await again.aclose()
        system.start_worker(capacity=2)  # the fleet back to two workers for the next trial
        await eventually(lambda: len(system.live_workers()) >= 2, timeout=30, what="2 workers")
    return Trial(
        ended_by_caller and ready["worker_id"] != owner,
        heard - killed,
        await _lost(system, api, session),
        {
            "to_recovering_s": round((recovering or killed) - killed, 3),
            "first_echo_s": round(first, 3),
        },
    )


async def drain(system: System, api: httpx.AsyncClient, baseline: list[float]) -> list[Trial]:
    """Two calls on the only worker; a second worker joins; the first is drained. The
    callers leave the bot room to answer (a call moves at a quiet moment, and one whose
    caller talks over every echo has none: it would wait for the drain timeout)."""
    calls = [await _call(api, pause_s=DRAIN_PAUSE_S) for _ in range(2)]
    baseline.extend(first for _, _, first in calls)
    owner = (await _session(api, calls[0][0]["session_id"]))["worker_id"]
    proc = system.worker_process(owner)
    system.start_worker(capacity=2)
    await eventually(lambda: len(system.live_workers()) >= 2, timeout=30, what="2 workers")
    started = time.time()
    drained = await api.post(f"/api/workers/{owner}/drain", json={})
    assert drained.status_code == 202, drained.text

    async def exits() -> tuple[int, float]:
        code = await asyncio.to_thread(proc.wait, 60)
        return code, time.time() - started

    exiting = asyncio.create_task(exits())

    async def follow(session: dict[str, Any], listener: Listener) -> Trial:
        """One caller, as the web app does it: re-offer once its call is ready again."""
        sid = session["session_id"]
        again: Listener | None = None
        try:
            _ready, again = await _follow_move(api, sid)
            moved = _state_ts(system, sid, "recovering", after=started) or started
            heard = await again.heard_after(moved)
        finally:
            await listener.aclose()
            ended = await _end(api, sid)
            if again is not None:
                await again.aclose()
        return Trial(ended, heard - moved, await _lost(system, api, session))

    trials = list(await asyncio.gather(*(follow(s, listener) for s, listener, _ in calls)))
    exit_code, drain_s = await exiting
    for trial in trials:
        trial.facts = {"drain_s": round(drain_s, 2), "exit_code": exit_code}
    return trials


async def model_drop(system: System, api: httpx.AsyncClient, baseline: list[float]) -> Trial:
    session = (await api.post("/api/sessions", json={"profile": "assistant"})).json()
    sid = session["session_id"]
    await _reaches(api, sid, "ready")
    # The caller listens (sends silence): the greeting is the answer the drop cuts.
    client = await connect_webrtc(api, sid, None)
    listener = Listener(client)
    try:
        dropped = await eventually(
            lambda: _event_ts(system, sid, "model.reconnecting"), timeout=30, what="the drop"
        )
        back = await eventually(
            lambda: _event_ts(system, sid, "model.reconnected"), timeout=30, what="reconnected"
        )
        # What the caller hears: the audio already on its way plays out, then silence
        # until the new connection's answer arrives; the gap is that silence.
        resumed = await listener.heard_after(back)
        fell_silent = listener.last_loud_before(resumed - FRAME_S) or dropped
        still = (await _session(api, sid))["status"] == "connected"
    finally:
        await listener.aclose()
        ended_by_caller = await _end(api, sid)
    return Trial(
        still and ended_by_caller,
        max(resumed - fell_silent, 0.0),
        await _lost(system, api, session),
        {
            "reconnected_s": round(back - dropped, 3),
            "silent_from_drop_s": round(fell_silent - dropped, 3),
        },
    )


# --- running ---------------------------------------------------------------------------------


async def _with_system(
    settings: dict[str, str],
    workers: int,
    body: Callable[[System, httpx.AsyncClient], Awaitable[Any]],
) -> Any:
    with tempfile.TemporaryDirectory(prefix="vp-continuity-") as tmp:
        system = System(Path(tmp), settings={**DEFAULTS, **settings})
        system.start(workers=workers, capacity=2)
        try:
            token = system.create_user("drill", admin=True)  # an operator: it drains workers
            async with httpx.AsyncClient(
                base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as api:
                return await body(system, api)
        finally:
            system.stop()


def _row(fault: str, trials: list[Trial], first_echo: list[float] | None = None) -> Row:
    gaps = sorted(t.gap_s for t in trials if t.gap_s is not None)

    def p50_p95(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        return round(statistics.median(values), 3), round(float(np.percentile(values, 95)), 3)

    p50, p95 = p50_p95(gaps)
    beyond: tuple[float | None, float | None] = (None, None)
    if first_echo:
        echo = statistics.median(first_echo)
        beyond = p50_p95([max(g - echo, 0.0) for g in gaps])
    return Row(
        fault, len(trials), sum(t.survived for t in trials), p50, p95,
        sum(t.lost for t in trials), trials, *beyond,
    )  # fmt: skip


FAULTS = ("blip", "model", "kill", "drain")


async def run(trials: int, only: list[str]) -> list[Row]:
    allow_loopback_ice()
    baseline: list[float] = []
    done: list[tuple[str, list[Trial], bool]] = []  # (fault, trials, an echo call)

    async def blips(system: System, api: httpx.AsyncClient) -> list[Trial]:
        return [await client_blip(system, api, baseline) for _ in range(trials)]

    if "blip" in only:
        done.append(
            ("client blip (peer closed, back after 2 s)", await _with_system({}, 1, blips), True)
        )

    drops: list[Trial] = []
    # A fresh model per call: its first connection drops in the middle of the greeting.
    for _ in range(trials if "model" in only else 0):
        async with FakeRealtimeServer(
            fault=Fault(kind="close_mid_answer", connections=1),
            greeting="Hello there, this greeting is long enough to be cut off halfway.",
        ) as fake:
            model = {"OPENAI_API_KEY": OPENAI_KEY, "VOICEPOOL_OPENAI_BASE_URL": fake.base_url}
            drops.append(await _with_system(model, 1, lambda s, a: model_drop(s, a, baseline)))
    if drops:
        done.append(("model socket dropped mid-answer (silence heard)", drops, False))

    async def kills(system: System, api: httpx.AsyncClient) -> list[Trial]:
        # Time, not a condition: the reaper judges nobody for a heartbeat TTL after it first
        # sees a Redis (it may have been away), so a kill before then is judged late.
        await asyncio.sleep(float(DEFAULTS["VOICEPOOL_HEARTBEAT_TTL"]) + 1)
        return [await worker_kill(system, api, baseline) for _ in range(trials)]

    if "kill" in only:
        done.append(("worker kill -9 (another free)", await _with_system({}, 2, kills), True))

    drained: list[Trial] = []
    for _ in range(max(1, (trials + 1) // 2) if "drain" in only else 0):  # two calls a drain
        drained += await _with_system({}, 1, lambda s, a: drain(s, a, baseline))
    if drained:
        done.append(("drain (another worker free)", drained, True))
    rows = [_row(fault, got, baseline if echo else None) for fault, got, echo in done]
    rows.append(_row("baseline: a new call's first echo", [Trial(True, b, 0) for b in baseline]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="calls per fault")
    parser.add_argument("--only", action="append", choices=FAULTS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    rows = asyncio.run(run(args.trials, args.only or list(FAULTS)))

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    table = [
        "| fault | calls survived / tried | audio gap p50 / p95 s | beyond a first echo "
        "p50 / p95 s | conversation events lost |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.fault} | {r.survived}/{r.tried} | {seconds(r.gap_p50_s)} / "
            f"{seconds(r.gap_p95_s)} | {seconds(r.beyond_p50_s)} / {seconds(r.beyond_p95_s)} "
            f"| {r.lost} |"
            for r in rows
        ),
    ]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text(
            "# Continuity drill\n\n`python ops/drills/continuity.py` on a 2-core machine, the "
            "fleet's default heartbeat TTL (10 s) and reconnect grace (30 s). For echo calls the "
            "gap runs from the fault (a blip: from the caller's return) to the first bot audio "
            "the caller heard; an echo bot says nothing until the caller has said a line, so "
            "each such gap holds one first echo (the baseline row: a new call, offer to first "
            "echo), and the next column takes that median off. For the model drop it is the "
            "silence the caller heard: the audio already sent plays out, then nothing until "
            "the new connection's answer.\n\n" + "\n".join(table) + "\n"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if any(r.lost for r in rows) or any(r.survived < r.tried for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
