"""Turns pipeline frames into session events, as a Pipecat observer.

Observers see every frame without being wired into the pipeline, so the
profiles stay free of recording code. Speaking frames are sent both up- and
downstream by the output transport; tracking who is speaking makes each
start/stop one event.

It also notes when the call was last active, for the idle timeout: Pipecat would
add an observer of its own for that, and every observer is one more queue hop
per frame (its ``WorkerObserver`` proxies each through a queue and a task).
"""

from __future__ import annotations

import time

from pipecat.frames.frames import (
    BotSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed

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


class SessionEventObserver(BaseObserver):
    def __init__(self, publisher: EventPublisher):
        super().__init__(observe_every_push=False)
        self.publisher = publisher
        self.active_at = time.monotonic()  # the last frame that shows someone in the call
        self._user_since: float | None = None
        self._bot_since: float | None = None
        self.user_turns = 0
        self.bot_turns = 0

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, ACTIVITY_FRAMES):
            self.active_at = time.monotonic()
        now = time.time()
        if isinstance(frame, UserStartedSpeakingFrame) and self._user_since is None:
            self._user_since = now
            self.publisher.emit(EventType.USER_TURN_STARTED, {"turn": self.user_turns + 1})
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._user_since is not None:
            self.user_turns += 1
            self.publisher.emit(
                EventType.USER_TURN_STOPPED,
                {"turn": self.user_turns, "duration_s": round(now - self._user_since, 3)},
            )
            self._user_since = None
        elif isinstance(frame, BotStartedSpeakingFrame) and self._bot_since is None:
            self._bot_since = now
            self.publisher.emit(EventType.BOT_STARTED_SPEAKING, {"turn": self.bot_turns + 1})
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._bot_since is not None:
            self.bot_turns += 1
            self.publisher.emit(
                EventType.BOT_STOPPED_SPEAKING,
                {"turn": self.bot_turns, "duration_s": round(now - self._bot_since, 3)},
            )
            self._bot_since = None
        elif isinstance(frame, ErrorFrame):
            self.publisher.emit(
                EventType.ERROR, {"message": redact(str(frame.error)), "fatal": bool(frame.fatal)}
            )
