"""The ICE servers a WebRTC peer gets: STUN as configured, TURN with credentials that expire.

TURN relays media for peers that can't reach each other (symmetric NAT, a firewall that
lets only the TURN server through), so a TURN server must not relay for just anyone. The
TURN REST API scheme that coturn implements (``use-auth-secret``) shares one secret
between the TURN server and us, and nothing else: we mint a credential per peer,

    username   = "<unix expiry>:<who>"
    credential = base64(HMAC-SHA1(secret, username))

and the server checks the HMAC and the expiry on every request, so a credential can't be
forged, needs no database, and stops working on its own. The API mints one for a user
(``/api/config``, ``/api/start``), a worker one for itself, per session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from pydantic import BaseModel, Field

from shared.settings import Settings


class IceServer(BaseModel):
    """One entry of WebRTC's ``RTCConfiguration.iceServers``, in the browser's shape."""

    urls: list[str]
    username: str | None = Field(None, description="TURN only: '<expiry>:<who>'.")
    credential: str | None = Field(None, description="TURN only; valid until the expiry.")


def turn_credential(
    secret: str, who: str, ttl: float, *, now: float | None = None
) -> tuple[str, str]:
    """A TURN REST API username and password for ``who``, valid for ``ttl`` seconds."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{who}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    urls: list[str], turn_urls: list[str], turn_secret: str | None, ttl: float, who: str
) -> list[IceServer]:
    """What a peer acting for ``who`` (a user, a worker) connects with, minted now: the
    plain ``urls`` as they are, and ``turn_urls`` with a credential for ``ttl`` seconds."""
    servers = [IceServer(urls=[url]) for url in urls]
    if turn_urls and turn_secret:
        username, credential = turn_credential(turn_secret, who, ttl)
        servers.append(IceServer(urls=list(turn_urls), username=username, credential=credential))
    return servers


def for_user(settings: Settings, user_id: str) -> list[IceServer]:
    """The ICE servers the API hands a signed-in user's browser or client."""
    secret = settings.turn_secret.get_secret_value() if settings.turn_secret else None
    return ice_servers(
        settings.ice_servers, settings.turn_urls, secret, settings.turn_ttl, f"user-{user_id}"
    )
