"""Pipelines built and started before a session asks for one: a start binds, it does not build.

A WebSocket session's pipeline used to be built and started as the session went
``ready``: its StartFrame went through every processor and Pipecat started its
tasks while the API answered and the client connected, and that work held the
worker's loop. One at a time (``ops/bench/start_trace.py``, instrumented), the
pipeline had started only 14.7 ms (p50) after the client's request: its client's
WebSocket handshake (12.5 ms) had waited for the loop, and its ``client-ready``
(14.3 ms) for the pipeline, so ``bot-ready`` left at 16.1 ms.

A worker now keeps ``WorkerOptions.warm_pipelines`` pipelines of each profile
that can be built ahead (``Profile.warmable``: one whose pipeline needs nothing of
a session before its client connects, ``echo``) built and running for WebSocket
sessions, each behind a socket nobody can reach: no session routes to it, and
its token gate has no key. The worker holds one of each profile out while it
takes a session (``hold``): the take moves a session it has one for on to
``ready`` in the same step (``shared.live.LiveSessions.take``), and ``settle``
gives that session its pipeline and keeps the others. The session binds it: the
profile's context, the transport's session and token key, the session_id of
every line its tasks log. The session's runner then hooks its
events, limits and client tracking to it as to a pipeline it built itself.

A taken pipeline is replaced once the worker has started nothing for
``REFILL_QUIET_S``: a burst of starts is not slowed by building replacements in
the middle of it (those starts build their own, as before). A warm pipeline
that stops before it is taken (a processor failed) is dropped, and replaced the
same way. Sessions of other transports and profiles, and calls taken up from
another worker, are built at their start as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipecat.pipeline.worker import PipelineWorker
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from shared.logs import LateField, log_fields
from worker import metrics
from worker.client_gate import ClientGate
from worker.options import WorkerOptions
from worker.profiles import Profile, SessionContext, build_profile, profile_class
from worker.session import build_session_pipeline
from worker.transports import ClientPresence
from worker.transports.websocket import WebSocketSessionTransport

log = logging.getLogger(__name__)

REFILL_QUIET_S = 0.1  # no start for this long: build the replacements of those taken
STARTED_WAIT_S = 5.0  # a pipeline built ahead that has not started by then is dropped
CLOSE_WAIT_S = 2.0  # at the worker's end, how long the unused pipelines may take to stop


@dataclass
class WarmPipeline:
    """One profile's pipeline behind a WebSocket transport, running, with no session yet."""

    profile: Profile
    transport: WebSocketSessionTransport
    client_transport: BaseTransport
    """Pipecat's transport, whose client events the session's runner listens to."""
    pipeline: PipelineWorker
    gate: ClientGate
    task: asyncio.Task[None]
    """Runs the pipeline (a WorkerRunner of its own) until it ends; it had started when
    ``build_warm_pipeline`` returned it."""
    session_id: LateField
    """The session_id of every line the pipeline's tasks log, once it is bound."""

    @property
    def usable(self) -> bool:
        return not self.task.done()

    def bind(
        self,
        session_id: str,
        meta: dict[str, str],
        context: SessionContext,
        presence: ClientPresence,
    ) -> None:
        """Make it the session's: from here on the session's tokens open its socket."""
        self.session_id.value = session_id
        self.profile.bind(context)
        self.transport.bind(session_id, meta)
        self.transport.socket.presence = presence

    async def aclose(self) -> None:
        """Stop a pipeline no session took."""
        await self.pipeline.cancel(reason="worker stopping")
        await self.transport.aclose()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.task


