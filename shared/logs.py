"""Process logging: text for people, JSON lines for production, secrets masked in both.

Pipecat logs through loguru; both it and the standard library go through the
same redaction, so an API key or a bearer token that ends up in a message
(an exception quoting a URL or a header, say) is masked before it is written,
and so is the password of any URL (``redis://:***@host:6379/0``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Bearer tokens of voicepool, OpenAI-style keys, and Authorization headers.
SECRET_PATTERNS = [
    re.compile(r"vp_[0-9a-f]{16}_[A-Za-z0-9_-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
]
# The password of any scheme://user:password@host URL (Redis, PostgreSQL, a proxy):
# up to the last "@" before the path, so a password with a raw "@" is masked whole.
URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s/]*@")
_extra_secrets: list[str] = []


def add_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears (configured API keys)."""
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.append(value)


def redact(text: str) -> str:
    for secret in _extra_secrets:
        text = text.replace(secret, "[redacted]")
    text = URL_PASSWORD.sub(r"\1***@", text)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class RedactingFormatter(logging.Formatter):
    def __init__(self, json_lines: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            return redact(super().format(record))
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: str, fmt: str, secrets: list[str | None]) -> None:
    for secret in secrets:
        add_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)

    from loguru import logger

    def loguru_sink(message: Any) -> None:
        record = message.record
        text = redact(str(record["message"]))
        if record["exception"] is not None:
            text += "\n" + redact("".join(_format_exception(record["exception"])))
        if fmt == "json":
            line = json.dumps(
                {
                    "ts": round(record["time"].timestamp(), 3),
                    "level": record["level"].name,
                    "logger": record["name"],
                    "message": text,
                }
            )
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["time"].timestamp()))
            line = f"{stamp} {record['level'].name} {record['name']}: {text}"
        sys.stderr.write(line + "\n")

    logger.remove()
    logger.add(loguru_sink, level=level.upper())


def _format_exception(exception: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exception.type, exception.value, exception.traceback)
