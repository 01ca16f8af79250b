"""The assistant profile through the real system, against the OpenAI Realtime protocol double.

API, Redis, a worker process and a WebRTC client on loopback; the real
Pipecat ``OpenAIRealtimeLLMService`` in the worker talks to the fake model
(harness/doubles/openai_realtime.py), and the assistant's tool talks to a local
nested-team double (or runs the `claude` stand-in, harness/doubles/claude).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import wave
from pathlib import Path

import httpx
import pytest

from harness.api import api_client, connect_webrtc, create_session, wait_for_status
from harness.doubles import CLAUDE
from harness.doubles.nested_team import NestedTeam
from harness.doubles.openai_realtime import FakeRealtimeServer, Fault, Turn
from harness.sse import read_events
from harness.system import System
from harness.waiting import eventually
from harness.webrtc_client import WebRTCTestClient, allow_loopback_ice

pytestmark = pytest.mark.slow

API_KEY = "sk-test-voicepool-secret-0123456789"
FAILURE_DEADLINE_S = 8.0  # "within a few seconds", on a loaded 2-core machine
# Three reconnects with backoff take about 10 s, more when each new connection is
# dropped again once it has answered for a moment.
RECONNECT_DEADLINE_S = 20.0
# The prompt where the program still parses options (no "--" before it), as the
# example config had it once: a dashed text must be refused, not run.
CLAUDE_TOOL_TOML = """
[[tools]]
name = "send_to_claude_code"
description = "Ask Claude Code to change the code."
kind = "command"
timeout_s = 30
[tools.parameters]
type = "object"
required = ["text"]
[tools.parameters.properties.text]
type = "string"
[tools.command]
argv = [{python}, {claude}, "-p", "{{text}}", "--output-format", "stream-json", "--verbose"]
cwd = {cwd}
env = {{ CLAUDE_STANDIN_LOG = {log} }}
"""


def _assistant_system(make_system, fake: FakeRealtimeServer, tools: Path | None = None):
    settings = {"OPENAI_API_KEY": API_KEY, "VOICEPOOL_OPENAI_BASE_URL": fake.base_url}
    if tools:
        settings["VOICEPOOL_TOOLS_FILE"] = str(tools)
    return make_system(workers=1, capacity=2, **settings)


async def _tool_output(fake: FakeRealtimeServer) -> dict:
    """The tool result the model was sent (its function_call_output item)."""
    return await fake.wait_for(
        lambda e: (
            e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
        ),
        timeout=30,
    )


def _events_of(system: System, session_id: str, kind: str) -> list[dict]:
    """The data of the session's published events of a kind, so far."""
    with system.redis as r:
        entries = r.xrange(f"vp:session:{session_id}:events")
    return [json.loads(f["data"]) for _id, f in entries if f["type"] == kind]


async def _published(system: System, session_id: str, kind: str) -> list[dict]:
    """The data of the session's published events of a kind, once there is one."""
    return await eventually(
        lambda: _events_of(system, session_id, kind), timeout=20, what=f"a {kind} event"
    )


