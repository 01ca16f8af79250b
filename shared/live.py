"""Live session state in Redis: one hash per session, transitions and events.

Every change happens inside a Lua script, so a state transition and the event
that announces it are one atomic step: two parties racing (a worker picking a
job up while the reaper expires it, say) cannot both win, and no state exists
without its event. Each event is written, in the same step, to the session's
own stream (live fan-out and replay) and to the ingest stream (the persister).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Iterable
from typing import Any, cast

import redis.asyncio as aioredis

from shared import keys
from shared.events import FINAL_STATES, EventType, Reason, SessionState

# Heartbeat keys expire this much before the TTL, so that the reaper (which
# looks at least every 0.9 s) notices a dead worker *within* the TTL.
LIVENESS_MARGIN_S = 1.0


def alive_ms(heartbeat_ttl: float) -> int:
    """Expiry of a heartbeat key for a given heartbeat TTL."""
    return int(max(heartbeat_ttl - LIVENESS_MARGIN_S, heartbeat_ttl / 2) * 1000)


# Shared Lua: assign the next seq and append the event to both streams.
# KEYS: 1 session hash, 2 session stream, 3 ingest stream, 4 live set, 5 alive key
# ARGV: 1 session id, 2 stream maxlen, 3 ts, …
_PUBLISH_FN = """
local function publish(etype, data)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local cid = redis.call('HGET', KEYS[1], 'conversation_id')
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
    'sid', ARGV[1], 'cid', cid, 'seq', seq, 'ts', ARGV[3], 'type', etype, 'data', data)
  redis.call('XADD', KEYS[3], '*',
    'sid', ARGV[1], 'cid', cid, 'seq', seq, 'ts', ARGV[3], 'type', etype, 'data', data,
    'live_id', id)
  return id
end

-- A publisher retrying after a lost reply must not write twice: its events carry
-- an increasing number (0: none), and the hash remembers the highest applied.
local function already_applied(pseq)
  local n = tonumber(pseq)
  if n == 0 then return false end
  if n <= tonumber(redis.call('HGET', KEYS[1], 'pub_seq') or '0') then return true end
  redis.call('HSET', KEYS[1], 'pub_seq', n)
  return false
end
"""

# KEYS: 6 the owner's set of live sessions
# ARGV: 4 state event data (JSON), 5 most live sessions per owner (0: no limit),
#       6.. hash field/value pairs
_CREATE = (
    _PUBLISH_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 'exists'} end
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('SCARD', KEYS[6]) >= limit then return {0, 'owner_limit'} end
redis.call('HSET', KEYS[1], 'state', 'queued', 'reason', 'created', 'seq', 0,
  unpack(ARGV, 6))
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
return {1, publish('session.state', ARGV[4])}
"""
)

# ARGV: 4 to_state, 5 reason, 6 allowed from-states (space separated), 7 data JSON,
#       8 alive TTL ms, 9 worker id ('' keeps it), 10 retention seconds, 11 final (1/0),
#       12 publisher seq (0: none)
_TRANSITION = (
    _PUBLISH_FN
    + """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[6], '%S+') do
  if s == current then allowed = true end
end
if not allowed then
  local n = tonumber(ARGV[12])
  if n > 0 and n <= tonumber(redis.call('HGET', KEYS[1], 'pub_seq') or '0') then
    return {1, 'applied before'}  -- our own earlier attempt moved it on
  end
  return {0, current}
end
if already_applied(ARGV[12]) then return {1, 'applied before'} end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'reason', ARGV[5], ARGV[4] .. '_ts', ARGV[3])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'worker_id', ARGV[9]) end
local data = cjson.decode(ARGV[7])
data['state'] = ARGV[4]
data['reason'] = ARGV[5]
data['previous'] = current
if ARGV[9] ~= '' then data['worker_id'] = ARGV[9] end
local id = publish('session.state', cjson.encode(data))
if ARGV[11] == '1' then
  redis.call('SREM', KEYS[4], ARGV[1])
  -- The owner's set is named from the hash (single-instance Redis; not cluster-safe).
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('SREM', 'vp:user:' .. owner .. ':live', ARGV[1]) end
  redis.call('DEL', KEYS[5])
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
elseif ARGV[4] == 'starting' then
  redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[8])
end
return {1, id}
"""
)

