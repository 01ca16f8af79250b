"""Log lines and the ``voicepool dev`` banner never carry a credential of a URL; log
lines carry the session, worker and pool they are about as fields."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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
    from shared.settings import Settings
    from voicepool.cli import _banner

    settings = Settings(
        redis_url="redis://:bannerPw123@127.0.0.1:6400/0",
        database_url="postgresql://vp:dbPw12345@db:5432/vp",
    )
    banner = _banner(settings, 8000, 2, 4, "vp_token", None)
    assert "bannerPw123" not in banner and "dbPw12345" not in banner
    assert "redis://:***@127.0.0.1:6400/0" in banner
    assert "postgresql+asyncpg://vp:***@db:5432/vp" in banner


# --- fields ---------------------------------------------------------------------------

Lines = Callable[[], list[dict[str, Any]]]
TOKEN = "vp_0123456789abcdef_fieldSecret99"  # the shape of a voicepool bearer token


@pytest.fixture
def configure_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Lines]]:
    """``configure_logs(fmt, level="INFO")`` configures this process's logging as
    ``voicepool`` does, to the captured stderr, and returns what reads the lines written
    since (JSON lines parsed, text lines as {"line": ...}). Logging is put back afterwards.
    Call it in the test itself: pytest replaces the captured stderr between a test's setup
    and its call."""
    from loguru import logger

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved_uvicorn = [(u.handlers[:], u.propagate, u.level) for u in uvicorn_loggers]
    logger.remove()  # its sinks write to streams of before this test's capture

    def configure(fmt: str, level: str = "INFO") -> Lines:
        logs.configure(level, fmt, [])

        def lines() -> list[dict[str, Any]]:
            out = capsys.readouterr().err.splitlines()
            if fmt == "json":
                return [json.loads(line) for line in out]
            return [{"line": line} for line in out if line[:1].isdigit()]

        return lines

    yield configure
    root.handlers[:], level = saved
    root.setLevel(level)
    for u, (handlers, propagate, u_level) in zip(uvicorn_loggers, saved_uvicorn, strict=True):
        u.handlers[:], u.propagate = handlers, propagate
        u.setLevel(u_level)
    logger.remove()
    assert sys.__stderr__ is not None  # None only without a console (pythonw)
    logger.add(sys.__stderr__)  # loguru's default sink


def _by_message(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["message"]: line for line in lines}


def test_json_lines_of_both_loggers_carry_the_bound_fields(
    configure_logs: Callable[..., Lines],
) -> None:
    from loguru import logger

    json_lines = configure_logs("json")

    std = logging.getLogger("voicepool.test")
    with logs.log_fields(worker_id="host-server-7", pool="server"):
        std.info("worker line")
        with logs.log_fields(session_id="s-123"):
            std.info("stdlib session line")
            logger.info("loguru session line")
        logger.info("loguru worker line")
    std.info("outside")
    lines = _by_message(json_lines())
    session = {"session_id": "s-123", "worker_id": "host-server-7", "pool": "server"}
    assert lines["stdlib session line"].items() >= session.items()
    assert lines["loguru session line"].items() >= session.items()
    assert lines["loguru session line"]["logger"] == __name__
    for message in ("worker line", "loguru worker line"):
        assert "session_id" not in lines[message]
        assert lines[message]["worker_id"] == "host-server-7"
        assert lines[message]["pool"] == "server"
    assert not {"session_id", "worker_id", "pool"} & lines["outside"].keys()


async def test_tasks_created_in_the_scope_carry_its_fields(
    configure_logs: Callable[..., Lines],
) -> None:
    from loguru import logger

    json_lines = configure_logs("json")

    async def talk(name: str) -> None:
        await asyncio.sleep(0)  # log from the task, after whoever created it went on
        logging.getLogger("voicepool.test").info("%s stdlib", name)
        logger.info(f"{name} loguru")

    with logs.log_fields(session_id="s-in-task"):
        inside = asyncio.create_task(talk("inside"))
    outside = asyncio.create_task(talk("outside"))
    await asyncio.gather(inside, outside)
    lines = _by_message(json_lines())
    assert lines["inside stdlib"]["session_id"] == "s-in-task"
    assert lines["inside loguru"]["session_id"] == "s-in-task"
    assert "session_id" not in lines["outside stdlib"]
    assert "session_id" not in lines["outside loguru"]


async def test_a_late_field_shows_from_when_it_is_known_in_tasks_made_before(
    configure_logs: Callable[..., Lines],
) -> None:
    """As a pipeline built ahead of its session (worker/warm.py): its tasks are made
    before the session is known, and their lines carry its id once it is."""
    from loguru import logger

    json_lines = configure_logs("json")
    late = logs.LateField()
    bound = asyncio.Event()

    async def talk() -> None:
        logging.getLogger("voicepool.test").info("before stdlib")
        logger.info("before loguru")
        await bound.wait()
        logging.getLogger("voicepool.test").info("after stdlib")
        logger.info("after loguru")

    with logs.log_fields(session_id=late, pool="server"):
        task = asyncio.create_task(talk())
    await asyncio.sleep(0.01)
    late.value = "s-late"
    bound.set()
    await task
    lines = _by_message(json_lines())
    for name in ("before stdlib", "before loguru"):
        assert "session_id" not in lines[name] and lines[name]["pool"] == "server"
    for name in ("after stdlib", "after loguru"):
        assert lines[name]["session_id"] == "s-late"


async def test_pipecats_lines_in_a_session_carry_its_id(
    configure_logs: Callable[..., Lines],
) -> None:
    """As SessionRunner runs a pipeline: Pipecat creates its tasks (the processors' and
    the runner's) from the session's task, whose fields they inherit."""
    from loguru import logger
    from pipecat.frames.frames import EndFrame, Frame, StartFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    json_lines = configure_logs("json", "DEBUG")

    class Announce(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, StartFrame):
                logger.info("the pipeline started")
            await self.push_frame(frame, direction)

    async def session() -> None:
        worker = PipelineWorker(Pipeline([Announce()]))
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(worker)
        await worker.queue_frame(EndFrame())
        await runner.run()

    with logs.log_fields(session_id="s-pipecat", worker_id="w-1", pool="server"):
        task = asyncio.create_task(session())
    await asyncio.wait_for(task, 30)
    lines = json_lines()
    started = next(line for line in lines if line["message"] == "the pipeline started")
    assert started["session_id"] == "s-pipecat" and started["pool"] == "server"
    pipecats = [line for line in lines if line["logger"].startswith("pipecat.")]
    assert pipecats and all(line.get("session_id") == "s-pipecat" for line in pipecats)


def test_a_records_own_fields_come_on_top(configure_logs: Callable[..., Lines]) -> None:
    from loguru import logger

    json_lines = configure_logs("json")

    std = logging.getLogger("voicepool.test")
    with logs.log_fields(worker_id="w-1", session_id="s-bound"):
        std.warning("reaped", extra={"session_id": "s-extra", "attempt": 2})
        logger.bind(session_id="s-bind").info("bound")
        with logger.contextualize(turn=3):
            logger.info("contextualized")
    lines = _by_message(json_lines())
    assert lines["reaped"]["session_id"] == "s-extra" and lines["reaped"]["attempt"] == 2
    assert lines["reaped"]["worker_id"] == "w-1"
    assert lines["bound"]["session_id"] == "s-bind"
    assert lines["contextualized"]["turn"] == 3
    assert lines["contextualized"]["session_id"] == "s-bound"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_in_field_values_are_masked(configure_logs: Callable[..., Lines], fmt: str) -> None:
    from loguru import logger

    lines = configure_logs(fmt)
    with logs.log_fields(session_id=f"s {TOKEN}", pool="redis://:fieldPw123@10.0.0.1:6379/0"):
        logging.getLogger("voicepool.test").info("stdlib", extra={"url": f"?t={TOKEN}"})
        logger.bind(header=f"Bearer {TOKEN}").info("loguru")
    written = lines()
    assert len(written) == 2
    text = json.dumps(written)
    assert "fieldSecret99" not in text and "fieldPw123" not in text
    if fmt == "json":
        stdlib, loguru = _by_message(written)["stdlib"], _by_message(written)["loguru"]
        assert stdlib["session_id"] == "s [redacted]" == loguru["session_id"]
        assert stdlib["pool"] == "redis://:***@10.0.0.1:6379/0"
        assert stdlib["url"] == "?t=[redacted]"
        assert loguru["header"] == "Bearer [redacted]"
    else:  # session=… pool=… at the end of the line, quoted where they hold a space
        assert written[0]["line"].endswith(
            'stdlib session="s [redacted]" pool=redis://:***@10.0.0.1:6379/0 url="?t=[redacted]"'
        )
        assert 'loguru session="s [redacted]"' in written[1]["line"]


async def test_the_apis_access_lines_are_json_with_their_query_tokens_masked(
    configure_logs: Callable[..., Lines], monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn as ``voicepool api`` runs it (its very arguments), serving a stand-in app
    behind the API's request middleware, which writes the access lines: one per request,
    after its answer, uvicorn's own (off) none."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import api.main
    from api.middleware import RequestMetricsMiddleware
    from shared import http_server
    from shared.connections import free_port
    from shared.settings import Settings
    from voicepool import cli

    json_lines = configure_logs("json")

    async def hello(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi", status_code=201)

    stand_in = RequestMetricsMiddleware(
        Starlette(routes=[Route("/{path:path}", hello, methods=["GET"])])
    )
    run: list[uvicorn.Config] = []
    monkeypatch.setattr(api.main, "create_app", lambda _settings: stand_in)
    monkeypatch.setattr(http_server, "run", run.append)
    cli._run_api(Settings(_env_file=None), "127.0.0.1", free_port())

    config = run[0]
    server = http_server.QuietServer(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), serving.result()
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{config.port}/api/ws?token=tok123456&n=1&access_token=at99999"
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 201
            await client.get(f"http://127.0.0.1:{config.port}/api/x/{TOKEN}")
    finally:
        server.exit()
        await asyncio.wait_for(serving, 10)
    written = json_lines()
    access = [line for line in written if line["logger"] == "api.access"]
    assert len(access) == 2, written
    assert access[0]["method"] == "GET" and access[0]["status"] == 201
    assert access[0]["path"] == "/api/ws?token=[redacted]&n=1&access_token=[redacted]"
    assert access[0]["client"].startswith("127.0.0.1:")
    assert access[0]["http_version"] == "1.1"
    assert "/api/ws?token=[redacted]&n=1&access_token=[redacted]" in access[0]["message"]
    assert access[1]["path"] == "/api/x/[redacted]"
    uvicorns = json.dumps([line for line in written if line["logger"] != "httpx"])
    assert "tok123456" not in uvicorns and "at99999" not in uvicorns
    assert "fieldSecret99" not in uvicorns
    assert any(line["logger"] == "uvicorn.error" for line in written)  # its other lines too
