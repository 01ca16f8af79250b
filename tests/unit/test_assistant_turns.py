"""The assistant's user aggregator: which turn strategies a session gets, and that the
model's own turn detection (the default) loads no Smart Turn model."""

from __future__ import annotations

import pytest
from pipecat.audio.turn.smart_turn import local_smart_turn_v3
from pipecat.turns.user_start import ExternalUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from worker.options import AssistantConfig, WorkerOptions
from worker.profiles import SessionContext
from worker.profiles.assistant import AssistantProfile


def _profile(turn_detection: str) -> AssistantProfile:
    options = WorkerOptions(redis_url="redis://-")
    options.assistant = AssistantConfig(api_key="sk-test", turn_detection=turn_detection)
    context = SessionContext(
        session_id="s1", meta={}, options=options, emit=lambda *_: None, end=lambda *_: None
    )
    return AssistantProfile(context)


@pytest.fixture
def smart_turn_loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    loads: list[object] = []
    original = local_smart_turn_v3.LocalSmartTurnAnalyzerV3.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        loads.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local_smart_turn_v3.LocalSmartTurnAnalyzerV3, "__init__", counting)
    return loads


async def _prepared_strategies(turn_detection: str) -> UserTurnStrategies:
    """The user aggregator's turn strategies once a session of the profile is prepared."""
    profile = _profile(turn_detection)
    await profile.prepare()
    assert profile._aggregators is not None
    return profile._aggregators.user()._user_turn_controller.user_turn_strategies


async def test_the_models_turns_need_no_smart_turn_model(smart_turn_loads: list[object]) -> None:
    strategies = await _prepared_strategies("semantic_vad")
    # What the Realtime service recommends, as realtime mode makes it: its turn events
    # start and stop the user's turn, without waiting for the transcript.
    assert [type(s) for s in strategies.start or []] == [ExternalUserTurnStartStrategy]
    (stop,) = strategies.stop or []
    assert isinstance(stop, ExternalUserTurnStopStrategy) and not stop.wait_for_transcript
    assert smart_turn_loads == []


async def test_local_turns_keep_pipecats_defaults(smart_turn_loads: list[object]) -> None:
    strategies = await _prepared_strategies("local")
    assert [type(s) for s in strategies.start or []] == [VADUserTurnStartStrategy]
    assert [type(s) for s in strategies.stop or []] == [TurnAnalyzerUserTurnStopStrategy]
    assert len(smart_turn_loads) == 1