async def build_warm_pipeline(profile_name: str, options: WorkerOptions) -> WarmPipeline:
    """Build ``profile_name``'s pipeline behind an unbound WebSocket transport and start it;
    returns once it has started."""
    session_id = LateField()
    with log_fields(session_id=session_id):  # every task created from here copies it
        context = SessionContext(
            session_id="",
            meta={"profile": profile_name},
            options=options,
            emit=_nothing,
            end=_nothing,
        )
        profile = build_profile(context)
        await profile.prepare()
        transport = WebSocketSessionTransport("", options, {})
        client_transport, pipeline, gate = build_session_pipeline(profile, transport, None)
        started = asyncio.Event()

        async def _started(_worker: object, _frame: object) -> None:
            started.set()

        pipeline.add_event_handler("on_pipeline_started", _started)
        task = asyncio.create_task(_run(pipeline), name=f"warm-{profile_name}")
    warm = WarmPipeline(profile, transport, client_transport, pipeline, gate, task, session_id)
    waiting = asyncio.create_task(started.wait())
    try:
        await asyncio.wait(
            {waiting, task}, timeout=STARTED_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
    if not started.is_set():
        await warm.aclose()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("the pipeline stopped as it started") from task.exception()
        raise RuntimeError(f"the pipeline did not start in {STARTED_WAIT_S:.0f} s")
    return warm


async def _run(pipeline: PipelineWorker) -> None:
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(pipeline)
    await runner.run()


def _nothing(*_args: Any) -> None:
    return None


class WarmPipelines:
    """The pipelines a worker keeps running ahead of its sessions, per warmable profile."""

    def __init__(self, options: WorkerOptions, on_built: Callable[[], None] | None = None):
        self.options = options
        self.on_built = on_built
        """Called as each pipeline is ready to take (the worker offers it as a seat)."""
        self.per_profile = options.warm_pipelines if "websocket" in options.transports else 0
        self.profiles = [name for name in options.profiles if profile_class(name).warmable]
        self._ready: dict[str, list[WarmPipeline]] = {name: [] for name in self.profiles}
        self._last_start = 0.0
        self._refill: asyncio.Task[None] | None = None
        # The worker's, not the session's whose start asked for a refill: the refill's
        # lines carry no session_id (its pipelines bind theirs, LateField).
        self._context: contextvars.Context | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._held_out = 0  # held for a take or a seat: still no session's, still counted

    def count(self) -> int:
        return sum(len(ready) for ready in self._ready.values())

    def _counted(self) -> None:
        metrics.WARM_PIPELINES.labels(pool=self.options.pool).set(self.count() + self._held_out)

    def hold(self) -> dict[str, WarmPipeline]:
        """One running pipeline of each profile that has one, held out for a session not
        yet taken: its take moves it on to ``ready`` if its profile is among them
        (``LiveSessions.take``), and ``settle`` then gives it the one it needs."""
        held: dict[str, WarmPipeline] = {}
        for name, ready in self._ready.items():
            while ready and name not in held:
                warm = ready.pop()
                if warm.usable:
                    held[name] = warm
                else:
                    self._dropped(warm)
        self._held_out += len(held)
        self._counted()
        return held

    def settle(self, held: dict[str, WarmPipeline], profile: str | None) -> WarmPipeline | None:
        """The held pipeline of ``profile`` (None: the session took none) for the session;
        the others are kept for the next, and what was taken is replaced once starts
        pause."""
        self._last_start = time.monotonic()
        self._held_out -= len(held)
        warm = held.pop(profile, None) if profile is not None else None
        replace = warm is not None
        for name, unused in held.items():
            if self._closed or not unused.usable:  # (one that stopped meanwhile: dropped)
                self._stopped_while_held(unused)
                replace = True
            else:
                self._ready[name].append(unused)
        self._counted()
        if replace:
            self.refill()
        return warm

    def _stopped_while_held(self, warm: WarmPipeline) -> None:
        if not warm.usable:
            self._dropped(warm)
            return
        # Closed while it was held out: stopped as the others were (the task kept until done).
        closing = asyncio.get_running_loop().create_task(warm.aclose())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def refill(self) -> None:
        """Build what is missing, once the worker has started nothing for a while."""
        if self._closed or (self._refill is not None and not self._refill.done()):
            return
        if all(len(self._ready[name]) >= self.per_profile for name in self.profiles):
            return
        if self._context is None:  # the first: as the worker starts serving
            self._context = contextvars.copy_context()
        self._refill = asyncio.create_task(
            self._fill(), name="warm-refill", context=self._context.copy()
        )

    async def _fill(self) -> None:
        for name in self.profiles:
            while not self._closed and len(self._ready[name]) < self.per_profile:
                quiet = time.monotonic() - self._last_start
                if quiet < REFILL_QUIET_S:
                    await asyncio.sleep(REFILL_QUIET_S - quiet)
                    continue
                try:
                    warm = await build_warm_pipeline(name, self.options)
                except Exception:
                    # Sessions are built at their start meanwhile; the next start tries again.
                    log.exception("a %s pipeline could not be built ahead", name)
                    return
                if self._closed:
                    await warm.aclose()
                    return
                warm.task.add_done_callback(partial(self._stopped, warm))
                self._ready[name].append(warm)
                self._counted()
                if self.on_built is not None:
                    self.on_built()

    def _stopped(self, warm: WarmPipeline, _task: object = None) -> None:
        """A pipeline ended: if no session had it, it is dropped and replaced."""
        ready = self._ready.get(warm.profile.name, [])
        if warm in ready:
            ready.remove(warm)
            self._counted()
            self._dropped(warm)
            self.refill()

    def _dropped(self, warm: WarmPipeline) -> None:
        """One that stopped (``usable`` no more) before a session took it."""
        failure = None if warm.task.cancelled() else warm.task.exception()
        log.warning("a %s pipeline built ahead stopped unused (%s)", warm.profile.name, failure)

    async def aclose(self) -> None:
        """No more pipelines ahead (the worker drains or stops): stop those not taken."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refill
        unused = [warm for ready in self._ready.values() for warm in ready]
        for ready in self._ready.values():
            ready.clear()
        self._counted()
        await asyncio.gather(*(warm.aclose() for warm in unused), return_exceptions=True)
