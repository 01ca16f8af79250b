"""WebSocket tokens: signed by the API, checked by the worker's listener without Redis."""

from __future__ import annotations

import time

from shared import ws_tokens


def test_a_token_opens_its_session_once_on_its_listener() -> None:
    key, listener = ws_tokens.new_key(), ws_tokens.new_listener()
    gate = ws_tokens.TokenGate(key, listener)
    token = ws_tokens.mint(key, "s1", listener, 60)
    assert ws_tokens.session_of(token) == "s1"
    assert gate.admit(token)
    assert not gate.admit(token)  # used
    assert gate.admit(ws_tokens.mint(key, "s1", listener, 60))  # a fresh one


def test_what_a_gate_refuses() -> None:
    key, listener = ws_tokens.new_key(), ws_tokens.new_listener()
    gate = ws_tokens.TokenGate(key, listener)
    good = ws_tokens.mint(key, "s1", listener, 60)
    body, _, mac = good.rpartition(".")
    session, expires, nonce = body.split(".")
    later = f"{int(expires, 16) + 60_000:x}"
    refused = {
        "expired": ws_tokens.mint(key, "s1", listener, -0.001),
        "another key": ws_tokens.mint(ws_tokens.new_key(), "s1", listener, 60),
        "another listener": ws_tokens.mint(key, "s1", ws_tokens.new_listener(), 60),
        "another session's name": f"s2.{expires}.{nonce}.{mac}",
        "a later expiry": f"{session}.{later}.{nonce}.{mac}",
        "a mangled signature": f"{body}.{mac[::-1]}",
        "no signature": body,
        "not hex": f"{session}.zz.{nonce}.{mac}",
        "non-ASCII": f"{body}.{'é' * len(mac)}",
        "too long": f"{good}{'x' * ws_tokens.MAX_TOKEN_CHARS}",
        "empty": "",
    }
    for what, token in refused.items():
        assert not gate.admit(token), what
    assert not ws_tokens.TokenGate("", listener).admit(good)  # a session made without a key
    assert gate.admit(good)  # none of that used it up


def test_a_gate_forgets_nonces_once_their_tokens_expired(monkeypatch) -> None:
    key, listener = ws_tokens.new_key(), ws_tokens.new_listener()
    gate = ws_tokens.TokenGate(key, listener)
    short = [ws_tokens.mint(key, "s1", listener, 1) for _ in range(3)]
    assert all(gate.admit(token) for token in short)
    later = time.time() + 2  # past the short tokens' expiry
    monkeypatch.setattr(time, "time", lambda: later)
    assert gate.admit(ws_tokens.mint(key, "s1", listener, 60))
    assert len(gate._used) == 1  # the expired ones were let go when it admitted the last
    assert not any(gate.admit(token) for token in short)  # and they stay refused: expired