# ARGV: 4 event type, 5 data JSON, 6 publisher seq (0: none)
_PUBLISH = (
    _PUBLISH_FN
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'ended' or state == 'failed' or state == 'expired'
   or state == 'cancelled' then
  return false
end
if already_applied(ARGV[6]) then return 'applied before' end
return publish(ARGV[4], ARGV[5])
"""
)


START_RATE_WINDOW_S = 120.0  # recent starts, for queue wait estimates


async def record_start(redis: aioredis.Redis, pool: str, session_id: str) -> None:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.pool_starts(pool), {session_id: now})
        pipe.zremrangebyscore(keys.pool_starts(pool), 0, now - START_RATE_WINDOW_S)
        pipe.expire(keys.pool_starts(pool), int(START_RATE_WINDOW_S) * 2)
        await pipe.execute()


async def start_rate(redis: aioredis.Redis, pool: str) -> float:
    """Sessions started per second in the pool, over the recent window."""
    now = time.time()
    starts: int = await redis.zcount(keys.pool_starts(pool), now - START_RATE_WINDOW_S, now)
    return starts / START_RATE_WINDOW_S


def wait_at(position: int, rate: float) -> float | None:
    """Seconds until a session at ``position`` starts, at ``rate`` starts per second."""
    return round(position / rate, 1) if rate > 0 else None


async def estimate_wait(redis: aioredis.Redis, pool: str, position: int) -> float | None:
    """Seconds until a session at ``position`` starts, from the pool's recent start rate."""
    return wait_at(position, await start_rate(redis, pool))


class OwnerLimitReached(Exception):
    def __init__(self, limit: int):
        super().__init__(f"at most {limit} live sessions per user")
        self.limit = limit


class LiveSessions:
    """Reads and changes the live state of sessions in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        heartbeat_ttl: float = 10.0,
        stream_retention: float = 3600.0,
        stream_maxlen: int = 20000,
    ):
        self.redis = redis
        self.heartbeat_ttl = heartbeat_ttl
        self.stream_retention = stream_retention
        self.stream_maxlen = stream_maxlen
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._publish = redis.register_script(_PUBLISH)

    def _keys(self, session_id: str) -> list[str]:
        return [
            keys.session(session_id),
            keys.session_events(session_id),
            keys.INGEST_STREAM,
            keys.LIVE_SESSIONS,
            keys.session_alive(session_id),
        ]

    def _head(self, session_id: str, at: float | None = None) -> list[Any]:
        return [session_id, self.stream_maxlen, repr(at or time.time())]

    async def create(
        self, session_id: str, owner: str, fields: dict[str, str], *, owner_limit: int = 0
    ) -> str:
        """Record a new queued session and its first event; returns the event's stream id.

        Raises ``OwnerLimitReached`` when ``owner`` already has ``owner_limit`` live sessions
        (checked in the same atomic step, so concurrent requests cannot both slip in).
        """
        pairs = [item for kv in {**fields, "owner": owner}.items() for item in kv]
        data = json.dumps({"state": "queued", "reason": Reason.CREATED, "previous": None})
        created, value = await self._create(
            keys=[*self._keys(session_id), keys.user_live(owner)],
            args=[*self._head(session_id), data, owner_limit, *pairs],
        )
        if not created and value == "owner_limit":
            raise OwnerLimitReached(owner_limit)
        if not created:
            raise ValueError(f"session {session_id} already exists")
        return cast(str, value)  # the script returns the XADD id

    async def transition(
        self,
        session_id: str,
        to: SessionState,
        reason: Reason | str,
        *,
        allowed_from: Iterable[SessionState],
        data: dict[str, Any] | None = None,
        worker_id: str = "",
        publisher_seq: int = 0,
        at: float | None = None,
    ) -> tuple[bool, str]:
        """Move a session to ``to`` if it is in one of ``allowed_from``.

        Returns (changed, stream id of the event) or (False, the current state).
        ``publisher_seq`` (increasing per session) makes a retry of the same call a no-op;
        ``at`` is when it happened, if not now (an event held back while Redis was away).
        """
        changed, value = await self._transition(
            keys=self._keys(session_id),
            args=[
                *self._head(session_id, at),
                str(to),
                str(reason),
                " ".join(str(s) for s in allowed_from),
                json.dumps(data or {}),
                alive_ms(self.heartbeat_ttl),
                worker_id,
                int(self.stream_retention),
                "1" if to in FINAL_STATES else "0",
                publisher_seq,
            ],
        )
        return bool(changed), value

    async def publish(
        self,
        session_id: str,
        type: EventType | str,
        data: dict[str, Any],
        *,
        publisher_seq: int = 0,
        at: float | None = None,
    ) -> bool:
        """Append an event to a live session; False if the session is gone or final.

        ``publisher_seq`` (increasing per session) makes a retry of the same event a no-op;
        ``at`` is when it happened, if not now.
        """
        entry_id = await self._publish(
            keys=self._keys(session_id),
            args=[*self._head(session_id, at), str(type), json.dumps(data), publisher_seq],
        )
        return entry_id is not None

    async def get(self, session_id: str) -> dict[str, str]:
        return await cast("Awaitable[dict[str, str]]", self.redis.hgetall(keys.session(session_id)))

    async def queue_position(self, pool: str, job_id: str) -> int | None:
        """1-based place in the pool's queue, or None once a worker took the job."""
        rank = await self.redis.zrank(keys.queue(pool), job_id)
        return None if rank is None else rank + 1
