"""The WebSocket URL a worker advertises: replicas sharing one VOICEPOOL_WS_PUBLIC_URL
each name their own route through the TLS proxy (deploy/Caddyfile)."""

from __future__ import annotations

import socket

from worker.options import WorkerOptions

REDIS = "redis://-"  # never connected to


def test_public_url_names_this_host_and_port() -> None:
    options = WorkerOptions(REDIS, ws_public_url="wss://voicepool.lan/workers/{host}/ws")
    assert (
        options.advertised_ws_url(8765) == f"wss://voicepool.lan/workers/{socket.gethostname()}/ws"
    )
    options = WorkerOptions(REDIS, ws_public_url="wss://voicepool.lan:{port}/ws")
    assert options.advertised_ws_url(40001) == "wss://voicepool.lan:40001/ws"


def test_public_url_without_placeholders_is_used_as_is() -> None:
    url = "wss://voicepool.lan/ws/{other}"  # other braces are left alone
    assert WorkerOptions(REDIS, ws_public_url=url).advertised_ws_url(8765) == url


def test_without_a_public_url_the_listener_is_advertised() -> None:
    options = WorkerOptions(REDIS, ws_host="127.0.0.1")
    assert options.advertised_ws_url(8765) == "ws://127.0.0.1:8765/ws"
