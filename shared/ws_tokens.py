"""Single-use, expiring tokens that open a session's WebSocket on its worker.

A token is signed, not stored: the API signs it with the session's own key
(``KEY_FIELD`` in the session's Redis hash, made with the session, read by the
worker that takes it), and the worker's listener checks it without asking Redis.
Before, the listener consumed a stored token with a GETDEL: a round trip on the
worker's loop between a client's handshake and its accept, which in a burst waited
behind the audio of the calls already connected (ops/bench/start_trace.py).

What a token says, in the clear: the session it opens, when it expires, and a
nonce. What it is bound to, by its signature: those, and the listener it was
minted for (``listener``: random per worker process, advertised with the
session's ``ws_url``). Single use is kept by that listener, which remembers each
nonce it admitted until the token expires; a token is refused by every other
listener, so a session that moved to another worker, or to this worker's next
process, cannot be opened with a token used before.

The key never leaves the API and the workers: it is not in any event, and the
worker drops it from the hash when the session ends (with ``OWNER_CONNECT``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

KEY_FIELD = "ws_key"
"""The session's hash field holding its token-signing key (hex)."""

KEY_BYTES = 32
NONCE_BYTES = 12
MAC_BYTES = 16  # 128 bits of HMAC-SHA256: not to be guessed
MAX_TOKEN_CHARS = 160  # longer input is not a token of ours; refuse it before parsing


def new_key() -> str:
    """A new session's signing key."""
    return secrets.token_hex(KEY_BYTES)


def new_listener() -> str:
    """A WebSocket listener's identity: random per process, so a restarted worker with the
    same id does not take tokens minted for its predecessor."""
    return secrets.token_urlsafe(9)


def _mac(key: str, body: str, listener: str) -> str:
    digest = hmac.new(bytes.fromhex(key), f"{body}|{listener}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:MAC_BYTES]).decode().rstrip("=")


def mint(key: str, session_id: str, listener: str, ttl_s: float) -> str:
    """A token opening ``session_id`` on ``listener`` once, within ``ttl_s`` seconds.

    Expiry is by wall clock, the API's against the worker's: hosts must agree to well
    within the TTL (NTP does).
    """
    expires_ms = int((time.time() + ttl_s) * 1000)
    body = f"{session_id}.{expires_ms:x}.{secrets.token_urlsafe(NONCE_BYTES)}"
    return f"{body}.{_mac(key, body, listener)}"


def session_of(token: str) -> str | None:
    """The session a token claims to open (unchecked), or None if it is not one of ours."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 3:
        return None
    return token.split(".", 1)[0] or None


class TokenGate:
    """One session's tokens, as one listener checks them: valid, unexpired, unused."""

    def __init__(self, key: str, listener: str):
        self._key = key
        self._listener = listener
        self._used: dict[str, float] = {}  # nonce -> expiry (ms): kept until it expires

    def admit(self, token: str) -> bool:
        """Whether ``token`` opens this session now; if so it is used up."""
        if not self._key or session_of(token) is None:
            return False
        body, _, mac = token.rpartition(".")
        _session, expires, nonce = body.split(".")
        if not hmac.compare_digest(mac.encode(), _mac(self._key, body, self._listener).encode()):
            return False
        try:
            expires_ms = int(expires, 16)
        except ValueError:
            return False
        now_ms = time.time() * 1000
        if expires_ms <= now_ms or nonce in self._used:
            return False
        self._used = {n: t for n, t in self._used.items() if t > now_ms}
        self._used[nonce] = expires_ms
        return True
