"""The worker process: arq pulls session start jobs, this process owns the sessions.

DESIGN decision 1: arq dispatches session *starts*, not whole sessions. The
start job takes the session (queued → starting), prepares its pipeline and
returns once it is ready; the session then lives here as an asyncio task.
Capacity is explicit: each poll claims at most the free slots' worth of jobs, so
a worker with every slot used takes none, and takes the next one when a slot frees
(where DESIGN says ``allow_pick_jobs = False``: the poll is ours, see SessionWorker).
One start skips the queue, on purpose: while the poll waits for work with a free slot
and a pipeline running, it offers them as a seat, and a new WebSocket session that
finds it is taken and made ready in the API's create step, with no job to run
(shared/seats.py says why, and what keeps a seat from being a slot counted twice).

DESIGN decision 2: liveness is ours. This process refreshes its own heartbeat
and each session's; the API's reaper fails the sessions of a worker whose
heartbeats stopped. Every long-lived task (arq's poll loop, heartbeats, control
messages) runs under a ``TaskSupervisor``: restarted while Redis is away, fatal
otherwise. The heartbeat says when the poll loop last went round, so a worker
that is not polling is never counted as capacity. Redis being away ends no
call: media never touches it, and each session's events wait in its publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from arq import Worker
from arq.worker import func
from pydantic import ValidationError

from shared import control, keys, queue, seats, ws_tokens
from shared.connections import arq_pool, redis_client
from shared.fleet import PROTOCOL, WorkerBeat, worker_client_name
from shared.gc_freeze import freeze_startup_objects
from shared.lifecycle import (
    FINAL_STATES,
    OWNED_STATES,
    OWNER_CONNECT,
    WAITING_STATES,
    Reason,
    SessionRecord,
)
from shared.live import LiveSessions, ReadyAtTake, Taken, TakeStep
from shared.logs import log_fields
from shared.queue import record_starts
from shared.seats import Seated, WorkerSeat
from worker import metrics
from worker.continuity import resumed_meta
from worker.loop_monitor import watch_event_loop
from worker.model_sockets import ModelSockets
from worker.options import JOB_TIMEOUT_S, SIGNAL_BLOCK_S, WorkerOptions
from worker.profiles import preload_profiles
from worker.session import SessionRunner
from worker.supervisor import TaskSupervisor
from worker.transports import SignalError, TransportError
from worker.transports.websocket import WebSocketListener, WebSocketSessionTransport
from worker.warm import WarmPipeline, WarmPipelines

log = logging.getLogger(__name__)

# A requeued job's own expiry only keeps arq from holding it forever: the API's
# reaper expires the session by its creation time (VOICEPOOL_QUEUE_TTL) anyway.
REQUEUE_EXPIRES_S = 300
SHUTDOWN_PUBLISH_S = 15.0  # at exit, how long sessions' held events may wait for Redis
DRAIN_LOOK_S = 0.25  # a drain looks this often for free slots elsewhere and calls to move
MOVE_FINISH_S = 2.0  # at a drain's end, how long a hand-off under way may take to finish
BEAT_COALESCE_S = 0.05  # beats asked for during a beat wait this long: one for a burst
# A start's beat (and its note for the queue's wait estimate) comes this long after it: its
# client's handshake and first messages arrive on this loop in those ms, and on two cores
# the beat's work delayed them (ops/bench/start_trace.py). A burst's starts share one.
START_BEAT_DELAY_S = 0.05
# Counting every task walks them all (hundreds at 24 calls): every 30th beat is enough to
# show a leak, and keeps it out of the beat a burst of starts asks for.
TASK_COUNT_EVERY = 30
PROTOCOL_CHECK_EVERY = 10  # heartbeats between two looks at the API's protocol
SEATED_ENDS_HELD = 16  # end requests held for a session being seated here, at most
TAKEN_ARRIVAL_S = 0.5  # a client before its session (seated or taken here) waits this long


async def start_session(ctx: dict[str, Any], session_id: str, protocol: int = 0) -> str:
    """The arq job: take a queued session and bring it to ``ready``. ``protocol``: the
    fleet protocol the job was made under (0: before jobs carried it)."""
    if ctx["job_try"] > 1:
        # A start that died half-way is not retried: its session is failed by the reaper.
        return "not retried"
    worker: VoicepoolWorker = ctx["voicepool"]
    if protocol != PROTOCOL:  # an API of another protocol made it: not ours to read
        await worker.hand_back(session_id, ctx["redis"], protocol)
        return "another protocol's"
    return await worker.start_session(session_id, ctx["redis"])


def _ready_at_take(ahead: dict[str, WarmPipeline]) -> ReadyAtTake | None:
    """What a take needs to move a session of one of ``ahead``'s profiles on to ``ready``:
    the ready move's data and the owner's connect parameters, as ``_make_ready`` gives
    them for a WebSocket session (the listener's, the same for every session here)."""
    if not ahead:
        return None
    owner = next(iter(ahead.values())).transport.owner_params()
    return ReadyAtTake(
        profiles=list(ahead),
        data={"transport": "websocket", **owner},
        private={OWNER_CONNECT: json.dumps(owner)},
    )


class SessionWorker(Worker):
    """arq's worker, with each poll bounded by the session slots that are free, and woken
    by the pool's doorbell instead of polling every few milliseconds.

    Each poll reads the due jobs and claims at most ``free_slots`` of them in one step
    (``queue.JobClaims``); what keeps a full worker from taking a session it cannot run
    is that it claims no more than that. Each claimed job runs as arq runs it
    (``run_job``, counted against ``max_jobs`` and arq's semaphore).

    Between polls it waits for whichever comes first: a ring (a job was queued; a blocking
    pop, so pickup costs one round trip and an idle worker sleeps), a slot freed here (a
    full worker takes the next waiting job the moment it can), or ``safety_poll`` seconds.
    A poll that took as many jobs as it could goes round again at once: more may wait.
    """

    def __init__(self, voicepool: VoicepoolWorker, **kwargs: Any):
        super().__init__(**kwargs, poll_delay=0)  # the waiting is in _poll_iteration
        self.voicepool = voicepool
        self.claims = queue.JobClaims(
            self.pool, self.queue_name, int(self.in_progress_timeout_s * 1000)
        )
        self.slot_freed = asyncio.Event()
        self.rung = ""
        """The new session the last ring named ('': none), for the next poll to take."""

    # arq's poll, with its read and claims made in one step; guarded by
    # tests/unit/test_upstream_hooks.py::test_arq_poll and test_arq_claim
    async def _poll_iteration(self) -> None:
        self.slot_freed.clear()  # before counting: a slot freed from here on wakes the wait
        free = self.voicepool.free_slots(in_flight=self.job_counter)
        rung, self.rung = self.rung, ""
        taken = await self.voicepool.claim(self.claims, free, rung) if free else []
        for claim in taken:
            await self.sem.acquire()  # never waits: at most max_jobs run, and sem has one more
            self.job_counter += 1
            session_id = claim.new_start(self.job_deserializer)
            if session_id is not None:
                self.voicepool.take_ahead(session_id)
            task = self.loop.create_task(self.run_job(claim.job_id, claim.score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            if session_id is not None:
                task.add_done_callback(partial(self.voicepool.taken_ahead_ran, session_id))
            self.tasks[claim.job_id] = task
        for job_id, task in list(self.tasks.items()):
            if task.done():  # as arq's poll: a finished job's own failure is raised here
                del self.tasks[job_id]
                task.result()
        await self.heart_beat()
        self.voicepool.polled_at = time.time()  # the heartbeat tells the fleet
        if not (free and len(taken) == free):
            await self._wait_for_work()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.slot_freed.set()  # a start that ended without a session gives its slot back

    async def _wait_for_work(self) -> None:
        wait_s = self.voicepool.options.safety_poll
        if self.voicepool.free_slots(in_flight=self.job_counter) == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.slot_freed.wait(), wait_s)
            return
        self.rung = await self.voicepool.wait_for_work(wait_s)


class VoicepoolWorker:
    def __init__(self, options: WorkerOptions):
        self.options = options
        self.id = options.worker_id
        self.sessions: dict[str, SessionRunner] = {}
        self._starting: dict[str, list[Reason]] = {}  # being taken: end requests held
        self._taken_ahead: dict[str, asyncio.Task[tuple[SessionRunner, bool] | None]] = {}
        self.draining = False
        self._drain_started = False
        self.started_at = time.time()
        # Named connections: the API sees at once when they are all gone (a killed worker).
        self.redis = redis_client(options.redis_url, client_name=worker_client_name(self.id))
        self.live = LiveSessions(
            self.redis,
            heartbeat_ttl=options.heartbeat_ttl,
            stream_retention=options.stream_retention,
            stream_maxlen=options.stream_maxlen,
        )
        self._arq: SessionWorker | None = None
        self.ws_listener = WebSocketListener(self._websocket_session_soon, options)
        self.seat = WorkerSeat(self.redis, options.pool, self.id)
        self._seat_held: dict[str, WarmPipeline] | None = None
        """The pipelines held out for the seat offered (shared/seats.py), until it is taken
        or withdrawn; None: no seat offered."""
        self._seated_ends: dict[str, list[Reason]] = {}  # for a session being seated here
        self._taken_in = asyncio.Event()  # set (and replaced) as a session taken comes in
        self._waiting_unseated = False  # the poll waits with no seat offered
        self.warm = WarmPipelines(options, on_built=self._pipeline_built)
        self.model_sockets = ModelSockets.for_worker(
            options.assistant, options.warm_model_sockets, options.profiles, options.pool
        )
        self.polled_at = time.time()
        self._task_count = 0
        self.supervisor = TaskSupervisor(
            on_restart=lambda name: metrics.SUPERVISED_RESTARTS.labels(task=name).inc()
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._beat_soon = asyncio.Event()  # a slot taken or freed: beat now, not at the interval
        self._unnoted_starts: list[str] = []  # started since the last beat (_note_starts)
        self._stopped = asyncio.Event()
        self._signals_seen = 0

    # --- capacity -----------------------------------------------------------------

    def free_slots(self, in_flight: int = 0) -> int:
        if self.draining or self.supervisor.failed.is_set():
            return 0
        return max(self.options.capacity - len(self.sessions) - in_flight, 0)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        """Serve the pool until stopped (SIGTERM drains, SIGINT or a second SIGTERM ends now).

        Returns the process's exit code: 1 when a long-lived task failed for good.
        Every line logged meanwhile, here and in the tasks started here (sessions,
        Pipecat's), carries ``worker_id`` and ``pool``.
        """
        with log_fields(worker_id=self.id, pool=self.options.pool):
            return await self._serve()

    async def _serve(self) -> int:
        if not await self._speaks_the_apis_protocol():
            await self.redis.aclose()
            return 1
        if self.options.webrtc_host_addresses:
            restrict_ice_host_addresses(self.options.webrtc_host_addresses)
        if self.options.webrtc_udp_ports:
            bind_udp_in_range(asyncio.get_running_loop(), *self.options.webrtc_udp_ports)
        self._install_signal_handlers()
        preload_profiles(self.options.profiles)
        # Listening before the first job: a websocket session is ready only with a URL.
        self.options.ws_advertised_url = await self.ws_listener.start()
        self.options.ws_listener = self.ws_listener.id
        metrics.serve(self.options.metrics_port, self.options.metrics_host)
        metrics.CAPACITY.labels(pool=self.options.pool).set(self.options.capacity)
        metrics.INFO.info({"version": self.options.version, "protocol": str(PROTOCOL)})
        metrics.PIPELINE_HEARTBEAT_TIMEOUTS.labels(pool=self.options.pool)  # 0 before the first
        self._arq = SessionWorker(
            self,
            functions=[
                func(start_session, name=queue.START_JOB, max_tries=1, timeout=JOB_TIMEOUT_S)
            ],
            queue_name=keys.queue(self.options.pool),
            redis_pool=await arq_pool(self.options.redis_url),
            max_jobs=self.options.capacity,
            job_timeout=JOB_TIMEOUT_S,
            keep_result=0,
            max_tries=1,
            handle_signals=False,
            health_check_interval=60,
            ctx={"voicepool": self},
            log_results=False,
        )
        log.info("froze %d start-up objects", freeze_startup_objects())  # short GC pauses
        self.warm.refill()  # after the freeze: what a session leaves is collected
        await self._heartbeat()  # visible to operators before the first job
        self.supervisor.start("arq", self._arq.main)
        self.supervisor.start("heartbeat", self._heartbeat_loop)
        self.supervisor.start("signals", self._signal_loop)
        if self.model_sockets is not None:
            self.supervisor.start("model-sockets", self.model_sockets.run)
        self.supervisor.start(
            "event-loop",
            partial(watch_event_loop, self.options.pool, busy=lambda: bool(self.sessions)),
        )
        log.info(
            "worker %s serving pool %r with %d slots (event loop: %s)",
            self.id,
            self.options.pool,
            self.options.capacity,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        stopped = asyncio.create_task(self._stopped.wait())
        failed = asyncio.create_task(self.supervisor.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        if self.supervisor.failure is not None:
            log.critical("worker %s stopping: %r", self.id, self.supervisor.failure)
            self._spawn(self._heartbeat_once())  # no free slots from here on
        await self.aclose()
        return 1 if self.supervisor.failure is not None else 0

    async def _speaks_the_apis_protocol(self) -> bool:
        """Whether this worker's PROTOCOL is the API's (or no API has said yet). A worker
        of another one would take sessions it misreads, or be invisible to admission."""
        theirs = await self.redis.get(keys.PROTOCOL)
        if theirs is None or int(theirs) == PROTOCOL:
            return True
        log.critical(
            "worker %s speaks protocol %d and this fleet's API %s: run a voicepool of the "
            "API's protocol (see README, Versions)",
            self.id,
            PROTOCOL,
            theirs,
        )
        return False

    async def drain(self, timeout: float | None = None) -> None:
        """Take no new sessions; move each live call to another worker of the pool at its
        next quiet moment, as long as they have free slots; let what cannot move run on up
        to ``timeout``, then end it (``worker_draining``)."""
        if self._drain_started:
            return
        self._drain_started = True
        self.draining = True
        log.info("worker %s draining %d sessions", self.id, len(self.sessions))
        await self._wake_seat()
        await self.warm.aclose()
        await self._heartbeat()
        limit = self.options.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        moves: dict[str, asyncio.Task[bool]] = {}
        moved_at: dict[str, float] = {}
        # A call moved a moment ago shows in the other worker's heartbeat only after this.
        beat_lag = 2 * self.options.heartbeat_interval + 1.0
        while self.sessions and time.monotonic() < deadline:
            free = await self._free_elsewhere()
            now = time.monotonic()
            taken = sum(not task.done() for task in moves.values())
            taken += sum(now - at < beat_lag for at in moved_at.values())
            for runner in list(self.sessions.values()):
                if taken >= free:
                    break
                if runner.id not in moves and runner.movable:
                    moves[runner.id] = asyncio.create_task(self._move(runner, deadline, moved_at))
                    taken += 1
            await asyncio.sleep(min(DRAIN_LOOK_S, max(deadline - time.monotonic(), 0.0)))
        await self.end_all(Reason.WORKER_DRAINING)
        if moves:  # a hand-off under way finishes queueing its call (bounded)
            _done, late = await asyncio.wait(moves.values(), timeout=MOVE_FINISH_S)
            for task in late:
                task.cancel()
        self._stopped.set()

    async def _free_elsewhere(self) -> int:
        """Free slots of the other live workers of this pool, as their heartbeats say."""
        try:
            ids = await cast("Awaitable[set[str]]", self.redis.smembers(keys.WORKERS))
            others = sorted(ids - {self.id})
            beats = await self.redis.mget([keys.worker(wid) for wid in others]) if others else []
        except Exception as exc:
            log.warning("drain: the other workers could not be read: %s", exc)
            return 0
        fresh_s = 3 * self.options.heartbeat_interval
        free = 0
        for raw in beats:
            if raw is None:
                continue
            beat = WorkerBeat.model_validate_json(raw)
            if beat.pool == self.options.pool and time.time() - beat.ts <= fresh_s:
                free += beat.free_slots
        return free

    async def _move(
        self, runner: SessionRunner, deadline: float, moved_at: dict[str, float]
    ) -> bool:
        """Hand one call over to another worker at its next quiet moment (before
        ``deadline``): it goes ``recovering`` and to the head of the pool's queue."""
        arq = self._arq.pool if self._arq is not None else None
        try:
            if arq is None or not await runner.quiet.wait_quiet(deadline):
                return False
            record = SessionRecord.from_hash(await self.live.get(runner.id))
            if record is None:
                return False

            async def requeue() -> None:
                await queue.enqueue_recovery(
                    self.redis,
                    arq,
                    runner.id,
                    self.options.pool,
                    created_ts=record.created_ts,
                    expires_s=REQUEUE_EXPIRES_S,
                    lost=False,
                )

            with log_fields(session_id=runner.id):
                if not await runner.hand_off(requeue):
                    return False
                log.info("drain: the call is handed over to another worker")
            moved_at[runner.id] = time.monotonic()
            return True
        except Exception:
            log.exception("drain: a call could not be handed over", extra={"session_id": runner.id})
            return False

    async def end_all(self, reason: Reason) -> None:
        for runner in list(self.sessions.values()):
            runner.end(reason)
        await asyncio.gather(*(r.wait() for r in list(self.sessions.values())))

    def stop(self) -> None:
        self._stopped.set()

    async def aclose(self) -> None:
        """Stop picking jobs, end every session, and remove this worker's traces."""
        self.draining = True  # no free slots from here on: no poll claims a job
        await self._wake_seat()
        try:  # with Redis away, sessions' final events wait for it, but not forever
            await asyncio.wait_for(self.end_all(Reason.WORKER_SHUTDOWN), SHUTDOWN_PUBLISH_S)
        except TimeoutError:
            log.error("worker %s: sessions' last events did not reach Redis", self.id)
        await self.warm.aclose()
        await self.ws_listener.aclose()
        await self.supervisor.aclose()
        if self.model_sockets is not None:
            await self.model_sockets.aclose()
        if self._arq is not None:
            with contextlib.suppress(Exception):
                await self._arq.close()
        if self._seat_held is not None:  # the poll stopped as it waited on the seat
            held, self._seat_held = self._seat_held, None
            self.warm.settle(held, None)
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.worker_seat(self.id))
                pipe.srem(keys.pool_seats(self.options.pool), self.id)
                pipe.delete(keys.worker(self.id))
                pipe.srem(keys.WORKERS, self.id)
                pipe.hdel(keys.pool_slots(self.options.pool), self.id)
                await pipe.execute()
        await self.redis.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()

        def on_sigterm() -> None:
            self._signals_seen += 1
            if self._signals_seen == 1:
                self._spawn(self.drain())
            else:
                self.stop()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.stop)

    # --- sessions -------------------------------------------------------------------

    async def start_session(self, session_id: str, arq_redis: Any) -> str:
        # The session's tasks (its run, its publisher, Pipecat's) start in here: every
        # line they log carries its session_id.
        with log_fields(session_id=session_id):
            return await self._start_session(session_id, arq_redis)

    async def claim(self, claims: queue.JobClaims, most: int, rung: str) -> list[queue.Claim]:
        """Claim up to ``most`` due jobs; with ``rung``, the new session whose ring woke this
        worker, taken in the same step if its job is among them (``JobClaims.take_due``):
        the session's start carries on from there (``_start_session``), one round trip
        sooner than a take after the claim (``take_ahead``)."""
        if not rung or self.draining or self._has(rung):
            return (await claims.take_due(most)).claims
        ahead = self._begin_take(rung)
        try:
            claimed = await claims.take_due(most, self._take_step(rung, ahead))
        except BaseException:
            self._not_taken(rung, ahead)
            raise
        if claimed.rung is None:  # not claimed here, no new start, or no longer queued
            self._not_taken(rung, ahead)
        else:
            with log_fields(session_id=rung):
                finish = self._finish_take(rung, claimed.rung, ahead)
                self._taken_ahead[rung] = asyncio.create_task(finish)
        return claimed.claims

    def _has(self, session_id: str) -> bool:
        """Is the session being taken or started here, or running here? Rings come last
        first: a burst's session may be claimed, and taken, by a poll before its own ring
        is heard. One take of a session at a time (``_starting`` is the take's)."""
        return (
            session_id in self._starting
            or session_id in self._taken_ahead
            or session_id in self.sessions
        )

    def take_ahead(self, session_id: str) -> None:
        """Take a new session as its start job is claimed, while arq reads the job again to
        run it (``SessionWorker._poll_iteration``): the take's round trip and arq's overlap,
        where one came after the other (with the take's ready move, ``ready`` comes 1.1 ms
        sooner one at a time: ops/bench/start_trace.py). A session the take made ready runs
        from there; the job's run (``start_session``) carries on from it otherwise.
        Only a job of this fleet's protocol that never ran before (``queue.Claim``): what
        ``start_session`` would turn away is never taken here. A session taken with its
        claim (``claim``), or being started or running here, is not taken again (``_has``)."""
        if self.draining or self._has(session_id):
            return
        with log_fields(session_id=session_id):
            self._taken_ahead[session_id] = asyncio.create_task(self._take(session_id))

    def taken_ahead_ran(self, session_id: str, _job: object = None) -> None:
        """The job of a session taken ahead has run: had arq not run ``start_session`` (its
        job gone between the claim and arq's read), the session is started anyway."""
        if session_id in self._taken_ahead:
            self._spawn(self.start_session(session_id, None))

    # --- seats (shared/seats.py) ----------------------------------------------------------

    async def wait_for_work(self, wait_s: float) -> str:
        """Wait until a job of the pool is rung in (returns the session the ring names, ''
        for none) or ``wait_s`` seconds pass (''). With a free slot and pipelines running,
        offer them as a seat meanwhile: a session seated in it is in and running here by
        the time this returns, and the seat is withdrawn (a slot is never both seated and
        claimed). The caller has seen a free slot."""
        held = self._seat_held if self._seat_held is not None else self._hold_for_seat()
        if not held:  # a pipeline built meanwhile wakes the wait, to offer a seat
            self._waiting_unseated = True
            try:
                return (await self.seat.wait(wait_s)).ring or ""
            finally:
                self._waiting_unseated = False
        self._seat_held = held  # from here until taken or withdrawn (also after a failure)
        offer = seats.offer(self._take_step("", held), list(held), PROTOCOL)
        woken = await self.seat.wait(wait_s, offer)
        if woken.seated is not None:
            await self._seated(woken.seated)
        else:
            await self._withdraw_seat()
        return woken.ring or ""

    def _hold_for_seat(self) -> dict[str, WarmPipeline]:
        if not self.options.seats or self.draining or not self.options.ws_advertised_url:
            return {}
        return self.warm.hold()

    def _pipeline_built(self) -> None:
        """A pipeline was built ahead: a wait that offers no seat for want of one ends, to
        offer it (the next session need not wait for the safety poll's turn)."""
        if self._waiting_unseated and self.options.seats and not self.draining:
            self._waiting_unseated = False  # one wake
            self._spawn(self._wake_seat(offered=False))

    async def _withdraw_seat(self) -> None:
        """The seat withdrawn; a session seated in it meanwhile is brought in."""
        if self._seat_held is None:
            return
        seated = await self.seat.withdraw()  # (failed: still held, offered again next wait)
        if seated is not None:
            await self._seated(seated)
            return
        held, self._seat_held = self._seat_held, None
        self._seated_ends.clear()
        self.warm.settle(held, None)

    async def _wake_seat(self, *, offered: bool = True) -> None:
        """End the poll's wait now: on a seat offered (which the poll withdraws as it wakes),
        for a drain or a close; or, not ``offered``, on none."""
        if self._seat_held is not None or not offered:
            with contextlib.suppress(Exception):  # Redis away: the seat lapses by itself
                await self.seat.wake(withdraw=offered)

    async def _seated(self, seated: Seated) -> None:
        """A session the API's create step seated in this worker's seat: taken and ready in
        that step, as a take of this worker's own would have left it (the seat's arguments
        were its take's), it runs from here with the pipeline held for the seat."""
        held, self._seat_held = self._seat_held or {}, None
        session_id = seated.session_id
        self._starting[session_id] = self._seated_ends.pop(session_id, [])
        self._seated_ends.clear()
        with log_fields(session_id=session_id):
            await self._finish_take(session_id, Taken(seated.meta, ready=True), held)

    async def _start_session(self, session_id: str, arq_redis: Any) -> str:
        ahead = self._taken_ahead.pop(session_id, None)
        if ahead is not None:  # its slot was counted as it was claimed
            taken = await ahead
        elif self.draining or self.free_slots() <= 0:
            await self._requeue(session_id, arq_redis)
            return "requeued"
        else:
            taken = await self._take(session_id)
        if taken is None:
            return "not started"
        runner, ready = taken
        if ready:  # bound to a pipeline running here: it runs already (_finish_take)
            return "ready"
        if not await self._make_ready(runner):
            self.sessions.pop(session_id, None)
            await runner.publisher.aclose()
            await self._release(runner)  # a room or a token made before it failed
            return "not started"
        self._run(runner)
        # The session's task builds its pipeline in its first step: let it run now, not
        # after the job's own bookkeeping (arq's result, the beat): a client is on its way.
        await asyncio.sleep(0)
        return "ready"

    def _run(self, runner: SessionRunner) -> None:
        """A session ready here starts running: its task from the next step of the loop."""
        self._unnoted_starts.append(runner.id)
        runner.start()
        # Operators see the slot taken in the next beat, a moment later.
        asyncio.get_running_loop().call_later(START_BEAT_DELAY_S, self._beat_soon.set)

    async def _make_ready(self, runner: SessionRunner) -> bool:
        """Prepare a session taken (its transport's room or listener) and move it on to
        ``ready``; False if it could not be (ended, saying why)."""
        session_id = runner.id
        recovered = int(runner.meta.get("recoveries") or 0) > 0  # another worker had the call
        try:
            connect = await runner.prepare()
            owner = runner.transport.owner_params()
            ready, _ = await self.live.move(
                session_id,
                "mark_ready",
                Reason.RECOVERED if recovered else Reason.PIPELINE_READY,
                worker_id=self.id,
                data={"transport": runner.meta.get("transport", "webrtc"), **connect},
                # for the API, never in an event; set with ready, so it is there when
                # the API sees ready
                private={OWNER_CONNECT: json.dumps(owner)} if owner else None,
            )
        except TransportError as exc:  # e.g. Daily refused: the owner sees why
            log.warning("session not started: %s (%s)", exc, exc.reason)
            runner.end(exc.reason, str(exc))
            await self._not_started(session_id, exc.reason, str(exc))
            ready = False
        except Exception as exc:
            log.exception("session could not be prepared")
            runner.end(Reason.PIPELINE_ERROR)
            message = f"the session could not be prepared: {type(exc).__name__}"
            await self._not_started(session_id, Reason.PIPELINE_ERROR, message)
            ready = False
        return ready

    async def _take(self, session_id: str) -> tuple[SessionRunner, bool] | None:
        """Take the session (picked up and read in one step) and register its runner, and
        whether it is ``ready`` already; None if it is not this worker's to run (no longer
        queued), or could not be set up (then it is ended, saying why). Until its runner is
        registered, an end request for it is held (``_handle``) and applied to it then.

        A session this worker has a pipeline running for (``worker.warm``) is moved on to
        ``ready`` by the take itself: its runner is registered, that pipeline bound, before
        anything else runs here, so its client finds it however soon it connects."""
        ahead = self._begin_take(session_id)
        try:
            taken = await self.live.take(
                session_id, self.id, data=self._take_data(), ready_if=_ready_at_take(ahead)
            )
        except BaseException:
            self._not_taken(session_id, ahead)
            raise
        if taken is None:  # unknown, cancelled or expired meanwhile
            self._not_taken(session_id, ahead)
            return None
        return await self._finish_take(session_id, taken, ahead)

    def _begin_take(self, session_id: str) -> dict[str, WarmPipeline]:
        """Before a take: end requests for the session are held from now on, and one
        running pipeline of each profile is held out for it (``WarmPipelines.hold``). Ends
        with ``_not_taken`` or ``_finish_take``."""
        self._starting[session_id] = []
        return self.warm.hold()

    def _take_data(self) -> dict[str, Any]:
        return {"pool": self.options.pool}

    def _take_step(self, session_id: str, ahead: dict[str, WarmPipeline]) -> TakeStep:
        return self.live.take_step(
            session_id, self.id, data=self._take_data(), ready_if=_ready_at_take(ahead)
        )

    def _not_taken(self, session_id: str, ahead: dict[str, WarmPipeline]) -> None:
        self.warm.settle(ahead, None)
        del self._starting[session_id]

    async def _finish_take(
        self, session_id: str, taken: Taken, ahead: dict[str, WarmPipeline]
    ) -> tuple[SessionRunner, bool] | None:
        """Register the runner of a session taken (``_take``, or with its claim: ``claim``),
        with the pipeline held for it if the take made it ready, and then run it; None if
        it could not be set up (it is ended, saying why). A session not ready yet runs
        once ``_start_session`` has prepared it."""
        try:
            warm = self.warm.settle(ahead, taken.meta.get("profile") if taken.ready else None)
            meta = taken.meta
            try:
                if int(meta.get("recoveries") or 0) > 0:  # another worker had the call
                    meta = await resumed_meta(self.redis, session_id, meta)
                runner = SessionRunner(
                    session_id,
                    meta,
                    options=self.options,
                    live=self.live,
                    on_finished=self._finished,
                    warm=warm,
                    model_sockets=self.model_sockets,
                )
                built = "built" if warm is None else "warm"
                metrics.SESSION_STARTS.labels(pool=self.options.pool, pipeline=built).inc()
            except Exception as exc:  # it is ours now: say why it ends rather than leave it
                if warm is not None:
                    self._spawn(warm.aclose())
                log.exception("session could not be set up")
                with contextlib.suppress(Exception):
                    message = f"the session could not be set up: {type(exc).__name__}"
                    await self._not_started(session_id, Reason.PIPELINE_ERROR, message)
                return None
            stale = self.sessions.get(session_id)
            if stale is not None:  # its own call, recovered while it stalled: that run stops
                stale.let_go(Reason.WORKER_LOST)
            self.sessions[session_id] = runner
            self._taken_in.set()  # a client that came sooner looks again
            self._taken_in = asyncio.Event()
        finally:
            held = self._starting.pop(session_id)
        for reason in held:
            runner.end(reason)
        if taken.ready:
            # Bound to a warm pipeline and ready, so its client may be connecting already:
            # it runs from here, not once arq has read its job again and called
            # start_session (a round trip and arq's bookkeeping later, on a loop the
            # client's handshake shares: ops/bench/start_trace.py).
            self._run(runner)
        return runner, taken.ready

    async def _not_started(self, session_id: str, reason: Reason, message: str) -> None:
        """End a session this worker took and could not start, saying why."""
        await self.live.move(
            session_id, "finish_own", reason, worker_id=self.id, data={"message": message}
        )

    async def _note_starts(self) -> None:
        """The sessions started since the last beat, in the pool's start rate."""
        noted, self._unnoted_starts = self._unnoted_starts, []
        if noted:
            with contextlib.suppress(Exception):  # only the queue's wait estimate misses them
                await record_starts(self.redis, self.options.pool, noted)

    async def hand_back(self, session_id: str, arq_redis: Any, protocol: int) -> None:
        """A start job of another protocol: back in the queue as it came (its place, its
        protocol) for a worker that speaks it, and this worker, whose fleet moved on,
        drains."""
        await self._requeue(session_id, arq_redis, protocol=protocol)
        self.outdated(str(protocol))

    def outdated(self, theirs: str) -> None:
        """The fleet's API speaks another protocol now: take no more sessions; the live
        ones move or finish (a drain), and the worker exits."""
        if self.draining:
            return
        log.critical(
            "worker %s speaks protocol %d and this fleet now %s: draining (run a voicepool of "
            "the API's protocol, see README, Versions)",
            self.id,
            PROTOCOL,
            theirs,
        )
        self.draining = True  # from now: no poll takes another job (drain() follows)
        self._spawn(self.drain())

    async def _requeue(self, session_id: str, arq_redis: Any, *, protocol: int = PROTOCOL) -> None:
        """Hand a session we cannot run back to the pool's queue, keeping its place."""
        record = SessionRecord.from_hash(await self.live.get(session_id))
        if record is None or record.state not in WAITING_STATES:
            return
        attempt = record.requeues + 1
        job_id = f"{session_id}.{attempt}"
        await cast(
            "Awaitable[int]",
            self.redis.hset(
                keys.session(session_id), mapping={"job_id": job_id, "requeues": attempt}
            ),
        )
        await queue.enqueue_start(
            arq_redis,
            session_id,
            self.options.pool,
            job_id=job_id,
            expires_s=REQUEUE_EXPIRES_S,
            place=record.created_ts,
            protocol=protocol,
        )

    def _websocket_session(self, session_id: str) -> WebSocketSessionTransport | None:
        """This worker's WebSocket session ``session_id``, if it runs here."""
        runner = self.sessions.get(session_id)
        transport = runner.transport if runner is not None else None
        return transport if isinstance(transport, WebSocketSessionTransport) else None

    async def _websocket_session_soon(self, session_id: str) -> WebSocketSessionTransport | None:
        """The WebSocket listener's route: this worker's session a token opens. A session is
        ``ready`` in Redis, and its client may have its answer, a moment before it is in
        here: one seated in this worker's seat (the API answered as the create step seated
        it), or taken with its claim (its runner registered a step of the loop later). A
        client that comes while one is on its way in waits for it, ``TAKEN_ARRIVAL_S`` at
        most, where it was refused (the likeliest cause of the one 403 that anchor runs'
        one-at-a-time starts met now and then before seats)."""
        found = self._websocket_session(session_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEN_ARRIVAL_S
        while found is None and (self._seat_held is not None or session_id in self._starting):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken_in.wait(), remaining)
            found = self._websocket_session(session_id)
        return found

    async def _release(self, runner: SessionRunner) -> None:
        with contextlib.suppress(Exception):
            await runner.transport.aclose()
        await self._forget_owner_connect(runner.id)

    async def _forget_owner_connect(self, session_id: str) -> None:
        # The hash is kept for a while for replay; the meeting token and the key that
        # signs WebSocket tokens in it are not.
        with contextlib.suppress(Exception):
            await cast(
                "Awaitable[int]",
                self.redis.hdel(keys.session(session_id), OWNER_CONNECT, ws_tokens.KEY_FIELD),
            )

    def _finished(self, runner: SessionRunner) -> None:
        if self.sessions.get(runner.id) is runner:
            del self.sessions[runner.id]
        if not runner.handed_off:  # else what the owner connects with is the new worker's
            self._spawn(self._forget_owner_connect(runner.id))
        self._beat_soon.set()
        if self._arq is not None:
            self._arq.slot_freed.set()  # the next waiting job, now rather than at a poll
        reason = "handed_off" if runner.handed_off else str(runner.end_reason or "")
        metrics.SESSION_SECONDS.labels(pool=self.options.pool, reason=reason).observe(
            runner.duration
        )

    # --- heartbeats -------------------------------------------------------------------

    def status(self) -> WorkerBeat:
        return WorkerBeat(
            id=self.id,
            pool=self.options.pool,
            host=self.options.host,
            pid=os.getpid(),
            version=self.options.version,
            protocol=PROTOCOL,
            profiles=self.options.profiles,
            transports=self.options.transports,
            capacity=self.options.capacity,
            active=len(self.sessions),
            draining=self.draining or self.supervisor.failed.is_set(),
            load=round(os.getloadavg()[0], 2),
            tasks=self._task_count,
            started_at=self.started_at,
            ts=time.time(),
            polled_at=self.polled_at,
        )

    async def _heartbeat(self) -> None:
        metrics.ACTIVE.labels(pool=self.options.pool).set(len(self.sessions))
        metrics.DRAINING.labels(pool=self.options.pool).set(int(self.draining))
        # One round trip for the worker and all its sessions (only the ones still ours).
        found = await self.live.keep_alive(self.id, list(self.sessions), beat=self.status())
        for sid, (state, owner) in found.items():
            runner = self.sessions.get(sid)
            if runner is None or runner.end_reason is not None or not runner.movable:
                continue  # ending, or not started (not picked up yet, or being prepared)
            if state in FINAL_STATES:
                # Ended from outside (the reaper, once it could not see us): stop the call
                # rather than run a session nobody can see.
                log.warning(
                    "session is %s in Redis; ending it here", state, extra={"session_id": sid}
                )
                runner.end(Reason.WORKER_LOST)
            elif state and (owner != self.id or state not in OWNED_STATES):
                # Recovered while this worker could not be seen (a stall, a partition): the
                # call is, or soon will be, another worker's. Let it go, saying nothing.
                log.warning(
                    "session is %s on worker %s in Redis; letting it go here",
                    state,
                    owner,
                    extra={"session_id": sid},
                )
                runner.let_go(Reason.WORKER_LOST)

    async def _check_protocol(self) -> None:
        """The API of an upgraded fleet records its protocol: a worker of the old one
        drains instead of taking sessions it would misread (between two checks, the jobs
        it takes say so themselves)."""
        with contextlib.suppress(Exception):  # Redis away: the next check
            theirs = await self.redis.get(keys.PROTOCOL)
            if theirs is not None and int(theirs) != PROTOCOL:
                self.outdated(theirs)

    async def _heartbeat_once(self) -> None:
        with contextlib.suppress(Exception):  # the loop's next beat covers a failure
            await self._heartbeat()

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while True:
            self._beat_soon.clear()
            if beats % TASK_COUNT_EVERY == 0:
                self._task_count = len(asyncio.all_tasks())  # a leak shows here first
            if beats % PROTOCOL_CHECK_EVERY == 0 and beats:
                await self._check_protocol()
            beats += 1
            try:
                await self._heartbeat()
            except Exception as exc:  # keep beating through a Redis restart
                log.warning("heartbeat failed: %s", exc)
            await self._note_starts()
            if self._beat_soon.is_set():  # asked for during the beat: the next one at once,
                await asyncio.sleep(BEAT_COALESCE_S)  # after a moment (one for a burst)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_soon.wait(), self.options.heartbeat_interval)

    # --- control messages (SDP offers, ICE candidates, end and drain requests) ---------

    async def _signal_loop(self) -> None:
        while True:
            try:
                raw = await control.take(self.redis, self.id, SIGNAL_BLOCK_S)
            except Exception as exc:
                log.warning("signal read failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if raw is None:
                continue
            try:
                message = control.parse(raw)
            except ValidationError as exc:  # never fatal to the loop
                log.error("skipping a malformed control message: %s", exc)
                continue
            # A session's offer builds its peer connection: its tasks carry the session_id.
            with log_fields(session_id=message.session_id or None):
                self._spawn(self._answer(message))

    async def _answer(self, message: control.ControlMessage) -> None:
        try:
            reply = control.Reply(ok=True, result=await self._handle(message))
        except SignalError as exc:
            reply = control.Reply.refused(exc.code, str(exc), exc.status)
        except Exception as exc:
            log.exception("control message %s failed", message.kind)
            reply = control.Reply.refused("worker_error", str(exc), 502)
        await control.answer(self.redis, message.id, reply)

    async def _handle(self, message: control.ControlMessage) -> Any:
        if isinstance(message, control.Drain):
            self.draining = True  # before answering: no job is taken from here on
            await self._wake_seat()  # nor a session seated
            self._spawn(self.drain(message.payload.timeout))
            return {"draining": True}
        if isinstance(message, control.End) and message.session_id in self._starting:
            self._starting[message.session_id].append(message.payload.reason)  # taken, or not
            return {}
        if (
            isinstance(message, control.End)
            and message.session_id not in self.sessions
            and self._seat_held is not None
            and len(self._seated_ends) < SEATED_ENDS_HELD
        ):  # seated here by the API's create step, maybe, and not in yet: held for it
            self._seated_ends.setdefault(message.session_id, []).append(message.payload.reason)
            return {}
        runner = self.sessions.get(message.session_id)
        if runner is None:
            raise SignalError("unknown_session", "the session is not running on this worker", 404)
        if isinstance(message, control.End):
            runner.end(message.payload.reason)
            return {}
        return await runner.handle_signal(message.kind, message.payload.model_dump())


def bind_udp_in_range(loop: asyncio.AbstractEventLoop, low: int, high: int) -> None:
    """Bind the UDP sockets this process asks any port for (``local_addr`` port 0: aioice's
    ICE host candidates, that is WebRTC media) to a free port in ``low``..``high`` instead.

    aioice (under aiortc) has no port-range setting; a firewall or a container's published
    range needs one. The ports are tried in turn from where the last one was taken, so a
    port a closed call just let go is the last to be used again.
    """
    create = loop.create_datagram_endpoint
    size = high - low + 1
    turn = itertools.count()

    async def create_in_range(
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if local_addr is None or local_addr[1] != 0:
            return await create(protocol_factory, local_addr=local_addr, **kwargs)
        for _ in range(size):
            port = low + next(turn) % size
            try:
                return await create(protocol_factory, local_addr=(local_addr[0], port), **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"every UDP port in {low}-{high} is in use")

    # aioice binds through the running loop; guarded by
    # tests/unit/test_upstream_hooks.py::test_aioice_ports
    loop.create_datagram_endpoint = create_in_range  # type: ignore[method-assign, assignment]


def restrict_ice_host_addresses(addresses: list[str]) -> None:
    """Offer only these host addresses as ICE candidates.

    aioice gathers every interface address except loopback; single-machine
    setups need 127.0.0.1, and hosts behind NAT want exactly one address.
    """
    import aioice.ice

    chosen = list(addresses)
    # aioice takes no address list; guarded by tests/unit/test_upstream_hooks.py::test_aioice_hosts
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]
