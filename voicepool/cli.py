"""The ``voicepool`` command: run the whole system, the API, a worker; manage users; export.

Imports of the API and the worker happen inside each command, so a worker
host does not load the web stack and ``voicepool users`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared import logs
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from shared.connections import EmbeddedRedis

# --- users and export -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Any]:
    """A database session on an up-to-date schema, closed afterwards."""
    from shared.store import Store, migrate_async

    await migrate_async(settings.sqlalchemy_url)
    store = Store(settings.sqlalchemy_url)
    try:
        async with store.session() as db:
            yield db
    finally:
        await store.aclose()


async def _named_user(db: Any, name: str) -> Any:
    from shared.users import get_user_by_name

    user = await get_user_by_name(db, name)
    if user is None:
        raise ValueError(f"no user named {name!r}")
    return user


def _expiry(days: float | None) -> Any:
    from shared.models import utcnow

    return utcnow() + timedelta(days=days) if days else None


async def _users_create(settings: Settings, name: str, admin: bool, days: float | None) -> str:
    from shared.users import create_user, issue_token

    async with _database(settings) as db:
        user = await create_user(db, name, role="admin" if admin else "user")
        return (await issue_token(db, user, expires_at=_expiry(days))).token


async def _users_token(settings: Settings, name: str, days: float | None) -> str:
    from shared.users import issue_token

    async with _database(settings) as db:
        user = await _named_user(db, name)
        return (await issue_token(db, user, expires_at=_expiry(days))).token


async def _users_list(settings: Settings) -> list[dict[str, str]]:
    from sqlmodel import select

    from shared.models import User

    async with _database(settings) as db:
        users = (await db.exec(select(User).order_by(User.name))).all()
        return [{"name": u.name, "role": u.role, "id": u.id} for u in users]


async def _dev_token(settings: Settings) -> str:
    """A fresh token for the local ``dev`` admin (created on first run)."""
    from shared.users import create_user, get_user_by_name, issue_token

    async with _database(settings) as db:
        user = await get_user_by_name(db, "dev") or await create_user(db, "dev", role="admin")
        return (await issue_token(db, user, expires_at=None)).token


async def _users_revoke(
    settings: Settings, name: str, token_id: str | None
) -> tuple[int, int | None]:
    """Revoke one token of a user, or all of them, then sign the user out everywhere.

    Returns (tokens revoked, live sessions ended); the second is None without
    VOICEPOOL_REDIS_URL, where browser sign-ins and live sessions are kept.
    Even with ``--token`` every browser session and live session of the user
    ends: neither records which token it came from.
    """
    from sqlmodel import select

    from shared.connections import redis_client
    from shared.live import LiveSessions
    from shared.models import ApiToken, utcnow
    from shared.users import sign_out_everywhere

    async with _database(settings) as db:
        user = await _named_user(db, name)
        query = select(ApiToken).where(ApiToken.user_id == user.id)
        if token_id:
            query = query.where(ApiToken.id == token_id)
        tokens = [t for t in (await db.exec(query)).all() if t.revoked_at is None]
        for token in tokens:
            token.revoked_at = utcnow()
            db.add(token)
        await db.commit()  # before Redis: see sign_out_everywhere
        user_id = user.id
    if settings.redis_url is None:
        return len(tokens), None
    redis = redis_client(settings.redis_url)
    try:
        live = LiveSessions(
            redis,
            heartbeat_ttl=settings.heartbeat_ttl,
            stream_retention=settings.stream_retention,
            stream_maxlen=settings.session_stream_maxlen,
        )
        return len(tokens), await sign_out_everywhere(redis, live, user_id)
    finally:
        await redis.aclose()


async def _export(settings: Settings, conversation_id: str, fmt: str) -> str:
    from shared.history import (
        conversation_events,
        conversation_sessions,
        export_json,
        export_markdown,
    )
    from shared.models import Conversation

    async with _database(settings) as db:
        conversation = await db.get(Conversation, conversation_id)
        if conversation is None:
            raise SystemExit(f"no conversation {conversation_id}")
        sessions = await conversation_sessions(db, conversation_id)
        events = await conversation_events(db, conversation_id)
    if fmt == "md":
        return export_markdown(conversation, sessions, events)
    return json.dumps(export_json(conversation, sessions, events), indent=2)


# --- processes ----------------------------------------------------------------------


def _run_api(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from api.deps import behind_proxies
    from api.main import create_app
    from shared import http_server

    config = uvicorn.Config(
        # X-Forwarded-For/-Proto from VOICEPOOL_TRUSTED_PROXIES only, and the app still
        # sees the socket peer (see behind_proxies). uvicorn's own handling is off: it
        # would trust 127.0.0.1 (or FORWARDED_ALLOW_IPS) and hide the peer.
        behind_proxies(create_app(settings), settings.trusted_proxies),
        host=host,
        port=port,
        proxy_headers=False,
        forwarded_allow_ips="",
        # Request heads are bounded (one unfinished past 16 KiB is refused) with either
        # parser; neither times out a slow head: see README, Security.
        http=http_server.bounded_http() if settings.api_http == "httptools" else "h11",
        h11_max_incomplete_event_size=http_server.MAX_HEAD_BYTES,
        timeout_keep_alive=5,  # idle connections between requests close after this
        log_level=settings.log_level.lower(),
        # uvicorn's lines go through the root handler that logs.configure set up: JSON
        # with method/path/status/client fields under VOICEPOOL_LOG_FORMAT=json, and
        # masked (query tokens too) in both formats. Access lines are written once each
        # answer is out, by api.middleware.RequestMetricsMiddleware, in uvicorn's shape.
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    http_server.run(config)


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed, as uvicorn's ``loop="auto"`` picks it for the API.

    A worker's sessions all run on its one loop, so the loop's own cost is paid per audio
    frame: with asyncio's pure-Python loop, its socket writes, callbacks and selector
    calls were a third of a busy worker's samples (py-spy, 50 echo sessions).
    """
    try:
        import uvloop
    except ImportError:  # not built for this platform: asyncio's own loop
        return None
    return uvloop.new_event_loop


