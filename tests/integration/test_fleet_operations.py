"""Operating the fleet with real processes: drain by API and by SIGTERM, admission, workers."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from arq.constants import job_key_prefix
from arq.jobs import Job

from harness.api import api_client, create_session, wait_for_status
from harness.waiting import eventually
from shared import keys, queue
from shared.connections import arq_pool
from shared.fleet import PROTOCOL

pytestmark = pytest.mark.slow


async def test_drain_by_api_ends_live_sessions_at_the_timeout_and_exits(make_system) -> None:
    # Sessions may wait for a pool whose only worker drains (as where the pool scales from
    # zero); by default they would be refused, no_workers.
    system = make_system(workers=1, capacity=2, VOICEPOOL_ADMIT_WITHOUT_WORKERS="true")
    admin = system.create_user("ops", admin=True)
    user = system.create_user("dana")
    async with api_client(system, admin) as ops, api_client(system, user) as api:
        live = await create_session(api, profile="echo")
        await wait_for_status(api, live["session_id"], {"ready"})

        async def taken() -> dict:
            (worker,) = (await ops.get("/api/workers")).json()
            assert (worker["active"], worker["draining"]) == (1, False)
            return worker

        # The slot shows in the worker's next beat, right after the session is ready.
        worker = await eventually(taken, timeout=2, what="the slot taken")

        assert (await api.get("/api/workers")).status_code == 403  # operators only
        drained = await ops.post(f"/api/workers/{worker['id']}/drain", json={"timeout_s": 2})
        assert drained.status_code == 202 and drained.json()["draining"]

        waiting = await create_session(api, profile="echo")  # not taken by a draining worker
        await asyncio.sleep(0.5)  # a window: the draining worker must not take it meanwhile
        assert (await api.get(f"/api/sessions/{waiting['session_id']}")).json()[
            "status"
        ] == "queued"
        listed = (await ops.get("/api/workers")).json()
        assert listed[0]["draining"] is True
        pools = {p["pool"]: p for p in (await ops.get("/api/pools")).json()}
        assert pools["server"]["capacity"] == 0 and pools["server"]["queued"] == 1

        ended = await wait_for_status(api, live["session_id"], {"ended"}, timeout=6)
        assert ended["reason"] == "worker_draining"
        proc = system.workers[0]
        await eventually(lambda: proc.poll() is not None, timeout=10, what="the worker's exit")
        assert proc.returncode == 0

        # A fresh worker picks up what waited.
        system.start_worker(capacity=2)
        await wait_for_status(api, waiting["session_id"], {"ready"}, timeout=30)
        await api.delete(f"/api/sessions/{waiting['session_id']}")


async def test_sigterm_lets_live_sessions_finish_then_exits(make_system) -> None:
    system = make_system(workers=1, capacity=2, VOICEPOOL_DRAIN_TIMEOUT="60")
    user = system.create_user("erin")
    async with api_client(system, user) as api:
        live = await create_session(api, profile="echo")
        await wait_for_status(api, live["session_id"], {"ready"})
        system.workers[0].send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)  # a window: the worker must not exit while a session is live
        assert system.workers[0].poll() is None  # still serving its live session
        assert (await api.get(f"/api/sessions/{live['session_id']}")).json()["status"] == "ready"

        await api.delete(f"/api/sessions/{live['session_id']}")  # the session finishes
        proc = system.workers[0]
        await eventually(lambda: proc.poll() is not None, timeout=10, what="the worker's exit")
        assert proc.returncode == 0  # long before the 60 s timeout


async def test_a_full_queue_refuses_at_once(make_system) -> None:
    system = make_system(workers=1, capacity=1, VOICEPOOL_MAX_QUEUE_LENGTH="1")
    user = system.create_user("finn")
    async with api_client(system, user) as api:
        first = await create_session(api, profile="echo")
        await wait_for_status(api, first["session_id"], {"ready"})
        await create_session(api, profile="echo")  # waits
        refused = await api.post("/api/sessions", json={"transport": "webrtc"})
        assert refused.status_code == 503
        assert refused.json()["detail"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1


async def test_a_pool_with_no_worker_refuses_until_one_joins(make_system) -> None:
    """No worker: 503 ``no_workers`` at once, not a queued session that expires later; and
    once a worker is up, the next attempt starts."""
    system = make_system(workers=0)
    user = system.create_user("gwen")
    async with api_client(system, user) as api:
        refused = await api.post("/api/sessions", json={"transport": "webrtc"})
        assert refused.status_code == 503
        assert refused.json()["detail"]["code"] == "no_workers"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await api.get("/api/sessions?live=true")).json() == []  # nothing left behind

        system.start_worker(capacity=1)
        system.wait_ready(1)
        session = await create_session(api, profile="echo")
        await wait_for_status(api, session["session_id"], {"ready"})


async def test_many_open_event_streams_do_not_starve_the_api(make_system) -> None:
    """Open streams hold no database connection: 40 of them (pool: 15) and the API still answers."""
    import httpx

    system = make_system(
        workers=0,
        VOICEPOOL_QUEUE_TTL="600",
        VOICEPOOL_MAX_STREAMS_PER_USER="0",
        VOICEPOOL_ADMIT_WITHOUT_WORKERS="true",  # its sessions wait; nothing runs them
    )
    token = system.create_user("watcher")
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(
        base_url=system.api_url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
        timeout=30,
    ) as api:  # fmt: skip
        session = await create_session(api, profile="echo")
        statuses: list[int] = []
        opened = asyncio.Event()

        async def watch() -> None:
            async with api.stream("GET", session["events_url"]) as response:
                statuses.append(response.status_code)
                if len(statuses) == 40:
                    opened.set()
                async for _line in response.aiter_lines():
                    pass

        watchers = [asyncio.create_task(watch()) for _ in range(40)]
        await asyncio.wait_for(opened.wait(), 20)
        assert statuses == [200] * 40
        assert (await api.get("/api/conversations")).status_code == 200
        await api.delete(f"/api/sessions/{session['session_id']}")  # final state closes them
        await asyncio.wait_for(asyncio.gather(*watchers), 20)


async def test_a_pool_that_cannot_take_a_session_spills_to_its_fallback(make_system) -> None:
    """A Jetson pool whose board is down: its sessions start on the server pool instead
    of expiring; once a board is back, they stay on it."""
    system = make_system(
        workers=1,
        capacity=2,
        VOICEPOOL_POOLS="server,jetson",
        VOICEPOOL_POOL_FALLBACKS="jetson=server",
    )
    user = system.create_user("hana")
    async with api_client(system, user) as api:
        spilled = await api.post("/api/sessions", json={"transport": "webrtc", "pool": "jetson"})
        assert spilled.status_code == 202, spilled.text
        assert spilled.json()["pool"] == "server"
        ready = await wait_for_status(api, spilled.json()["session_id"], {"ready"})
        assert ready["worker_id"] in {w["id"] for w in system.live_workers()}  # the server's
        await api.delete(f"/api/sessions/{spilled.json()['session_id']}")

        system.start_worker(capacity=1, pool="jetson")
        system.wait_ready(2)
        stayed = await create_session(api, profile="echo", pool="jetson")
        assert stayed["pool"] == "jetson"
        on = await wait_for_status(api, stayed["session_id"], {"ready"})
        boards = {w["id"] for w in system.live_workers() if w["pool"] == "jetson"}
        assert on["worker_id"] in boards
        await api.delete(f"/api/sessions/{stayed['session_id']}")

    samples = system.metrics(f"{system.api_url}/metrics")
    key = 'voicepool_sessions_spilled_total{pool="jetson",reason="no_workers",to="server"}'
    assert samples[key] == 1


async def test_a_session_queued_too_long_moves_to_the_fallback_in_its_place(
    make_system,
) -> None:
    """`jetson=server:2`: the board is busy, so a Jetson session waits in its queue; after
    2 s it moves to the server pool (which has a free slot), in its place by arrival, and
    its event stream and its record say so."""
    system = make_system(
        workers=0,
        VOICEPOOL_POOLS="server,jetson",
        VOICEPOOL_POOL_FALLBACKS="jetson=server:2",
    )
    system.start_worker(capacity=1, pool="jetson")
    system.start_worker(capacity=1, pool="server")
    system.wait_ready(2)
    boards = {w["id"] for w in system.live_workers() if w["pool"] == "jetson"}
    async with api_client(system, system.create_user("hana")) as api:
        busy = await create_session(api, profile="echo", pool="jetson")  # the board's slot
        on_board = await wait_for_status(api, busy["session_id"], {"ready"})
        assert on_board["worker_id"] in boards
        queued_at = time.monotonic()
        waiting = await create_session(api, profile="echo", pool="jetson")
        assert (waiting["pool"], waiting["status"]) == ("jetson", "queued")
        moved = await wait_for_status(api, waiting["session_id"], {"ready"}, timeout=20)
        assert time.monotonic() - queued_at >= 2  # not before its time
        assert moved["pool"] == "server" and moved["worker_id"] not in boards
        with system.redis as r:
            entries = r.xrange(f"vp:session:{waiting['session_id']}:events")
        states = [json.loads(f["data"]) for _, f in entries if f["type"] == "session.state"]
        assert [(e["state"], e["reason"]) for e in states[:3]] == [
            ("queued", "created"), ("queued", "pool_fallback"), ("starting", "picked_up"),
        ]  # fmt: skip
        assert (states[1]["from_pool"], states[1]["pool"]) == ("jetson", "server")
        for session in (busy, waiting):
            await api.delete(f"/api/sessions/{session['session_id']}")

        async def stored_pool() -> str:
            row = (await api.get(f"/api/sessions/{waiting['session_id']}")).json()
            assert row["status"] == "ended" and row["pool"] == "server", row
            return str(row["pool"])

        await eventually(stored_pool, timeout=10, what="the stored session in pool server")
    samples = system.metrics(f"{system.api_url}/metrics")
    assert (
        samples['voicepool_sessions_spilled_total{pool="jetson",reason="waited",to="server"}'] == 1
    )


async def test_a_worker_of_another_protocol_refuses_to_join(make_system) -> None:
    """API and workers run together when their protocols are equal (shared/fleet.py): a
    worker of another one exits at once, saying why, rather than serve sessions it would
    misread; the API lists its own workers as compatible."""
    system = make_system(workers=1, capacity=1)
    admin = system.create_user("ops", admin=True)
    async with api_client(system, admin) as ops:
        (listed,) = (await ops.get("/api/workers")).json()
        assert (listed["protocol"], listed["compatible"]) == (PROTOCOL, True)
    with system.redis as r:
        assert r.get("vp:protocol") == str(PROTOCOL)  # what the API said when it started
        r.set("vp:protocol", PROTOCOL + 1)  # as an upgraded API would
    newcomer = system.start_worker(capacity=1)
    code = await asyncio.to_thread(newcomer.wait, 60)
    assert code == 1
    assert f"speaks protocol {PROTOCOL} and this fleet's API {PROTOCOL + 1}" in system.log_tail()
    # The worker that was already running sees it too, within a few heartbeats, and
    # drains (nothing to move here), then exits.
    assert await asyncio.to_thread(system.workers[0].wait, 30) == 0
    assert f"and this fleet now {PROTOCOL + 1}: draining" in system.log_tail(200)


async def test_a_start_job_of_another_protocol_is_handed_back_as_it_came(make_system) -> None:
    """A job an API of another protocol queued (a fleet mid-upgrade): the worker doesn't
    run it. It puts it back in its place, still of that protocol, for a worker that speaks
    it, and drains."""
    system = make_system(workers=0, VOICEPOOL_ADMIT_WITHOUT_WORKERS="true")
    async with api_client(system, system.create_user("ivo")) as api:
        session = await create_session(api, profile="echo")
    sid = session["session_id"]
    assert system.redis_server is not None
    arq = await arq_pool(system.redis_server.url)
    try:
        # The API's job, made as a newer one.
        await arq.zrem(keys.queue("server"), sid)
        await arq.delete(job_key_prefix + sid)
        await queue.enqueue_start(arq, sid, "server", job_id=f"{sid}.n", expires_s=60,
                                  place=1.0, protocol=PROTOCOL + 1)  # fmt: skip
        with system.redis as r:
            r.hset(keys.session(sid), "job_id", f"{sid}.n")
        worker = system.start_worker(capacity=1)
        assert await asyncio.to_thread(worker.wait, 60) == 0  # drained and gone
        with system.redis as r:
            state, job_id, created = r.hmget(keys.session(sid), ["state", "job_id", "created_ts"])
            assert state == "queued" and job_id != f"{sid}.n"  # back in the queue, anew
            place = r.zscore(keys.queue("server"), job_id)
            assert place == pytest.approx(float(created) * 1000, abs=1)  # by its arrival
        job = await Job(job_id, arq, _queue_name=keys.queue("server")).info()
        assert job is not None and job.args == (sid, PROTOCOL + 1)  # as it came
    finally:
        await arq.aclose()
    assert "draining (run a voicepool of the API's protocol" in system.log_tail(200)
