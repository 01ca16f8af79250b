"""``redis+sentinel://`` URLs: what each part means, and what is refused."""

from __future__ import annotations

import pytest

from shared import logs
from shared.connections import SENTINEL_PORT, SentinelUrl, parse_sentinel_url


def test_hosts_service_db_and_passwords() -> None:
    url = "redis+sentinel://:p%40ss@s1:26380,s2,[::1]:26381/voicepool/2?sentinel_password=sp"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=[("s1", 26380), ("s2", SENTINEL_PORT), ("::1", 26381)],
        service="voicepool",
        db=2,
        password="p@ss",
        sentinel_password="sp",
    )
    parsed = parse_sentinel_url("redis+sentinel://s1/mymaster")
    assert parsed is not None and (parsed.db, parsed.password, parsed.sentinel_password) == (
        0, None, None,
    )  # fmt: skip
    assert "p@ss" not in repr(parse_sentinel_url(url))  # options and settings get logged


def test_other_urls_are_not_sentinel_ones() -> None:
    assert parse_sentinel_url("redis://:pw@127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    "url", ["redis+sentinel://s1:26379", "redis+sentinel://s1/svc/x", "redis+sentinel:///svc"]
)
def test_a_url_without_hosts_or_service_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def test_both_passwords_are_masked_in_logs() -> None:
    url = "redis+sentinel://:data-pw@s1:26379/svc/0?sentinel_password=sentinel-pw"
    shown = logs.mask_query_secrets(logs.redact(url))
    assert "data-pw" not in shown and "sentinel-pw" not in shown
