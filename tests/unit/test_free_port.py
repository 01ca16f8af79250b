"""free_port() stays out of the range the kernel hands out, and passes over a port in use."""

from __future__ import annotations

import itertools
import socket

import pytest

from shared import connections
from shared.connections import free_port


def test_a_picked_port_is_below_the_ephemeral_range_and_free() -> None:
    floor = connections._ephemeral_floor()
    ports = [free_port() for _ in range(50)]
    assert all(connections._PICKED_FROM <= port < floor for port in ports), ports
    assert len(set(ports)) == len(ports)  # a walk, not a draw that repeats
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free indeed


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    start = free_port()  # the walk starts here, and this port is held
    monkeypatch.setattr(connections, "_picks", itertools.count(start - connections._PICKED_FROM))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", start))
        busy.listen()
        assert free_port() != start  # the next free one (start + 1, unless that is taken too)
