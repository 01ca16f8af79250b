"""ICE settings and TURN credentials: what is refused at start, what a peer is handed.

Whether coturn accepts the credentials is tested against a real coturn in
tests/integration/test_turn.py; here, the shape and the settings' rules."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import ValidationError

from shared import ice
from shared.settings import Settings
from worker.options import WorkerOptions
from worker.transports.smallwebrtc import SmallWebRTCSessionTransport


def test_a_credential_is_the_turn_rest_api_scheme() -> None:
    username, password = ice.turn_credential("s3cret", "user-1", 600, now=1_800_000_000)
    assert username == "1800000600:user-1"
    expected = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_users_get_stun_as_is_and_turn_with_a_credential_of_their_own() -> None:
    settings = Settings(
        ice_servers="stun:stun.test:3478",
        turn_urls="turn:turn.test:3478?transport=udp,turns:turn.test:5349?transport=tcp",
        turn_secret="s3cret",
        turn_ttl=3600,
    )
    stun, turn = ice.for_user(settings, "u1")
    assert stun == ice.IceServer(urls=["stun:stun.test:3478"])
    assert turn.urls == ["turn:turn.test:3478?transport=udp", "turns:turn.test:5349?transport=tcp"]
    assert turn.username is not None and turn.username.endswith(":user-u1")
    assert "s3cret" not in turn.model_dump_json()
    other = ice.for_user(settings, "u2")[1]
    assert other.credential != turn.credential  # bound to who it was minted for


def test_without_turn_there_is_nothing_to_mint() -> None:
    assert ice.for_user(Settings(), "u1") == []


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"turn_urls": "turn:turn.test:3478"}, "TURN_URLS needs TURN_SECRET"),
        ({"turn_urls": "stun:turn.test:3478", "turn_secret": "s"}, "not a turn or turns URL"),
        ({"ice_servers": "turn.test:3478"}, "not a stun or stuns or turn or turns URL"),
        ({"webrtc_ice_policy": "relay"}, "needs a TURN server"),
        ({"turn_urls": "turn:t:3478", "turn_secret": "s", "turn_ttl": 5}, "greater than or equal"),
        ({"webrtc_udp_ports": "40000"}, "should match pattern"),
        ({"webrtc_udp_ports": "500-600"}, "LOW-HIGH within 1024-65535"),
        ({"webrtc_udp_ports": "41000-40000"}, "LOW <= HIGH"),
    ],
)
def test_incomplete_ice_settings_are_refused_at_start(settings, complaint) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**settings)


def test_a_worker_makes_its_own_credential_per_session() -> None:
    settings = Settings(
        redis_url="redis://-", turn_urls="turn:turn.test:3478", turn_secret="s3cret"
    )
    options = WorkerOptions.from_settings(settings, pool="server")
    assert "s3cret" not in repr(options)  # options are logged
    [server] = SmallWebRTCSessionTransport("s1", options)._ice_servers()
    assert server.username is not None and server.username.endswith(f":worker-{options.worker_id}")
    assert server.credential == ice.turn_credential(
        "s3cret", f"worker-{options.worker_id}", options.turn_ttl,
        now=int(server.username.split(":")[0]) - options.turn_ttl,
    )[1]  # fmt: skip


def test_a_port_range_reaches_the_worker_as_numbers() -> None:
    settings = Settings(redis_url="redis://-", webrtc_udp_ports="40000-40199")
    assert WorkerOptions.from_settings(settings).webrtc_udp_ports == (40000, 40199)
    assert WorkerOptions.from_settings(Settings(redis_url="redis://-")).webrtc_udp_ports is None
