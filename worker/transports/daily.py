"""Daily: the bot joins a Daily room (WebRTC through Daily's SFU) that people join too.

When the worker takes the session it creates a private room with Pipecat's
``DailyRESTHelper`` (expiring with the session's maximum duration), a meeting
token for the bot and one for the session's owner. The owner's token and the
room URL go to the API through the session's hash, never into an event; more
people get their own expiring tokens through ``participant`` control messages.
The bot joins with ``DailyTransport`` as soon as the session is ready; the
session connects when the first person arrives; when the last one leaves it
waits for someone to come back (``reconnecting``, ``connected`` again when one
does) and ends after the reconnect grace. The room is deleted when the session
ends, however it ends.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import aiohttp
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.daily.transport import DailyParams, DailyTransport
from pipecat.transports.daily.utils import (
    DailyMeetingTokenParams,
    DailyMeetingTokenProperties,
    DailyRESTHelper,
    DailyRoomObject,
    DailyRoomParams,
    DailyRoomProperties,
)

from shared.lifecycle import OWNER_CONNECT, Reason
from worker.options import WorkerOptions
from worker.transports import ClientPresence, SignalError, TransportError

log = logging.getLogger(__name__)

BOT_NAME = "voicepool"
OWNER_NAME = "owner"
# The room outlives the session's hard limit by this much: the limit counts from the
# worker taking the session, and ending it (and deleting the room) takes a moment.
ROOM_GRACE_S = 120.0
HTTP_TIMEOUT_S = 10.0  # one REST call to Daily; a start job has 30 s in all
_STATUS = re.compile(r"status: (\d{3})")


def describe_daily_error(exc: BaseException) -> str:
    """A message for the session's owner from what DailyRESTHelper raised (which embeds the
    HTTP status in its text); never the API key, which no Daily error contains anyway."""
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return "Daily's API could not be reached"
    match = _STATUS.search(str(exc))
    status = int(match.group(1)) if match else None
    if status in (401, 403):
        return f"Daily refused the API key ({status}); check DAILY_API_KEY"
    if status == 429:
        return "Daily's API is rate-limiting this deployment (429); try again shortly"
    if status is not None:
        return f"Daily's API failed ({status})"
    return "Daily's API answered with something unexpected"


class RoomTransport(DailyTransport):
    """``DailyTransport`` whose client events mean "the first person came" and "the last
    person left".

    Pipecat fires ``on_client_connected`` / ``on_client_disconnected`` for every participant
    (aliases of joined / left). A Daily session's client is everyone in the room: it is
    connected when the first person joins and lost when the last one leaves, not when
    the first one does; the first to join the empty room again brings it back.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.present: set[str] = set()
        self.speaker: dict[str, str] | None = None
        """Who Daily last said is speaking (not the bot): user events carry it."""

        async def _already_there(_transport: object, _data: object) -> None:
            # People may join from the room URL before the bot does.
            for pid, participant in self.participants().items():
                if pid != "local":  # the bot itself
                    joined = {**participant, "id": pid}
                    await self._call_event_handler("on_client_connected", joined)

        self.add_event_handler("on_joined", _already_there)

    # Events can't be filtered; guarded by tests/unit/test_upstream_hooks.py::test_daily_events
    async def _call_event_handler(self, event_name: str, *args: Any, **kwargs: Any) -> None:
        if event_name == "on_active_speaker_changed" and args:
            participant = dict(args[0] or {})
            info = dict(participant.get("info") or {})
            if participant.get("id") and not info.get("isLocal"):
                self.speaker = {
                    "id": str(participant["id"]),
                    "name": str(info.get("userName") or ""),
                    "user_id": str(info.get("userId") or ""),
                }
        if event_name in ("on_client_connected", "on_client_disconnected") and args:
            pid = str(dict(args[0]).get("id", ""))
            if event_name == "on_client_connected":
                first = not self.present
                self.present.add(pid)
                if not first:
                    return
            else:
                self.present.discard(pid)
                if self.present:
                    return
        await super()._call_event_handler(event_name, *args, **kwargs)


