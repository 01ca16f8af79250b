"""Control messages between the API and a worker (real redis-server): what is sent is
what is read, the reply reaches the sender, and anything else is refused."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from api.errors import ApiError
from api.signals import MOVE_CHECK_S, WorkerSignals
from shared import control, keys
from shared.lifecycle import Reason

MESSAGES: list[control.ControlMessage] = [
    control.Offer(session_id="s1", payload=control.OfferBody(sdp="v=0\r\n", pc_id="pc-1")),
    control.Ice(
        session_id="s1",
        payload=control.IceBody(
            pc_id="pc-1", candidates=[control.IceCandidate(candidate="candidate:1", sdp_mid="0")]
        ),
    ),
    control.End(session_id="s1", payload=control.EndBody(reason=Reason.REVOKED)),
    control.Drain(payload=control.DrainBody(timeout=12.5)),
    control.Participant(
        session_id="s1", payload=control.ParticipantBody(user_name="ana", user_id="u1")
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
async def test_each_kind_arrives_as_sent_and_its_reply_comes_back(redis, message) -> None:
    reply_key = await control.send(redis, "w1", message)
    # A list for a worker that died lapses.
    assert 0 < await redis.ttl(keys.worker_signals("w1")) <= control.SIGNAL_LIST_TTL_S
    raw = await control.take(redis, "w1", 1)
    assert raw is not None
    received = control.parse(raw)
    assert received == message and type(received) is type(message)
    # The wire shape older workers and APIs speak: id, kind, session_id, payload.
    assert set(json.loads(raw)) <= {"id", "kind", "session_id", "payload"}

    await control.answer(redis, received.id, control.Reply(ok=True, result={"n": 1}))
    got = await control.wait_reply(redis, [reply_key], 1)
    assert got is not None and got == (reply_key, control.Reply(ok=True, result={"n": 1}))


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"id": "x", "kind": "reboot", "payload": {}}',
        '{"id": "x", "kind": "offer", "payload": {}}',  # no SDP
        '{"id": "x", "kind": "end", "payload": {"reason": "because"}}',  # not a reason
    ],
)
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(ValidationError):
        control.parse(raw)


async def test_no_reply_within_the_wait_is_none(redis) -> None:
    assert await control.wait_reply(redis, [keys.reply("nobody")], 0.05) is None


async def test_a_request_to_a_worker_the_call_left_ends_without_waiting_it_out(redis) -> None:
    """A worker killed with an offer on its list never answers; once the call has left it
    (recovering), the API says so at once instead of waiting for its reply timeout."""
    signals = WorkerSignals(redis, timeout=10)
    checks = 0

    async def moved() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 2  # the reaper moves the call while the API waits

    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        await signals.request("dead-worker", MESSAGES[0], moved=moved)
    assert refused.value.code == "not_ready" and refused.value.status_code == 409
    assert time.monotonic() - started < 4 * MOVE_CHECK_S + 1

    quick = WorkerSignals(redis, timeout=0.3)
    with pytest.raises(ApiError) as timed_out:
        await quick.request("dead-worker", MESSAGES[0])
    assert timed_out.value.code == "worker_timeout"
