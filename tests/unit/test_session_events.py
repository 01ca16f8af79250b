"""Session events from frames that reach the pipeline's ends: each start and stop once,
whichever end and in whichever order their copies arrive."""

from __future__ import annotations

from typing import Any, cast

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InputAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from worker.publisher import EventPublisher
from worker.session_events import WATCHED_FRAMES, SessionEvents


class _Publisher:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.emitted.append((event_type, data))


def _events() -> tuple[SessionEvents, _Publisher]:
    publisher = _Publisher()
    return SessionEvents(cast(EventPublisher, publisher)), publisher


def test_a_broadcast_start_and_stop_make_one_turn() -> None:
    events, publisher = _events()
    # The output transport broadcasts: a copy each way, both reach an end.
    started = (BotStartedSpeakingFrame(), BotStartedSpeakingFrame())
    stopped = (BotStoppedSpeakingFrame(), BotStoppedSpeakingFrame())
    for frame in (*started, *stopped):
        events.see(frame)
    assert [kind for kind, _ in publisher.emitted] == [
        "bot.started_speaking",
        "bot.stopped_speaking",
    ]
    assert publisher.emitted[1][1]["turn"] == 1
    assert events.bot_turns == 1


def test_a_copy_that_arrives_after_the_turn_changed_is_stale() -> None:
    events, publisher = _events()
    up_start, down_start = UserStartedSpeakingFrame(), UserStartedSpeakingFrame()
    up_stop, down_stop = UserStoppedSpeakingFrame(), UserStoppedSpeakingFrame()
    next_start = UserStartedSpeakingFrame()
    # Downstream got there first; the upstream copies come late, one after the next
    # turn started.
    for frame in (down_start, down_stop, up_start, next_start, up_stop):
        events.see(frame)
    assert [(kind, data["turn"]) for kind, data in publisher.emitted] == [
        ("user.turn_started", 1),
        ("user.turn_stopped", 1),
        ("user.turn_started", 2),
    ]
    assert events.user_turns == 1


def test_audio_is_not_watched_and_errors_are_redacted() -> None:
    assert not issubclass(InputAudioRawFrame, WATCHED_FRAMES)
    events, publisher = _events()
    events.error(ErrorFrame(error="model said: invalid key sk-abcdefghijklmnopqrstuvwx"))
    ((kind, data),) = publisher.emitted
    assert kind == "error" and "abcdefghijklmnop" not in data["message"]