def _run_worker(
    settings: Settings, pool: str | None, capacity: int | None, metrics_port: int | None
) -> None:
    from worker.options import WorkerOptions
    from worker.worker import VoicepoolWorker

    options = WorkerOptions.from_settings(
        settings, pool=pool, capacity=capacity, metrics_port=metrics_port
    )
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        code = runner.run(VoicepoolWorker(options).run())
    if code:
        sys.exit(code)  # a supervised task failed for good: let systemd/compose restart us


def _dev(settings: Settings, port: int, workers: int, capacity: int) -> None:
    """Everything on this machine: embedded Redis, SQLite, the API and N workers."""
    from shared.connections import EmbeddedRedis

    busy = _busy_ports(settings.api_host, [port, *(port + 1 + i for i in range(workers))])
    if busy:  # before anything starts or any token is printed: the one thing to fix
        raise SystemExit(
            f"error: port {', '.join(map(str, busy))} on {settings.api_host} is in use "
            f"(another voicepool dev?); choose another: voicepool dev --port N "
            f"(make dev PORT=N); it uses N for the API and N+1… for the workers' metrics"
        )
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis = None
    env = dict(os.environ)
    if settings.redis_url is None:
        redis = EmbeddedRedis(data_dir / "redis").start()
        env["VOICEPOOL_REDIS_URL"] = redis.url
    if settings.database_url is None:
        env["VOICEPOOL_DATABASE_URL"] = f"sqlite+aiosqlite:///{data_dir / 'voicepool.db'}"
    child_settings = Settings(_env_file=None, **_from_env(env))
    token = asyncio.run(_dev_token(child_settings))

    base = [sys.executable, "-m", "voicepool"]
    api = subprocess.Popen([*base, "api", "--port", str(port)], env=env)

    def start_worker(i: int) -> subprocess.Popen[bytes]:
        worker_args = ["worker", "--capacity", str(capacity), "--metrics-port", str(port + 1 + i)]
        return subprocess.Popen([*base, *worker_args], env=env)

    pool = [start_worker(i) for i in range(workers)]
    children = [api, *pool]
    print(_banner(child_settings, port, workers, capacity, token, redis), flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and api.poll() is None:
            for i, worker in enumerate(pool):
                code = worker.poll()
                if code is None:
                    continue
                if code != 0:  # a worker that failed: the whole system stops, loudly
                    print(f"worker {i + 1} exited with code {code}; stopping", flush=True)
                    stopping = True
                    break
                # A drained worker (the Operators page, or SIGTERM) exits 0 once its calls
                # have moved or ended; the rest of the system goes on, with a fresh worker.
                print(f"worker {i + 1} drained and exited; starting a fresh one", flush=True)
                pool[i] = start_worker(i)
                children = [api, *pool]
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)  # workers end their sessions at once
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
        if redis:
            redis.stop()
        print("voicepool stopped.", flush=True)


