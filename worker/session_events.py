"""Turns pipeline frames into session events, as they reach the pipeline's two ends.

A Pipecat observer would see every push of every frame, but Pipecat hands each
push to each observer through a queue and a task of its own (``WorkerObserver``):
three more hops per 20 ms audio frame, for frames this never looks at. Instead
the ``PipelineWorker`` tells us of the few frame types we want when they reach
its sink (downstream) or its source (upstream), filtered by type before anything
else is done: Pipecat's own ``on_frame_reached_downstream``/``_upstream``. Errors
come through ``on_pipeline_error`` (worker/session.py), which sees every one.

Speaking frames are sent both up- and downstream (by the output transport, by a
turn strategy), so a start or stop may reach us twice, and the two ends need not
see them in the order they were made. Tracking who is speaking, with the frames'
ids (Pipecat numbers frames in the order it makes them), makes each start/stop
one event: a copy made before the turn's last change is stale and ignored.

It also notes when the call was last active, for the idle timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    BotSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineWorker

from shared.events import EventType
from shared.logs import redact
from worker.publisher import EventPublisher

# What keeps a call from idling out: Pipecat's default ``idle_timeout_frames``, and
# the StartFrame its IdleFrameObserver also counts.
ACTIVITY_FRAMES = (
    StartFrame,
    BotSpeakingFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
)
TURN_FRAMES = (
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
)
WATCHED_FRAMES = (*ACTIVITY_FRAMES, *TURN_FRAMES)


class _Turns:
    """One party's turns, as events: open from a start to the next stop, counted when
    they close."""

    def __init__(
        self, emit: Callable[[str, dict[str, Any]], None], started: EventType, stopped: EventType
    ):
        self._emit, self._started, self._stopped = emit, started, stopped
        self.count = 0
        self._since: float | None = None  # time.time() the open turn started
        self._changed_by = -1  # id of the frame that last opened or closed a turn

    def start(self, frame: Frame) -> None:
        if self._since is not None or frame.id < self._changed_by:
            return
        self._since, self._changed_by = time.time(), frame.id
        self._emit(self._started, {"turn": self.count + 1})

    def stop(self, frame: Frame) -> None:
        if self._since is None or frame.id < self._changed_by:
            return
        duration = time.time() - self._since
        self._since, self._changed_by = None, frame.id
        self.count += 1
        self._emit(self._stopped, {"turn": self.count, "duration_s": round(duration, 3)})


class SessionEvents:
    def __init__(self, publisher: EventPublisher):
        self.publisher = publisher
        self.active_at = time.monotonic()  # the last frame that shows someone in the call
        self._user = _Turns(
            publisher.emit, EventType.USER_TURN_STARTED, EventType.USER_TURN_STOPPED
        )
        self._bot = _Turns(
            publisher.emit, EventType.BOT_STARTED_SPEAKING, EventType.BOT_STOPPED_SPEAKING
        )

    @property
    def user_turns(self) -> int:
        return self._user.count

    @property
    def bot_turns(self) -> int:
        return self._bot.count

    def attach(self, worker: PipelineWorker) -> None:
        """Hear of the watched frames that reach either end of ``worker``'s pipeline."""
        worker.add_reached_downstream_filter(WATCHED_FRAMES)
        worker.add_reached_upstream_filter(WATCHED_FRAMES)
        worker.add_event_handler("on_frame_reached_downstream", self._reached)
        worker.add_event_handler("on_frame_reached_upstream", self._reached)

    async def _reached(self, _worker: Any, frame: Frame) -> None:
        self.see(frame)

    def see(self, frame: Frame) -> None:
        if isinstance(frame, ACTIVITY_FRAMES):
            self.active_at = time.monotonic()
        match frame:
            case UserStartedSpeakingFrame():
                self._user.start(frame)
            case UserStoppedSpeakingFrame():
                self._user.stop(frame)
            case BotStartedSpeakingFrame():
                self._bot.start(frame)
            case BotStoppedSpeakingFrame():
                self._bot.stop(frame)

    def error(self, frame: ErrorFrame) -> None:
        self.publisher.emit(
            EventType.ERROR, {"message": redact(str(frame.error)), "fatal": bool(frame.fatal)}
        )
