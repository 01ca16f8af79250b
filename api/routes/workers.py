"""Operators' view of the fleet: workers, pools, and draining a worker (admin only)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from api.deps import AdminUser, StateDep
from api.errors import ApiError
from shared import control, fleet, keys
from shared.fleet import PROTOCOL, WorkerBeat
from shared.queue import estimate_wait

router = APIRouter(prefix="/api", tags=["fleet"])


class WorkerOut(BaseModel):
    id: str
    pool: str
    host: str
    version: str
    protocol: int = Field(description="Its API protocol (0: older than the number).")
    compatible: bool = Field(
        description="Its protocol is this API's: only then does it serve this API's sessions."
    )
    capacity: int
    active: int
    draining: bool
    load: float
    heartbeat_age_s: float
    started_at: float
    stalled: bool = Field(
        description="Its heartbeat lives but its queue poll loop has not run for a few "
        "seconds: its slots are not counted as capacity."
    )
    poll_age_s: float | None = Field(description="Seconds since its poll loop last ran.")


class PoolOut(BaseModel):
    pool: str
    workers: int
    capacity: int
    active: int
    queued: int
    estimated_wait_s: float | None


class DrainRequest(BaseModel):
    timeout_s: float | None = Field(
        None, ge=0, le=86400, description="Override the worker's drain timeout."
    )


async def live_beats(state: StateDep) -> list[WorkerBeat]:
    return await fleet.live_beats(state.redis)


def _worker_out(beat: WorkerBeat, now: float) -> WorkerOut:
    return WorkerOut(
        **beat.model_dump(include=set(WorkerOut.model_fields)),
        heartbeat_age_s=round(max(now - beat.ts, 0.0), 3),
        compatible=beat.protocol == PROTOCOL,
        stalled=beat.stalled,
        poll_age_s=beat.poll_age,
    )


async def live_workers(state: StateDep) -> list[WorkerOut]:
    now = time.time()
    return [_worker_out(beat, now) for beat in await live_beats(state)]


@router.get("/workers", response_model=list[WorkerOut])
async def list_workers(_admin: AdminUser, state: StateDep) -> list[WorkerOut]:
    """Workers with a live heartbeat, draining ones included."""
    return await live_workers(state)


@router.get("/pools", response_model=list[PoolOut])
async def list_pools(_admin: AdminUser, state: StateDep) -> list[PoolOut]:
    """Per pool: workers, free and used capacity, queue depth and expected wait."""
    beats = await live_beats(state)
    pools = []
    for pool in state.settings.pools:
        members = [w for w in beats if w.pool == pool]
        queued = await state.redis.zcard(keys.queue(pool))
        pools.append(
            PoolOut(
                pool=pool,
                workers=len(members),
                capacity=sum(w.serving_capacity for w in members),
                active=sum(w.active for w in members),
                queued=queued,
                estimated_wait_s=await estimate_wait(state.redis, pool, queued) if queued else 0,
            )
        )
    return pools


@router.post("/workers/{worker_id}/drain", response_model=WorkerOut, status_code=202)
async def drain_worker(
    worker_id: str,
    _admin: AdminUser,
    state: StateDep,
    body: Annotated[DrainRequest | None, Body()] = None,
) -> WorkerOut:
    """Stop the worker taking sessions now; its live calls move to other workers of the pool
    with free slots, each at its next quiet moment; what cannot move runs up to the drain
    timeout, then ends."""
    current = {w.id: w for w in await live_workers(state)}
    if worker_id not in current:
        raise ApiError(404, "worker_not_found", "no live worker with that id")
    timeout = body.timeout_s if body else None
    await state.signals.request(
        worker_id, control.Drain(payload=control.DrainBody(timeout=timeout))
    )
    worker = current[worker_id]
    worker.draining = True
    return worker