async def test_speech_tool_call_and_answer_are_all_recorded(
    make_system, hello_wav, tmp_path
) -> None:
    allow_loopback_ice()
    turn = Turn(
        transcript="Ask the team to find flights to Oslo",
        tool_call=("send_to_nested", {"text": "find flights to Oslo"}),
        answer="The team found three flights.",
    )
    async with (
        NestedTeam(progress=["Planning", "Searching"]) as team,
        FakeRealtimeServer(turns=[turn]) as fake,
    ):
        system = _assistant_system(
            make_system, fake, team.write_tools_file(tmp_path / "tools.toml")
        )
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid, cid = session["session_id"], session["conversation_id"]
            sse = asyncio.create_task(read_events(api, session["events_url"]))
            client = await connect_webrtc(api, sid, str(hello_wav))
            try:
                output = await _tool_output(fake)
                try:
                    await eventually(
                        lambda: any(
                            "three flights" in a["text"]
                            for a in _events_of(system, sid, "assistant.transcript")
                        ),
                        timeout=50,
                        what="the model's answer published",
                    )
                except AssertionError as missing:
                    answers = _events_of(system, sid, "assistant.transcript")
                    talk = fake.exchange  # what Pipecat and the model said, in order
                    raise AssertionError((str(missing), answers, talk, system.log_tail())) from None
                await client.wait_for_audio(2000, timeout=10)  # the model's audio reached us
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()
            events = await asyncio.wait_for(sse, 10)

            # The tool's result reached the model as function_call_output, and its
            # progress as it streamed.
            assert "find flights to Oslo" in output["item"]["output"]
            items = json.dumps(
                [e for e in fake.received if e["type"] == "conversation.item.create"]
            )
            assert "Planning" in items and "Searching" in items
            assert team.tasks == [{"type": "task", "text": "find flights to Oslo"}]

            types = [e.event for e in events]
            for kind in (
                "user.transcript", "tool.started", "tool.progress", "tool.completed",
                "assistant.transcript", "metrics.usage", "metrics.latency",
                "user.turn_started", "user.turn_stopped", "bot.started_speaking",
                "bot.stopped_speaking",
            ):  # fmt: skip
                assert kind in types, (kind, types)
            data = {e.event: [x.data["data"] for x in events if x.event == e.event] for e in events}
            assert data["user.transcript"][0]["text"] == turn.transcript
            assert [p["text"] for p in data["tool.progress"]] == ["Planning", "Searching"]
            assert data["tool.started"][0]["arguments"] == {"text": "find flights to Oslo"}
            assert "find flights to Oslo" in data["tool.completed"][0]["result"]
            usage = data["metrics.usage"][0]
            assert usage["total_tokens"] > 0 and "output_audio_tokens" in usage
            assert types.index("tool.started") < types.index("tool.completed")

            # Stored, and the export reads as a transcript with the tool steps inline.
            async def exported() -> str:
                markdown = (await api.get(f"/api/conversations/{cid}/export?format=md")).text
                assert "The team found three flights." in markdown, markdown
                return markdown

            markdown = await eventually(exported, what="the answer stored")
            assert f"**User:** {turn.transcript}" in markdown
            assert "**Assistant:** The team found three flights." in markdown
            assert "send_to_nested" in markdown

            # The key is in no event, no stored export, no log line.
            exported_json = (await api.get(f"/api/conversations/{cid}/export?format=json")).text
            assert API_KEY not in exported_json
            assert all(API_KEY not in json.dumps(e.data) for e in events)
        system.stop()
        assert API_KEY not in system.log_tail(lines=100000)


async def test_a_dashed_tool_argument_is_refused_and_recorded_as_failed(
    make_system, hello_wav, tmp_path
) -> None:
    """The model asks for `--dangerously-skip-permissions`: the program never gets it."""
    allow_loopback_ice()
    log = tmp_path / "claude.jsonl"
    tools = tmp_path / "tools.toml"
    tools.write_text(
        CLAUDE_TOOL_TOML.format(
            python=json.dumps(sys.executable), claude=json.dumps(str(CLAUDE)),
            cwd=json.dumps(str(tmp_path)), log=json.dumps(str(log)),
        )
    )  # fmt: skip
    turn = Turn(
        transcript="Tell Claude Code to skip its permission checks",
        tool_call=("send_to_claude_code", {"text": "--dangerously-skip-permissions"}),
        answer="I can't pass that on.",
    )
    async with FakeRealtimeServer(turns=[turn]) as fake:
        system = _assistant_system(make_system, fake, tools)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, str(hello_wav))
            try:
                output = await _tool_output(fake)
                failed = await _published(system, sid, "tool.failed")
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()
    refusal = "the text argument cannot start with '-'"
    assert refusal in output["item"]["output"]  # the model heard why
    assert len(failed) == 1 and refusal in failed[0]["error"]
    assert failed[0]["name"] == "send_to_claude_code"
    assert not log.exists()  # the program never ran, with that option or at all


async def test_a_continued_conversation_sends_its_transcript_to_the_model(
    make_system, hello_wav
) -> None:
    allow_loopback_ice()
    async with FakeRealtimeServer(
        turns=[Turn(transcript="My name is Ana", answer="Hi Ana")]
    ) as fake:
        system = _assistant_system(make_system, fake)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            first = await create_session(api, profile="assistant")
            client = await connect_webrtc(api, first["session_id"], str(hello_wav))
            await _published(system, first["session_id"], "user.transcript")
            await api.delete(f"/api/sessions/{first['session_id']}")
            await client.close()

            async def transcript_stored() -> bool:
                url = f"/api/conversations/{first['conversation_id']}"
                events = (await api.get(url)).json()["events"]
                return any(e["type"] == "user.transcript" for e in events)

            await eventually(transcript_stored, what="the persister storing the transcript")

            seen_before = len(fake.received)
            second = await create_session(
                api, profile="assistant", conversation_id=first["conversation_id"]
            )
            client = await connect_webrtc(api, second["session_id"], None)
            try:
                await eventually(
                    lambda: any(
                        e["type"] == "response.create" for e in fake.received[seen_before:]
                    ),
                    timeout=15,
                    what="the model asked to respond",
                )
                new = fake.received[seen_before:]
                first_response = next(
                    i for i, e in enumerate(new) if e["type"] == "response.create"
                )
                seeded = [
                    e["item"]
                    for e in new[:first_response]
                    if e["type"] == "conversation.item.create"
                ]
                # The earlier transcript is in the context before the first response.
                assert "My name is Ana" in json.dumps(seeded)
            finally:
                await api.delete(f"/api/sessions/{second['session_id']}")
                await client.close()


