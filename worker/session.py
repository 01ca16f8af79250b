"""One live session inside a worker: its WebRTC peer, its pipeline, its limits, its end.

Each session gets its own ``WorkerRunner`` (a shared runner would let one
session's end or idle timeout cancel every other). The runner is watched:
whatever way the pipeline stops — the client ends it or leaves, a limit is
hit, a processor fails — the session reaches a final state with a reason.
A client whose media goes away without ending the call is waited for: the
session is ``reconnecting`` for ``reconnect_grace`` seconds, the pipeline and
the model connection up and the bot quiet, and ``connected`` again when the
client connects again; else it ends (``client_left``). A call handed to another
worker (``hand_off`` in a drain, or recovered elsewhere while this worker could
not be seen) stops here without a final state: it goes on over there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pipecat.frames.frames import ErrorFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from shared.lifecycle import GRACEFUL_ENDS, Reason
from shared.live import LiveSessions
from shared.logs import log_fields, redact
from worker import metrics
from worker.client_gate import ClientGate
from worker.continuity import QuietWatch
from worker.options import WorkerOptions
from worker.pipeline_health import (
    HEARTBEAT_MONITOR_S,
    HEARTBEAT_PERIOD_S,
    count_heartbeat_timeouts,
)
from worker.profiles import Profile, SessionContext, build_profile
from worker.publisher import EventPublisher
from worker.session_events import SessionEvents
from worker.transports import ClientPresence, SessionTransport, SignalError, build_transport

if TYPE_CHECKING:
    from worker.model_sockets import ModelSockets
    from worker.warm import WarmPipeline

log = logging.getLogger(__name__)

# Ends the service decides on, not the people in the call (lifecycle.GRACEFUL_ENDS):
# the bot finishes what it is saying (Pipecat drains the frames in flight) instead of
# stopping mid-word, for at most GRACEFUL_END_S; any other end is immediate.
GRACEFUL_END_S = 8.0
HANDED_OFF_CLOSE_S = 2.0  # a call another worker has: its last events are not waited for long


def build_pipeline_worker(
    profile: Profile,
    input: FrameProcessor,
    output: FrameProcessor,
    events: SessionEvents | None,
    *,
    conversation_id: str | None = None,
) -> tuple[PipelineWorker, ClientGate]:
    """A session's pipeline: the profile's processors between the transport's ``input``
    and ``output``, the client gate right after the input, and its ``events`` tapped (None:
    a pipeline built ahead of its session, tapped when one takes it, ``worker.warm``)."""
    # Direct mode (Pipecat's): the gate passes each frame on in the caller's task
    # instead of through a queue and a task of its own, as do the profiles' VAD and
    # echo processors. One hop less per 20 ms frame each: the three together took an
    # echo call at 16 calls from 0.056 to 0.048 cores (ops/bench/anchor.py's steady).
    processors = profile.pipeline(input, output)
    local_vad = any(isinstance(p, VADProcessor) for p in processors)
    gate = ClientGate(local_vad=local_vad, enable_direct_mode=True)
    processors.insert(1, gate)
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            audio_in_sample_rate=profile.audio_in_sample_rate,
            audio_out_sample_rate=profile.audio_out_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
            enable_heartbeats=True,  # a stuck pipeline shows in a metric and an alert
            heartbeats_period_secs=HEARTBEAT_PERIOD_S,
            heartbeats_monitor_secs=HEARTBEAT_MONITOR_S,
        ),
        # Each observer is one more queue hop per frame (Pipecat proxies them): the
        # session's events are tapped at the pipeline's ends instead (SessionEvents),
        # nothing here reads Pipecat's turn tracking, and the idle timeout is kept from
        # the events' activity (_check_idle), so none of those is paid for.
        observers=profile.observers(),
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        conversation_id=conversation_id,
    )
    if events is not None:
        events.attach(worker)
    return worker, gate


def build_session_pipeline(
    profile: Profile,
    transport: SessionTransport,
    presence: ClientPresence | None,
    *,
    conversation_id: str | None = None,
) -> tuple[BaseTransport, PipelineWorker, ClientGate]:
    """The session transport's Pipecat transport (``presence`` told of its client) and the
    profile's pipeline between its ends: what a session builds as it starts, and what a
    worker builds ahead of any session (``worker.warm``, no ``presence`` yet)."""
    client = transport.build(
        TransportParams(audio_in_enabled=True, audio_out_enabled=True), presence
    )
    worker, gate = build_pipeline_worker(
        profile, client.input(), client.output(), None, conversation_id=conversation_id
    )
    return client, worker, gate


class SessionRunner:
    def __init__(
        self,
        session_id: str,
        meta: dict[str, str],
        *,
        options: WorkerOptions,
        live: LiveSessions,
        on_finished: Callable[[SessionRunner], None],
        warm: WarmPipeline | None = None,
        model_sockets: ModelSockets | None = None,
    ):
        """``warm``: a pipeline built and running ahead of the session, which it takes
        (``worker.warm``); without one, the session builds its own as it starts.
        ``model_sockets``: the worker's model sockets opened ahead, for an ``assistant``
        session's model service to take (``worker.model_sockets``)."""
        self.id = session_id
        self.meta = meta
        self.options = options
        self.live = live
        self.publisher = EventPublisher(live, session_id, options.worker_id)
        self._events = SessionEvents(self.publisher)
        self.quiet = QuietWatch()  # when a drain may hand the call over
        self.publisher.watch = self.quiet.see
        # Taken up from another worker (recovering) after a client had connected: the call
        # goes on (the client connects again; nobody greets it again).
        self.resumed = int(meta.get("recoveries") or 0) > 0 and bool(meta.get("connected_ts"))
        self.handed_off = False  # another worker has the call now: no final state from here
        context = SessionContext(
            session_id=session_id,
            meta=meta,
            options=options,
            emit=self.publisher.emit,
            end=self.end,
            resumed=self.resumed,
            model_sockets=model_sockets,
        )
        self.profile: Profile = warm.profile if warm is not None else build_profile(context)
        # Limits and the duration count from when the call was first ready, on any worker.
        live_since = float(meta.get("live_since") or 0)
        self.started_at = time.monotonic() - (max(time.time() - live_since, 0) if live_since else 0)
        self.end_reason: Reason | None = None
        self.end_message: str | None = None
        self._on_finished = on_finished
        self.transport: SessionTransport = (
            warm.transport
            if warm is not None
            else build_transport(meta.get("transport", "webrtc"), session_id, options, meta)
        )
        self._end_requested = asyncio.Event()
        self._client: Literal["waiting", "connected", "lost"] = "waiting"
        self._presence: asyncio.Queue[bool] = asyncio.Queue()  # True: back, False: lost
        self._grace: asyncio.TimerHandle | None = None  # ends a call whose client is lost
        self._idle: asyncio.TimerHandle | None = None  # ends a call where nobody speaks
        self._gate: ClientGate | None = None
        self._pipeline: PipelineWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancel: asyncio.Task[None] | None = None
        self._warm = warm
        if warm is not None:
            warm.bind(session_id, meta, context, self)
            self._gate = warm.gate
            self._hook(warm.client_transport, warm.pipeline)
            self._pipeline = warm.pipeline  # running: an end from here on stops it

    # --- lifecycle -------------------------------------------------------------

    async def prepare(self) -> dict[str, Any]:
        """Everything that can happen before the client connects; returns what the
        ``ready`` event tells the client."""
        if self._warm is None:  # (a warm pipeline's profile was prepared as it was built)
            await self.profile.prepare()
        return await self.transport.prepare()

    def start(self) -> None:
        # Every task the session's task creates (Pipecat's pipeline, its transport's)
        # copies this context: their lines, loguru's included, carry the session_id.
        with log_fields(session_id=self.id):
            self._task = asyncio.create_task(self._run(), name=f"session-{self.id}")

    def end(self, reason: Reason, message: str | None = None) -> None:
        """Ask the session to end; the first reason given is the one recorded."""
        if self.end_reason is None:
            self.end_reason = reason
            self.end_message = redact(message) if message else None
        self._end_requested.set()
        if self._pipeline is not None and self._cancel is None:
            graceful = reason in GRACEFUL_ENDS and not self.handed_off
            stop = self._end_gracefully if graceful else self._cancel_now
            with log_fields(session_id=self.id):  # end() is called from other tasks too
                self._cancel = asyncio.create_task(stop(self._pipeline, str(reason)))

    @staticmethod
    async def _cancel_now(pipeline: PipelineWorker, reason: str) -> None:
        await pipeline.cancel(reason=reason)

    @staticmethod
    async def _end_gracefully(pipeline: PipelineWorker, reason: str) -> None:
        try:
            async with asyncio.timeout(GRACEFUL_END_S):
                await pipeline.end(reason=reason)  # drains what is in flight, then ends
                await pipeline.wait()
        except TimeoutError:
            log.info("%s: graceful end took over %.0f s; cancelling", pipeline, GRACEFUL_END_S)
            await pipeline.cancel(reason=reason)

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started_at

    # --- moving the call to another worker ---------------------------------------

    @property
    def movable(self) -> bool:
        """Running here, and not ending: a drain may hand it over."""
        return self._task is not None and not self._end_requested.is_set()

    async def hand_off(self, requeue: Callable[[], Awaitable[object]]) -> bool:
        """Give the call to another worker (a drain, at a quiet moment): once everything
        emitted so far is written, the session goes ``recovering`` (this worker's no more),
        ``requeue`` queues its start at the head of the pool's queue, and the call stops
        here without a final state. False, and the call goes on here, if it is ending or
        is not this worker's any more."""
        if not self.movable:
            return False
        if not await self.publisher.transition("hand_off", Reason.WORKER_DRAINING):
            return False
        try:
            await requeue()
        finally:
            self.let_go(Reason.WORKER_DRAINING)
        return True

    def let_go(self, reason: Reason) -> None:
        """Stop the call here at once, without a final state: it is another worker's now
        (handed off, or recovered elsewhere while this worker could not be seen)."""
        self.handed_off = True
        self.end(reason)

    # --- signalling (relayed from the API) ---------------------------------------

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        if self.handed_off:  # as it is about to be: not running here
            raise SignalError("unknown_session", "the call moved to another worker", 404)
        if self._end_requested.is_set():
            raise SignalError("session_ended", "the session has ended")
        return await self.transport.handle_signal(kind, payload)

    # --- the client: connected, lost, back ---------------------------------------------

    def client_back(self) -> None:
        """The client's media flows: connected at first, or again (transports call this,
        directly or through Pipecat's client events; applied in the order called)."""
        self._presence.put_nowait(True)

    def client_lost(self) -> None:
        """The client's media is gone without an explicit end (peer closed or failed or
        replaced, WebSocket closed, the last person left the room, the client went silent)."""
        self._presence.put_nowait(False)

    def _watch_client(self, transport: BaseTransport) -> None:
        """Pipecat's client events are the client coming and going (the transport tells
        the rest itself)."""

        async def _connected(_transport: object, _client: object) -> None:
            self.client_back()

        async def _disconnected(_transport: object, _client: object) -> None:
            self.client_lost()

        if not self.transport.announces_clients:
            transport.add_event_handler("on_client_connected", _connected)
        transport.add_event_handler("on_client_disconnected", _disconnected)

    async def _follow_client(self) -> None:
        while True:
            back = await self._presence.get()
            if self._end_requested.is_set():
                continue
            try:
                await (self._back() if back else self._lost())
            except Exception:
                log.exception("the client's %s was not handled", "return" if back else "loss")

    async def _back(self) -> None:
        if self._client == "connected":
            return
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        first, self._client = self._client == "waiting", "connected"
        if first:  # (to this worker: a call taken up from another is connected again)
            self._events.active_at = time.monotonic()  # idle from here, not from the start
            again = Reason.CLIENT_RECONNECTED if self.resumed else Reason.CLIENT_CONNECTED
            self.publisher.transition("connect", again)
            assert self._pipeline is not None
            await self.profile.on_client_connected(self._pipeline.queue_frame)
            return
        log.info("the client is back")
        self.publisher.transition("connect", Reason.CLIENT_RECONNECTED)
        await self.profile.on_client_back()  # carries on; never greets again

    async def _lost(self) -> None:
        grace = self.options.reconnect_grace
        if grace <= 0:
            self.end(Reason.CLIENT_LEFT)
            return
        if self._grace is None:
            self._grace = asyncio.get_running_loop().call_later(grace, self.end, Reason.CLIENT_LEFT)
        if self._client != "connected":  # never connected (the grace still applies), or lost
            return
        log.info("the client is lost; waiting %.0f s for it to connect again", grace)
        self._client = "lost"
        self.publisher.transition("lose_client", Reason.CLIENT_LOST)
        await self.profile.on_client_lost()  # first: an answer to the closed turn waits too
        if self._gate is not None:
            await self._gate.hold()

    # --- the session itself --------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self.transport.pipeline_before_client:  # a client comes to a running pipeline
                if not self._end_requested.is_set():
                    await self._run_pipeline()
            elif await self._wait_for_peer():
                await self._run_pipeline()
        except Exception:
            log.exception("session pipeline failed")
            self.end(Reason.PIPELINE_ERROR)
        finally:
            await self._finish()

    async def _wait_for_peer(self) -> bool:
        peer = asyncio.create_task(self.transport.wait_for_client())
        ended = asyncio.create_task(self._end_requested.wait())
        done, pending = await asyncio.wait(
            {peer, ended}, timeout=self.options.connect_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if not done:
            self.end(Reason.CONNECT_TIMEOUT)
        return peer in done and not self._end_requested.is_set()

    def _build_pipeline(self) -> PipelineWorker:
        transport, worker, self._gate = build_session_pipeline(
            self.profile, self.transport, self, conversation_id=self.meta.get("conversation_id")
        )
        self._hook(transport, worker)
        return worker

    def _hook(self, transport: BaseTransport, worker: PipelineWorker) -> None:
        """Follow the session's pipeline: its client's comings and goings, its events, its
        errors, its heartbeats."""
        self.publisher.speaker = getattr(self.transport, "current_speaker", None)
        self._watch_client(transport)
        self._events.attach(worker)
        worker.add_event_handler("on_pipeline_error", self._pipeline_error)
        count_heartbeat_timeouts(worker, pool=self.options.pool, session_id=self.id)

    async def _pipeline_error(self, _worker: object, frame: ErrorFrame) -> None:
        self._events.error(frame)
        kind = type(frame.processor).__name__ if frame.processor else "pipeline"
        metrics.PIPELINE_ERRORS.labels(pool=self.options.pool, kind=kind).inc()
        transport_broken = (
            isinstance(frame.processor, BaseInputTransport | BaseOutputTransport)
            and not frame.processor.is_usable
        )
        if frame.fatal or transport_broken:
            # A transport that can no longer do its job (an output whose writes time
            # out, say) would leave a call that says "connected" and does nothing:
            # end it, saying why. (The model's failures have reasons of their own.)
            self.end(Reason.PIPELINE_ERROR, f"{kind} can no longer do its job: {frame.error}")

    async def _run_pipeline(self) -> None:
        if self._warm is None:
            self._pipeline = self._build_pipeline()
        pipeline = self._pipeline
        assert pipeline is not None  # built here, or running since the warm one was taken
        remaining = self.options.max_session_duration - (time.monotonic() - self.started_at)
        loop = asyncio.get_running_loop()
        limit = loop.call_later(max(remaining, 0), self.end, Reason.MAX_DURATION)
        self._check_idle()
        # A transport whose client arrives only once the pipeline runs (a Daily bot waits
        # in its room) gets its connect timeout here instead of in _wait_for_peer.
        no_show = (
            loop.call_later(self.options.connect_timeout, self._end_if_no_client)
            if self.transport.pipeline_before_client
            else None
        )
        follower = asyncio.create_task(self._follow_client(), name=f"client-{self.id}")
        try:
            if self._warm is not None:  # running already; an end stops it (end())
                await self._warm.task
            else:
                runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
                await runner.add_workers(pipeline)
                if self._end_requested.is_set():  # ended while the pipeline was being built
                    await pipeline.cancel(reason=str(self.end_reason))
                await runner.run()
        finally:
            limit.cancel()
            if no_show is not None:
                no_show.cancel()
            if self._grace is not None:
                self._grace.cancel()
            if self._idle is not None:
                self._idle.cancel()
            follower.cancel()

    def _check_idle(self) -> None:
        """End the call after ``idle_timeout`` with nothing said either way: look again
        when that much has passed since the last activity (a timer, nothing per frame)."""
        if self.end_reason is not None:
            return
        since = time.monotonic() - self._events.active_at
        if since >= self.options.idle_timeout:
            self.end(Reason.IDLE_TIMEOUT)
            return
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.options.idle_timeout - since, self._check_idle)

    def _end_if_no_client(self) -> None:
        if self._client == "waiting":
            self.end(Reason.CONNECT_TIMEOUT)

    async def _finish(self) -> None:
        reason = self.end_reason or Reason.CLIENT_LEFT
        try:
            if self.handed_off:  # not ours to end: what is left is refused anyway
                await self.publisher.aclose(HANDED_OFF_CLOSE_S)
                return
            # After every event of the call; while Redis is away, it waits for it.
            self.publisher.transition(
                "finish_own",
                reason,
                data={"duration_s": round(self.duration, 3)}
                | ({"message": self.end_message} if self.end_message else {}),
            )
            await self.publisher.aclose()
        except Exception:
            log.exception("session could not record its end")
        finally:
            with contextlib.suppress(Exception):
                await self.transport.aclose(handing_off=self.handed_off)
            self._on_finished(self)
