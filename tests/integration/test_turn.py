"""What lets a browser's WebRTC reach a worker through a firewall.

TURN with time-limited credentials, against a real coturn (``use-auth-secret``) on
loopback: the credentials voicepool mints are the ones coturn accepts, and a call whose
two ends may only use relay candidates carries the echo through the TURN server. And a
worker whose media ports are held to a range a firewall opens."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from harness.api import api_client, wait_for_status
from harness.turn import TurnServer
from harness.waiting import eventually
from harness.webrtc_client import WebRTCTestClient, allow_loopback_ice
from shared.connections import free_port
from shared.ice import turn_credential

ECHO_RMS = 300  # the fixture's speech is ~1000-1800 RMS; silence is ~0
CANDIDATE_PORT = re.compile(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) ")

needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="needs Debian's coturn (make test-deps)"
)


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[TurnServer]:
    server = TurnServer.start(tmp_path, secrets.token_hex(16))
    yield server
    server.stop()


async def _relay_candidates(server: TurnServer, username: str, password: str) -> list[str]:
    """The relay candidates coturn grants these credentials (none: refused)."""
    connection = aioice.Connection(
        ice_controlling=True,
        turn_server=("127.0.0.1", server.port),
        turn_username=username,
        turn_password=password,
        transport_policy=aioice.TransportPolicy.RELAY,
        use_ipv6=False,
    )
    try:
        await asyncio.wait_for(connection.gather_candidates(), 10)
        return [f"{c.host}:{c.port}" for c in connection.local_candidates if c.type == "relay"]
    finally:
        await connection.close()


@needs_coturn
async def test_coturn_takes_our_credentials_and_refuses_forged_or_expired_ones(turn) -> None:
    assert await _relay_candidates(turn, *turn_credential(turn.secret, "user-a", 60))
    # Another secret, and one that expired 10 s ago: no relay for either.
    assert not await _relay_candidates(turn, *turn_credential("guessed", "user-a", 60))
    assert not await _relay_candidates(turn, *turn_credential(turn.secret, "user-a", -10))
    username, password = turn_credential(turn.secret, "user-a", 60)
    assert not await _relay_candidates(turn, username.replace("user-a", "user-b"), password)


def _candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"a=candidate:.* typ (\w+)", sdp))


@needs_coturn
@pytest.mark.slow
async def test_a_relay_only_call_echoes_through_turn(make_system, turn, hello_wav) -> None:
    system = make_system(
        workers=1,
        capacity=1,
        VOICEPOOL_TURN_URLS=turn.url,
        VOICEPOOL_TURN_SECRET=turn.secret,
        VOICEPOOL_TURN_TTL="600",
        VOICEPOOL_WEBRTC_ICE_POLICY="relay",  # the worker: relay candidates only
    )
    async with api_client(system, system.create_user("alice")) as api:
        config = (await api.get("/api/config")).json()
        created = await api.post("/api/sessions", json={"profile": "echo"})
        session = created.json()
        connect = (await api.post(session["connect_url"])).json()
        # The same TURN server in both answers, each with a credential of its own minted for
        # the user; nothing of the secret.
        for answer in (config, connect):
            [server] = answer["ice_servers"]
            assert server["urls"] == [turn.url]
            assert re.fullmatch(r"\d+:user-\S+", server["username"])
            assert turn.secret not in str(answer)

        [server] = connect["ice_servers"]
        ice = RTCIceServer(server["urls"], server["username"], server["credential"])
        peer = WebRTCTestClient(
            str(hello_wav),
            configuration=RTCConfiguration(
                iceServers=[ice], iceTransportPolicy=RTCIceTransportPolicy.RELAY
            ),
        )

        async def send_offer(offer: dict[str, Any]) -> dict[str, Any]:
            answer = await api.post(session["offer_url"], json=offer)
            assert answer.status_code == 200, answer.text
            return answer.json()

        try:
            answer = await peer.connect(send_offer)
            # Both ends offer only relay candidates: media can take no other way.
            assert _candidate_types(peer.pc.localDescription.sdp) == {"relay"}
            assert _candidate_types(answer["sdp"]) == {"relay"}
            await peer.wait_connected(timeout=20)
            await wait_for_status(api, session["session_id"], {"connected"})
            await peer.wait_for_audio(min_rms=ECHO_RMS, timeout=20)
            echoed_s = peer.received_seconds()
        finally:
            await api.delete(f"/api/sessions/{session['session_id']}")
            await peer.close()
        await wait_for_status(api, session["session_id"], {"ended"})

    # coturn saw both ends allocate, each with its own credential: the user's and the
    # worker's (made by the worker from the shared secret).
    log = turn.log_text()
    allocated = set(re.findall(r"user <\d+:([^>]+)>: incoming packet ALLOCATE processed, s", log))
    assert any(u.startswith("user-") for u in allocated), allocated
    assert any(u.startswith("worker-") for u in allocated), allocated

    # Audio went through both relays, each way: the caller's speech to the worker, the
    # echo back (the fixture's ~1.3 s at Opus' ~30-50 kbit/s is several kB).
    def relayed() -> dict[str, int]:
        by_kind = {"user": 0, "worker": 0}
        for who, received in turn.relayed_from_peers().items():
            by_kind[who.split("-", 1)[0]] += received
        assert min(by_kind.values()) > 5_000, by_kind
        return by_kind

    by_kind = await eventually(relayed, timeout=10, what="coturn's usage lines")
    print(f"echo through TURN: {echoed_s:.1f} s of audio back; relayed in bytes: {by_kind}")


@pytest.mark.slow
async def test_a_worker_held_to_a_port_range_takes_its_calls_there(make_system, hello_wav) -> None:
    allow_loopback_ice()
    low = 40000 + free_port() % 20000  # a range of its own; some of it may be taken
    system = make_system(workers=1, capacity=2, VOICEPOOL_WEBRTC_UDP_PORTS=f"{low}-{low + 9}")
    async with api_client(system, system.create_user("alice")) as api:
        peers, ports = [], []
        try:
            for _ in range(2):  # two calls at once: a port each
                session = (await api.post("/api/sessions", json={"profile": "echo"})).json()
                peer = WebRTCTestClient(str(hello_wav))
                peers.append(peer)

                async def send_offer(offer: dict[str, Any], url=session["offer_url"]) -> dict:
                    answer = await api.post(url, json=offer)
                    assert answer.status_code == 200, answer.text
                    return answer.json()

                answer = await peer.connect(send_offer)
                ports += [
                    int(p)
                    for p in re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) ", answer["sdp"])
                ]
                await peer.wait_connected(timeout=20)
                await peer.wait_for_audio(min_rms=ECHO_RMS, timeout=20)
        finally:
            for peer in peers:
                await peer.close()
    assert len(set(ports)) == 2, ports
    assert all(low <= port <= low + 9 for port in ports), (low, ports)