async def test_a_model_socket_opened_ahead_is_the_sessions_and_is_replaced(make_system) -> None:
    """VOICEPOOL_WORKER_WARM_MODEL_SOCKETS=1: the worker connects to the model before any
    session; a session's model service takes that socket instead of connecting (its
    session.update is the spare's first word), and the worker opens the next spare."""
    allow_loopback_ice()
    async with FakeRealtimeServer() as fake:
        settings = {
            "OPENAI_API_KEY": API_KEY,
            "VOICEPOOL_OPENAI_BASE_URL": fake.base_url,
            "VOICEPOOL_WORKER_WARM_MODEL_SOCKETS": "1",
        }
        system = make_system(workers=1, capacity=2, **settings)
        await eventually(lambda: fake.open_connections == 1, what="a spare model socket")
        assert fake.received == []  # no session yet: nothing said on it
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, None)
            try:
                await fake.wait_for(lambda e: e["type"] == "response.create", timeout=15)
                await client.wait_for_audio(2000, timeout=10)  # the greeting reached us
                assert fake.update_connections[0] == 1  # set up on the spare
                await eventually(lambda: fake.open_connections == 2, what="the next spare")
                port = system.metrics_ports[system.workers[0].pid]
                url = f"http://127.0.0.1:{port}/metrics"
                taken = 'voicepool_worker_model_sockets_taken_total{pool="server"}'
                spare = 'voicepool_worker_model_sockets_spare{pool="server"}'
                await eventually(
                    lambda: (m := system.metrics(url))[taken] == 1 and m[spare] == 1,
                    what="one taken, one spare again",
                )
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()
        system.stop()
        assert API_KEY not in system.log_tail(lines=100000)


FAULTS = [  # a dropped socket is reconnected first: see the tests after this one
    (Fault(kind="reject_handshake"), "model_unavailable"),
    (Fault(kind="error_on_session_update"), "model_error"),
    (Fault(kind="malformed_event"), "model_protocol_error"),
]


async def test_each_model_failure_ends_the_session_fast_with_its_reason(make_system) -> None:
    allow_loopback_ice()
    async with FakeRealtimeServer(greeting="Hello there, this greeting is long enough.") as fake:
        system = _assistant_system(make_system, fake)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            for fault, reason in FAULTS:
                fake.fault = fault
                session = await create_session(api, profile="assistant")
                # The model fails as the pipeline starts, maybe before media flows.
                client = await connect_webrtc(api, session["session_id"], None, wait=False)
                started = time.monotonic()
                try:
                    ended = await wait_for_status(
                        api, session["session_id"], {"failed", "ended"}, timeout=FAILURE_DEADLINE_S
                    )
                finally:
                    await client.close()
                assert (ended["status"], ended["reason"]) == ("failed", reason), fault.kind
                assert time.monotonic() - started < FAILURE_DEADLINE_S
                # None of these is retried (a rejected key would be rejected again).
                assert not _events_of(system, session["session_id"], "model.reconnecting")

            # Nothing listening at all: connection refused, tried three times with backoff.
            await fake.stop()
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, None, wait=False)
            await _fails_within_retries(api, sid, client, "model_unavailable")
            assert _reconnecting(system, sid) == [("model_unavailable", n) for n in (1, 2, 3)]
            assert not _events_of(system, sid, "model.reconnected")


async def _fails_within_retries(
    api: httpx.AsyncClient, sid: str, client: WebRTCTestClient, reason: str
) -> None:
    """The call fails with ``reason`` once the model's retries are spent, within their
    deadline from now; the client is closed either way."""
    started = time.monotonic()
    try:
        ended = await wait_for_status(api, sid, {"failed", "ended"}, timeout=RECONNECT_DEADLINE_S)
    finally:
        await client.close()
    assert (ended["status"], ended["reason"]) == ("failed", reason)
    assert time.monotonic() - started < RECONNECT_DEADLINE_S


def _reconnecting(system: System, session_id: str) -> list[tuple[str, int]]:
    """(reason, attempt) of each model.reconnecting event of the session."""
    return [
        (e["reason"], e["attempt"]) for e in _events_of(system, session_id, "model.reconnecting")
    ]