class DailySessionTransport:
    kind = "daily"
    pipeline_before_client = True  # the bot waits in its room for people to join
    announces_clients = False  # Pipecat's participant events are the arrivals

    def __init__(self, session_id: str, options: WorkerOptions, meta: dict[str, str] | None = None):
        self.session_id = session_id
        self.options = options
        # A call moved from another worker keeps its room: its people are in it, and the
        # owner's token for it still holds.
        self._adopted: dict[str, Any] = json.loads((meta or {}).get(OWNER_CONNECT) or "{}")
        self._http: aiohttp.ClientSession | None = None
        self._rest: DailyRESTHelper | None = None
        self.room: DailyRoomObject | None = None
        self.expires_at = 0.0
        self._bot_token = ""
        self._room_transport: RoomTransport | None = None
        self._owner_token = ""

    async def prepare(self) -> dict[str, Any]:
        if not self.options.daily_api_key:
            raise TransportError(Reason.DAILY_UNAVAILABLE, "this worker has no DAILY_API_KEY")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        self._rest = DailyRESTHelper(
            daily_api_key=self.options.daily_api_key,
            daily_api_url=self.options.daily_api_url.rstrip("/"),
            aiohttp_session=self._http,
        )
        lifetime = self.options.max_session_duration + ROOM_GRACE_S
        self.expires_at = time.time() + lifetime
        try:
            if self._adopted.get("room_url"):
                await self._adopt(self._adopted["room_url"], self._adopted.get("token", ""))
                return {}
            self.room = await self._rest.create_room(
                DailyRoomParams(
                    privacy="private",  # the URL alone lets nobody in: tokens do
                    properties=DailyRoomProperties(
                        exp=self.expires_at,
                        eject_at_room_exp=True,
                        start_video_off=True,
                        enable_prejoin_ui=False,
                    ),
                )
            )
            self._bot_token = await self._token(BOT_NAME, lifetime, owner=True)
            self._owner_token = await self._token(OWNER_NAME, lifetime, owner=False)
        except Exception as exc:
            # Daily's answer, not ours, is what went wrong; the room (if any) is deleted
            # by aclose, which the worker calls for a session that never became ready.
            log.warning("session %s: Daily: %s", self.session_id, exc)
            raise TransportError(Reason.DAILY_UNAVAILABLE, describe_daily_error(exc)) from exc
        log.info("session %s: Daily room %s", self.session_id, self.room.name)
        return {}  # nothing public: the room URL and token are for the owner

    async def _adopt(self, room_url: str, owner_token: str) -> None:
        """Take over the room of a call moved here: the bot joins with a token of its own,
        the owner's stays as it was."""
        assert self._rest is not None
        self.room = await self._rest.get_room_from_url(room_url)
        exp = self.room.config.exp
        self.expires_at = float(exp) if exp else self.expires_at
        self._bot_token = await self._token(BOT_NAME, self.expires_at - time.time(), owner=True)
        self._owner_token = owner_token
        log.info("session %s: Daily room %s taken over", self.session_id, self.room.name)

    async def _token(self, user_name: str, ttl_s: float, *, owner: bool, user_id: str = "") -> str:
        assert self._rest is not None and self.room is not None
        return await self._rest.get_token(
            self.room.url,
            expiry_time=ttl_s,
            owner=owner,
            params=DailyMeetingTokenParams(
                properties=DailyMeetingTokenProperties(
                    user_name=user_name, user_id=user_id or None, start_video_off=True
                )
            ),
        )

    def owner_params(self) -> dict[str, Any]:
        assert self.room is not None, "prepare() first"
        return {"room_url": self.room.url, "token": self._owner_token}

    async def wait_for_client(self) -> None:
        return None  # the bot joins at once; the session's connect timeout covers no-shows

    def build(
        self, params: TransportParams, presence: ClientPresence | None = None
    ) -> BaseTransport:
        # ``presence`` unused: the room's first-in / last-out client events say it all.
        assert self.room is not None, "prepare() first"
        values = {
            **dict(params),
            # Daily mixes everyone's audio into one track: the bot hears the whole room
            # through one VAD, as one conversation (per-user tracks would interleave).
            "audio_in_user_tracks": False,
            "camera_out_enabled": False,
            "transcription_enabled": False,
        }
        self._room_transport = RoomTransport(
            self.room.url, self._bot_token, BOT_NAME, DailyParams(**values)
        )
        return self._room_transport

    def current_speaker(self) -> dict[str, str] | None:
        """The participant speaking now, by Daily's active-speaker detection."""
        return self._room_transport.speaker if self._room_transport else None

    async def handle_signal(self, kind: str, payload: dict[str, Any]) -> Any:
        if kind != "participant":
            raise SignalError("bad_signal", f"a Daily session takes no {kind!r} message", 400)
        if self.room is None:
            raise SignalError("session_ended", "the session's room is gone")
        ttl = min(self.options.daily_token_ttl, self.expires_at - time.time())
        try:
            token = await self._token(
                str(payload.get("user_name") or "guest")[:64],
                ttl,
                owner=False,
                user_id=str(payload.get("user_id") or "")[:64],
            )
        except Exception as exc:
            log.warning("session %s: Daily: %s", self.session_id, exc)
            raise SignalError("daily_unavailable", describe_daily_error(exc), 502) from exc
        return {"room_url": self.room.url, "token": token, "expires_at": int(time.time() + ttl)}

    async def aclose(self, *, handing_off: bool = False) -> None:
        try:
            if self.room is not None and self._rest is not None and not handing_off:
                await self._rest.delete_room_by_name(self.room.name)
                log.info("session %s: Daily room %s deleted", self.session_id, self.room.name)
        except Exception as exc:  # it expires on its own at exp anyway
            log.warning("session %s: Daily room not deleted: %s", self.session_id, exc)
        finally:
            self.room = None
            if self._http is not None:
                await self._http.close()
                self._http = None
