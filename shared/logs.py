"""Process logging: text for people, JSON lines for production, secrets masked in both.

Pipecat logs through loguru; both it and the standard library go through the
same redaction, so an API key or a bearer token that ends up in a message
(an exception quoting a URL or a header, say) is masked before it is written,
and so is the password of any URL (``redis://:***@host:6379/0``).

Lines carry fields besides their message: ``session_id``, ``worker_id`` and
``pool`` where they are known. Code binds them for a scope (``log_fields``);
every line logged in it, by either logger, and in the asyncio tasks created in
it (a task copies the context it is created in), carries them: JSON keys of
their own, or ``session=… worker=… pool=…`` at the end of a text line. A
record's own fields (``extra={...}`` of the standard library, loguru's
``bind``/``contextualize``) come on top. Field values are masked like messages.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
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
# Query parameters that carry credentials (a WebSocket URL's ?token=, OAuth's
# access_token, an api_key): masked in the paths uvicorn logs.
QUERY_SECRET = re.compile(
    r"(?i)([?&](?:[a-z0-9_.-]*token|[a-z0-9_.-]*key|[a-z0-9_.-]*password|[a-z0-9_.-]*secret)=)"
    r"[^&#\s\"']*"
)
_extra_secrets: list[str] = []

_FIELDS: ContextVar[Mapping[str, object]] = ContextVar(
    "voicepool_log_fields", default=MappingProxyType({})
)
FIRST_FIELDS = ("session_id", "worker_id", "pool")  # in this order, before any other
_TEXT_NAMES = {"session_id": "session", "worker_id": "worker"}
_JSON_KEYS = frozenset({"ts", "level", "logger", "message", "exception"})  # not fields
# What every LogRecord has; any other attribute came with extra={...}. uvicorn's
# color_message (a copy of the message with colour codes) is no field either.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


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


def mask_query_secrets(text: str) -> str:
    """``/x?token=abc&n=1`` → ``/x?token=[redacted]&n=1``, for any QUERY_SECRET name."""
    return QUERY_SECRET.sub(r"\1[redacted]", text)


# --- fields ---------------------------------------------------------------------------


def bind_log_fields(**fields: object) -> Token[Mapping[str, object]]:
    """Add fields to every line logged from here on in this context, and in the
    asyncio tasks created from it; a field given None is left out. Returns the
    token ``unbind_log_fields`` takes to go back to the fields before."""
    bound = {**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _FIELDS.set(MappingProxyType(bound))


def unbind_log_fields(token: Token[Mapping[str, object]]) -> None:
    _FIELDS.reset(token)


@contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    """``bind_log_fields`` for the duration of a ``with`` block."""
    token = bind_log_fields(**fields)
    try:
        yield
    finally:
        _FIELDS.reset(token)


def bound_log_fields() -> dict[str, object]:
    """The fields bound in the current context."""
    return dict(_FIELDS.get())


class LateField:
    """A field's value for tasks created before it is known (a pipeline built ahead of its
    session, ``worker.warm``): bound as ``log_fields(session_id=late)``, left out of every
    line until ``late.value`` is set, shown from then on, in every task that copied it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: str | None = None


def _fields(own: Mapping[str, object]) -> dict[str, object]:
    """The bound fields and a record's own (which win), masked, FIRST_FIELDS first."""
    merged = {
        k: v.value if isinstance(v, LateField) else v for k, v in {**_FIELDS.get(), **own}.items()
    }
    ordered = [k for k in FIRST_FIELDS if k in merged] + [
        k for k in merged if k not in FIRST_FIELDS
    ]
    return {k: _field_value(merged[k]) for k in ordered if merged[k] is not None}


def _field_value(value: object) -> object:
    if isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _text_suffix(fields: Mapping[str, object]) -> str:
    """`` session=… worker=… pool=…``: the fields of a text line, compactly."""
    parts = []
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text)
        parts.append(f"{_TEXT_NAMES.get(key, key)}={text}")
    return "".join(" " + part for part in parts)


def _json_line(core: dict[str, Any], fields: Mapping[str, object], exception: str | None) -> str:
    entry = core | {k: v for k, v in fields.items() if k not in _JSON_KEYS}
    if exception is not None:
        entry["exception"] = exception
    return json.dumps(entry)


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields of a standard library record: bound ones and its ``extra={...}``."""
    return _fields({k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES})


ACCESS_LOGGERS = ("uvicorn.access", "api.access")
"""Who writes access lines: uvicorn, and the API's middleware (``api.middleware``) in its
shape, after each answer."""


def _is_access(record: logging.LogRecord) -> bool:
    """An access line: args (client_addr, method, full_path, http_version, status)."""
    return (
        record.name in ACCESS_LOGGERS and isinstance(record.args, tuple) and len(record.args) == 5
    )


def _access_fields(record: logging.LogRecord) -> dict[str, object]:
    assert isinstance(record.args, tuple)
    client, method, path, http_version, status = record.args
    return {
        "method": method,
        "path": path,
        "status": status,
        "client": client,
        "http_version": http_version,
    }


def _unquery(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of a uvicorn record or an access line with the credentials of query strings
    masked.

    uvicorn logs request paths with their query strings: its access lines, and
    WebSocket handshakes (``"WebSocket /ws?token=…" [accepted]``).
    """
    if not (record.name.startswith("uvicorn") or record.name in ACCESS_LOGGERS):
        return record
    copy = logging.makeLogRecord(record.__dict__)
    if _is_access(record):
        assert isinstance(record.args, tuple)
        client, method, path, http_version, status = record.args
        copy.args = (client, method, mask_query_secrets(str(path)), http_version, status)
    else:
        copy.msg, copy.args = mask_query_secrets(record.getMessage()), ()
    return copy


class RedactingFormatter(logging.Formatter):
    def __init__(self, json_lines: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        record = _unquery(record)
        if not self.json_lines:
            return redact(super().format(record))
        core: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = _record_fields(record)
        if _is_access(record):
            fields |= _fields(_access_fields(record))
        exception = redact(self.formatException(record.exc_info)) if record.exc_info else None
        return _json_line(core, fields, exception)

    def formatMessage(self, record: logging.LogRecord) -> str:  # the text format's line
        return super().formatMessage(record) + _text_suffix(_record_fields(record))


def configure(level: str, fmt: str, secrets: list[str | None]) -> None:
    for secret in secrets:
        add_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Through the root handler (run uvicorn with log_config=None to keep it so).
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True

    from loguru import logger

    def loguru_sink(message: Any) -> None:
        record = message.record
        text = redact(str(record["message"]))
        trace = ""
        if record["exception"] is not None:
            trace = "\n" + redact("".join(_format_exception(record["exception"])))
        fields = _fields(record["extra"])  # bound fields, and logger.bind()/contextualize()
        if fmt == "json":
            core = {
                "ts": round(record["time"].timestamp(), 3),
                "level": record["level"].name,
                "logger": record["name"],
                "message": text + trace,
            }
            line = _json_line(core, fields, None)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["time"].timestamp()))
            suffix = _text_suffix(fields)
            line = f"{stamp} {record['level'].name} {record['name']}: {text}{suffix}{trace}"
        sys.stderr.write(line + "\n")

    logger.remove()
    logger.add(loguru_sink, level=level.upper())


def _format_exception(exception: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exception.type, exception.value, exception.traceback)