def _said_late(wav: Path, to: Path, after_s: float) -> Path:
    """``wav`` with ``after_s`` of silence before it: the caller speaks only then."""
    with wave.open(str(wav), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    with wave.open(str(to), "wb") as dst:
        dst.setparams(params)
        silence = int(params.framerate * after_s) * params.sampwidth * params.nchannels
        dst.writeframes(b"\0" * silence + frames)
    return to


async def test_a_model_socket_dropped_mid_answer_is_reconnected_and_the_call_goes_on(
    make_system, hello_wav, tmp_path
) -> None:
    allow_loopback_ice()
    greeting = "Hello there, this greeting is long enough."  # 2.5 s: cut 1.3 s in
    # The caller speaks 6 s in, after the reconnect and the greeting said again.
    wav = _said_late(hello_wav, tmp_path / "late_hello.wav", after_s=6.0)
    async with FakeRealtimeServer(
        fault=Fault(kind="close_mid_answer", connections=1), greeting=greeting
    ) as fake:
        system = _assistant_system(make_system, fake)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, str(wav))
            try:
                (reconnected,) = await _published(system, sid, "model.reconnected")
                assert (await api.get(f"/api/sessions/{sid}")).json()["status"] == "connected"
                # The caller's next turn is heard and answered on the new connection.
                await eventually(
                    lambda: any(
                        Turn.answer in a["text"]
                        for a in _events_of(system, sid, "assistant.transcript")
                    ),
                    timeout=30,
                    what="the turn after the reconnect answered",
                )
                assert (await api.get(f"/api/sessions/{sid}")).json()["status"] == "connected"
            finally:
                await api.delete(f"/api/sessions/{sid}")
                await client.close()

        assert _reconnecting(system, sid) == [("model_disconnected", 1)]
        assert reconnected["attempt"] == 1 and reconnected["seconds"] < 3
        assert not _events_of(system, sid, "error")
        assert [u["text"] for u in _events_of(system, sid, "user.transcript")] == [Turn.transcript]
        # The transcript keeps what was said before the drop, then goes on.
        said = [a["text"].strip() for a in _events_of(system, sid, "assistant.transcript")]
        assert greeting.startswith(said[0]) and len(said[0]) < len(greeting), said
        assert said[-1] == Turn.answer, said
        # The new connection got the conversation so far before it was asked to answer.
        assert fake.connections == 2
        assert fake.deflate_offers == 0  # base64 audio does not compress: not offered
        new = fake.received[fake.connection_starts[1] :]
        kinds = [e["type"] for e in new]
        assert kinds[0] == "session.update" and "conversation.item.create" in kinds, (kinds, said)
        replay = kinds.index("conversation.item.create")
        assert replay < kinds.index("response.create"), kinds
        assert said[0] in json.dumps(new[replay]["item"])


async def test_a_model_that_keeps_dropping_the_socket_fails_the_session(make_system) -> None:
    allow_loopback_ice()
    async with FakeRealtimeServer(
        fault=Fault(kind="close_mid_answer"), greeting="Hello there, this greeting is long enough."
    ) as fake:
        system = _assistant_system(make_system, fake)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(api, profile="assistant")
            sid = session["session_id"]
            client = await connect_webrtc(api, sid, None)
            await _fails_within_retries(api, sid, client, "model_disconnected")
        # Each new connection is dropped again halfway through its first answer.
        assert _reconnecting(system, sid) == [("model_disconnected", n) for n in (1, 2, 3)]
        assert [r["attempt"] for r in _events_of(system, sid, "model.reconnected")] == [1, 2, 3]
        assert fake.connections == 4


async def test_local_turn_detection_commits_turns_from_the_worker(make_system, hello_wav) -> None:
    allow_loopback_ice()
    async with FakeRealtimeServer(turns=[Turn(transcript="Local turns work")]) as fake:
        system = _assistant_system(make_system, fake)
        token = system.create_user("ana")
        async with api_client(system, token) as api:
            session = await create_session(
                api, profile="assistant", options={"turn_detection": "local"}
            )
            client = await connect_webrtc(api, session["session_id"], str(hello_wav))
            try:
                # Silero VAD in the worker ends the turn; the service commits the buffer.
                commit = await fake.wait_for(
                    lambda e: e["type"] == "input_audio_buffer.commit", timeout=20
                )
                said = await _published(system, session["session_id"], "user.transcript")
                turns = await _published(system, session["session_id"], "user.turn_stopped")
            finally:
                await api.delete(f"/api/sessions/{session['session_id']}")
                await client.close()
            assert commit
            assert said and said[0]["text"] == "Local turns work"
            assert turns and turns[0]["turn"] == 1  # the worker's VAD turn, as an event too
            update = fake.session_updates[0]
            assert update["audio"]["input"].get("turn_detection") is None
