"""Bot profiles: what a session's pipeline is made of, between and around its transport.

A profile is prepared when a worker takes the session (load models, check
configuration) so that when the client connects only the transport is left to
build. Each worker's heartbeat says which ones it runs; the API offers those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.frame_processor import FrameProcessor

from shared.lifecycle import Reason
from worker.options import WorkerOptions

if TYPE_CHECKING:
    from worker.model_sockets import ModelSockets


@dataclass
class SessionContext:
    """What a profile may know about and do to its session."""

    session_id: str
    meta: dict[str, str]
    options: WorkerOptions
    emit: Callable[[str, dict[str, Any]], None]
    """Record an event (never blocks)."""
    end: Callable[[Reason, str | None], None]
    """End the session with a reason and a message for the user."""
    resumed: bool = False
    """The call was taken up from another worker (``recovered``): the conversation so far
    is in ``meta["history"]``, and the bot carries on without greeting again."""
    model_sockets: ModelSockets | None = None
    """The worker's model sockets opened ahead, for the session's model service to take."""


class Profile(Protocol):
    name: str
    audio_in_sample_rate: int
    audio_out_sample_rate: int
    warmable: bool
    """Its pipeline needs nothing of a session before the client connects: a worker may
    build and start one ahead of any session (``worker.warm``) and ``bind`` it to the
    session that takes it."""

    def bind(self, context: SessionContext) -> None:
        """Become ``context``'s session's (a warmable profile built ahead of it)."""

    @staticmethod
    def preload() -> None:
        """Load what every session of this profile shares, once per worker process."""

    async def prepare(self) -> None:
        """Load what the session needs before it is announced ready."""

    def pipeline(self, input: FrameProcessor, output: FrameProcessor) -> list[FrameProcessor]:
        """The session's processors, transport input and output included, in order."""

    def observers(self) -> list[BaseObserver]:
        """Extra observers (recording transcripts, usage, latency)."""

    async def on_client_connected(self, queue: Callable[[Any], Any]) -> None:
        """Called when media first flows; ``queue`` puts frames into the pipeline."""

    async def on_client_lost(self) -> None:
        """The client's media is gone (the session is ``reconnecting``): the bot must not
        talk to nobody until ``on_client_back``. (The session has already interrupted the
        bot and closed the user's turn with silence; what the user said is kept.)"""

    async def on_client_back(self) -> None:
        """The client is back (``connected`` again): carry on, without greeting again."""


class ProfileClass(Protocol):
    """A profile's class: preloaded once per worker process, called once per session."""

    warmable: bool

    def __call__(self, context: SessionContext) -> Profile: ...

    def preload(self) -> None: ...


def _profiles() -> dict[str, ProfileClass]:
    from worker.profiles.assistant import AssistantProfile
    from worker.profiles.echo import EchoProfile

    return {"echo": EchoProfile, "assistant": AssistantProfile}


def preload_profiles(names: list[str]) -> None:
    for name in names:
        _profiles()[name].preload()


def profile_class(name: str) -> ProfileClass:
    try:
        return _profiles()[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}") from None


def build_profile(context: SessionContext) -> Profile:
    return profile_class(context.meta.get("profile", "echo"))(context)
