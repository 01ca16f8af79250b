"""The API's cache of checked bearer tokens trusts nothing it could have missed."""

from __future__ import annotations

import time

from api.token_cache import TokenCache
from shared.models import User


def _user(user_id: str) -> User:
    return User(id=user_id, name=user_id)


def test_nothing_is_kept_or_served_while_revocations_are_unheard() -> None:
    cache = TokenCache()
    cache.put("vp_a_secret", _user("u1"), None)
    assert cache.get("vp_a_secret") is None
    cache.listening = True
    assert cache.get("vp_a_secret") is None  # not kept from before
    cache.put("vp_a_secret", _user("u1"), None)
    assert cache.get("vp_a_secret") is not None
    cache.listening = False
    assert cache.get("vp_a_secret") is None


def test_a_revocation_forgets_only_that_users_tokens() -> None:
    cache = TokenCache()
    cache.listening = True
    cache.put("vp_a_1", _user("u1"), None)
    cache.put("vp_b_1", _user("u1"), None)
    cache.put("vp_c_2", _user("u2"), None)
    cache.forget_user("u1")
    assert cache.get("vp_a_1") is None and cache.get("vp_b_1") is None
    assert cache.get("vp_c_2") is not None


def test_entries_end_with_the_ttl_or_the_tokens_own_expiry() -> None:
    cache = TokenCache(ttl=60)
    cache.listening = True
    cache.put("vp_a_expired", _user("u1"), time.time() - 1)
    assert cache.get("vp_a_expired") is None
    stale = TokenCache(ttl=0)
    stale.listening = True
    stale.put("vp_a_1", _user("u1"), None)
    time.sleep(0.01)
    assert stale.get("vp_a_1") is None
