"""Bot profiles: what sits between a session's transport input and output.

A profile is prepared when a worker takes the session (load models, open
connections) so that when the client connects only the transport is left to
build. ``Settings.available_profiles`` tells the API which ones a deployment runs.
"""

from __future__ import annotations

from typing import Protocol

from pipecat.processors.frame_processor import FrameProcessor

from worker.profiles.echo import EchoProfile


class Profile(Protocol):
    name: str
    audio_in_sample_rate: int
    audio_out_sample_rate: int

    @staticmethod
    def preload() -> None:
        """Load what every session of this profile shares, once per worker process."""

    async def prepare(self) -> None:
        """Load what the session needs before it is announced ready."""

    def processors(self) -> list[FrameProcessor]:
        """The processors between transport input and output, built once per session."""


PROFILES: dict[str, type] = {"echo": EchoProfile}


def preload_profiles() -> None:
    for cls in PROFILES.values():
        cls.preload()


def build_profile(name: str, **options: object) -> Profile:
    try:
        cls = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}") from None
    return cls(**options)
