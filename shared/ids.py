"""Ids of rows and sessions: random, opaque, fixed length."""

from __future__ import annotations

import secrets

ID_BYTES = 16
MAX_ID_LENGTH = 64
"""Longer than any id this module makes: a longer one in a path is nobody's, without asking."""


def new_id() -> str:
    """A new row id: 128 random bits as 32 hex digits (unguessable, so a session's id can
    appear in URLs and logs without granting anything)."""
    return secrets.token_hex(ID_BYTES)
