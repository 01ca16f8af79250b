"""Log lines and the ``voicepool dev`` banner never carry a credential of a URL."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shared import logs

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        (
            "connecting to redis://:s3cretPassw0rd@127.0.0.1:6379/0 failed",
            "connecting to redis://:***@127.0.0.1:6379/0 failed",
        ),
        (
            "db postgresql://voicepool:hunter22@postgres:5432/voicepool",
            "db postgresql://voicepool:***@postgres:5432/voicepool",
        ),
        (
            "rediss://default:pa@ss:w0rd@cache.example:6380",
            "rediss://default:***@cache.example:6380",
        ),
        ("proxy http://user:pw@proxy.lan:3128/ then", "proxy http://user:***@proxy.lan:3128/ then"),
    ],
)
def test_url_passwords_are_masked(line: str, masked: str) -> None:
    assert logs.redact(line) == masked


@pytest.mark.parametrize(
    "line",
    [
        "redis://127.0.0.1:6379/0",
        "http://127.0.0.1:8000/api/sessions?x=1",
        "mailto user@example.org",
        "ws://worker:8765/ws?token=abc at 12:00",
    ],
)
def test_urls_without_passwords_are_left_alone(line: str) -> None:
    assert logs.redact(line) == line


def _record(message: str, *args: object) -> logging.LogRecord:
    try:
        raise ConnectionError("Error connecting to redis://:inExc3ption@redis:6379/0")
    except ConnectionError:
        exc_info = sys.exc_info()
    return logging.LogRecord("voicepool.test", logging.ERROR, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_the_formatter_masks_urls_in_messages_and_tracebacks(json_lines: bool) -> None:
    record = _record("redis at %s is away", "redis://:fromArgs123@127.0.0.1:6379/0")
    line = logs.RedactingFormatter(json_lines=json_lines).format(record)
    assert "fromArgs123" not in line and "inExc3ption" not in line
    assert "redis://:***@127.0.0.1:6379/0" in line
    assert "redis://:***@redis:6379/0" in line
    if json_lines:
        entry = json.loads(line)
        assert entry["message"] == "redis at redis://:***@127.0.0.1:6379/0 is away"


def test_both_loggers_of_a_process_mask_url_passwords() -> None:
    """The standard library and loguru (Pipecat's), as ``voicepool`` configures them."""
    script = (
        "import logging\n"
        "from loguru import logger\n"
        "from shared import logs\n"
        "logs.configure('INFO', 'text', [])\n"
        "logging.getLogger('std').warning('lost redis://:stdlibPw99@10.0.0.1:6379/0')\n"
        "logger.warning('lost redis://:loguruPw99@10.0.0.1:6379/0')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "stdlibPw99" not in out.stderr and "loguruPw99" not in out.stderr
    assert out.stderr.count("redis://:***@10.0.0.1:6379/0") == 2, out.stderr


def test_the_dev_banner_shows_no_passwords() -> None:
    from voicepool.cli import _banner
    from shared.settings import Settings

    settings = Settings(
        redis_url="redis://:bannerPw123@127.0.0.1:6400/0",  # type: ignore[call-arg]
        database_url="postgresql://vp:dbPw12345@db:5432/vp",  # type: ignore[call-arg]
    )
    banner = _banner(settings, 8000, 2, 4, "vp_token", None)
    assert "bannerPw123" not in banner and "dbPw12345" not in banner
    assert "redis://:***@127.0.0.1:6400/0" in banner
    assert "postgresql+asyncpg://vp:***@db:5432/vp" in banner