def _busy_ports(host: str, ports: list[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket() as probe:
            # As uvicorn binds: a port only in TIME_WAIT is free, a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def _banner(
    settings: Settings,
    port: int,
    workers: int,
    capacity: int,
    token: str,
    redis: EmbeddedRedis | None,
) -> str:
    """What ``voicepool dev`` started. URLs are shown without their passwords: terminals
    get recorded and screen-shared; the embedded Redis's is in its auth.conf (mode 0600)."""
    redis_url = logs.redact(settings.redis_url or "")
    where = f" (embedded; password in {redis.auth_file})" if redis and redis.password else ""
    from api.frontend import DEFAULT_DIST

    built = ((settings.frontend_dir or DEFAULT_DIST) / "index.html").is_file()
    web_app = "" if built else "  (not built: it needs Node.js and npm; then make dev)"
    docs = "docs at /docs" if settings.api_docs else "docs off"
    metrics = f", metrics at {settings.metrics_bind}" if settings.metrics_bind else ""
    return (
        f"\nvoicepool is starting\n"
        f"  Web app    http://{settings.api_host}:{port}/{web_app}\n"
        f"  API        http://{settings.api_host}:{port}/api  ({docs}{metrics})\n"
        f"  Redis      {redis_url}{where}\n"
        f"  Database   {logs.redact(settings.sqlalchemy_url)}\n"
        f"  Workers    {workers} x {capacity} slots, pool {settings.default_pool!r}, "
        f"metrics on ports {port + 1}-{port + workers}\n"
        f"  Login      Authorization: Bearer {token}\n"
        f"Press Ctrl-C to stop.\n"
    )


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    """Settings' keyword arguments from VOICEPOOL_* variables (strings, for Settings to parse)."""
    return {
        k.removeprefix("VOICEPOOL_").lower(): v
        for k, v in env.items()
        if k.startswith("VOICEPOOL_") and not k.endswith("_API_KEY")
    }


def backup_database(settings: Settings, path: str) -> str:
    """A consistent copy of the store at ``path``, taken while the API writes; says what
    it did. Restore: stop the API, put the copy in place (SQLite) or ``pg_restore`` it."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        import sqlite3

        source = url.split(":///", 1)[1]
        with (
            contextlib.closing(sqlite3.connect(source)) as live,
            contextlib.closing(sqlite3.connect(path)) as copy,
        ):
            live.backup(copy)  # page by page, under SQLite's own locks: a consistent copy
        return f"backed up {source} to {path} (SQLite)"
    if shutil.which("pg_dump") is None:
        raise RuntimeError("pg_dump is not installed (Debian: postgresql-client)")
    # The password goes in pg_dump's environment, not its arguments (which `ps` shows).
    parts = urlsplit("postgresql://" + url.split("://", 1)[1])
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}@" if parts.username else ""
    target = parts._replace(netloc=user + netloc).geturl()
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    try:
        subprocess.run(["pg_dump", "--format=custom", "--file", path, target], check=True, env=env)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"pg_dump failed (exit {exc.returncode})") from None
    return f"backed up the PostgreSQL database to {path} (pg_dump custom format)"


def openapi_schema(settings: Settings) -> str:
    """The API's OpenAPI schema as stable JSON. Nothing is connected to: the app is only
    built (a placeholder Redis URL when none is set)."""
    from api.main import create_app

    app = create_app(settings.model_copy(update={"redis_url": settings.redis_url or "redis://-"}))
    return json.dumps(app.openapi(), indent=2, sort_keys=True)


# --- argument parsing -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicepool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything on this machine")
    dev.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    dev.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    dev.add_argument("--capacity", type=int, default=None, help="sessions per worker (default 4)")

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)

    worker = sub.add_parser("worker", help="run a worker process")
    worker.add_argument("--pool", default=None, help="pool to serve (default from settings)")
    worker.add_argument("--capacity", type=int, default=None, help="concurrent sessions")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")

    sub.add_parser("migrate", help="bring the database schema up to date")

    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user and print a token (shown once)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--expires-days", type=float, default=None)
    users_sub.add_parser("list", help="list users")
    token = users_sub.add_parser("token", help="issue another token for a user (shown once)")
    token.add_argument("name")
    token.add_argument("--expires-days", type=float, default=None)
    revoke = users_sub.add_parser(
        "revoke",
        help="revoke a user's tokens (all, or --token ID); signs them out of the web app "
        "and ends their live sessions (reason revoked)",
    )
    revoke.add_argument("name")
    revoke.add_argument("--token", default=None, help="the token id (the part after vp_)")

    backup = sub.add_parser(
        "backup",
        help="copy the database to PATH while everything runs (SQLite: an online backup; "
        "PostgreSQL: pg_dump's custom format)",
    )
    backup.add_argument("path")

    sub.add_parser(
        "openapi",
        help="print the API's OpenAPI schema (JSON); the web app's types are made from it",
    )

    doctor = sub.add_parser(
        "doctor",
        help="check this host before it joins the fleet as a worker, and recommend --capacity "
        "from a short benchmark (exit 1 when a check fails)",
    )
    doctor.add_argument("--pool", default=None, help="the worker's --pool (default from settings)")
    doctor.add_argument(
        "--capacity", type=_positive_int, default=None, help="the worker's --capacity"
    )
    doctor.add_argument(
        "--metrics-port", type=int, default=None, help="the worker's --metrics-port"
    )
    doctor.add_argument(
        "--seconds", type=float, default=5.0, help="benchmark length in seconds (default 5)"
    )
    doctor.add_argument(
        "--sessions",
        type=_positive_int,
        default=4,
        help="echo sessions the benchmark runs (default 4)",
    )
    doctor.add_argument("--skip-benchmark", action="store_true", help="only the checks")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    export = sub.add_parser("export", help="print a conversation as JSON or Markdown")
    export.add_argument("conversation_id")
    export.add_argument("--format", choices=("json", "md"), default="json")
    return parser


def _sentinel_password(url: str | None) -> str | None:
    from shared.connections import parse_sentinel_url

    sentinel = parse_sentinel_url(url) if url else None
    return sentinel.sentinel_password if sentinel else None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    logs.configure(
        settings.log_level,
        settings.log_format,
        [
            settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
            settings.daily_api_key.get_secret_value() if settings.daily_api_key else None,
            settings.metrics_token.get_secret_value() if settings.metrics_token else None,
            settings.turn_secret.get_secret_value() if settings.turn_secret else None,
            # arq prints its RedisSettings with the password as a plain field, not in a URL.
            urlsplit(settings.redis_url).password if settings.redis_url else None,
            _sentinel_password(settings.redis_url),
        ],
    )
    match args.command:
        case "dev":
            _dev(
                settings,
                args.port or settings.api_port,
                args.workers,
                args.capacity or settings.worker_capacity,
            )
        case "api":
            _run_api(settings, args.host or settings.api_host, args.port or settings.api_port)
        case "worker":
            _run_worker(settings, args.pool, args.capacity, args.metrics_port)
        case "openapi":
            print(openapi_schema(settings))
        case "backup":
            try:
                print(backup_database(settings, args.path))
            except (OSError, RuntimeError) as exc:
                raise SystemExit(f"error: {exc}") from None
        case "migrate":
            from shared.store import migrate

            migrate(settings.sqlalchemy_url)
            print("schema is up to date")
        case "users" if args.users_command == "create":
            try:
                token = asyncio.run(
                    _users_create(settings, args.name, args.admin, args.expires_days)
                )
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            print(token)
            print("Store this token now: it is not shown again.", file=sys.stderr)
        case "users" if args.users_command == "token":
            try:
                print(asyncio.run(_users_token(settings, args.name, args.expires_days)))
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            print("Store this token now: it is not shown again.", file=sys.stderr)
        case "users" if args.users_command == "revoke":
            try:
                count, ended = asyncio.run(_users_revoke(settings, args.name, args.token))
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            print(f"revoked {count} token(s) of {args.name}")
            if ended is None:
                raise SystemExit(
                    f"error: {args.name} is still signed in to the web app and their live "
                    "sessions run on: set VOICEPOOL_REDIS_URL to the API's Redis (voicepool "
                    "dev prints it) and run this again"
                )
            print(f"signed {args.name} out everywhere; ended {ended} live session(s)")
        case "users":
            for user in asyncio.run(_users_list(settings)):
                print(f"{user['name']:<24} {user['role']:<6} {user['id']}")
        case "export":
            print(asyncio.run(_export(settings, args.conversation_id, args.format)))
        case "doctor":
            from voicepool.doctor import DoctorRequest, doctor

            request = DoctorRequest(
                pool=args.pool,
                capacity=args.capacity,
                metrics_port=args.metrics_port,
                seconds=args.seconds,
                sessions=args.sessions,
                skip_benchmark=args.skip_benchmark,
            )
            raise SystemExit(doctor(settings, request, as_json=args.json))


if __name__ == "__main__":
    main()
