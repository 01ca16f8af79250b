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
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, Unpack, cast

import redis.asyncio as aioredis
from arq.constants import job_key_prefix

from shared import keys
from shared.events import EventType
from shared.fleet import WorkerBeat
from shared.lifecycle import (
    FINAL_STATES,
    MOVES,
    OWNED_STATES,
    MoveName,
    Reason,
    SessionState,
    target,
)

# Heartbeat keys expire this much before the TTL, so that the reaper (which
# looks at least every 0.9 s) notices a dead worker *within* the TTL.
LIVENESS_MARGIN_S = 1.0


def alive_ms(heartbeat_ttl: float) -> int:
    """Expiry of a heartbeat key for a given heartbeat TTL."""
    return int(max(heartbeat_ttl - LIVENESS_MARGIN_S, heartbeat_ttl / 2) * 1000)


# Is ``word`` one of the space-separated ``list`` (states passed as one argument)?
_MEMBER_FN = """
local function member(word, list)
  for s in string.gmatch(list, '%S+') do
    if s == word then return true end
  end
  return false
end
"""

ROW_FIELDS = ("owner", "pool", "transport", "profile", "created_ts")
"""The session's fields a state event's ingest entry carries (``row``: a JSON list, in
this order, null where the hash has none)."""

# Shared Lua: assign the next seq and append the event to both streams.
# KEYS: 1 session hash, 2 session stream, 3 ingest stream, 4 live set, 5 alive key
# ARGV: 1 session id, 2 stream maxlen, 3 ts, …
# A state event's ingest entry also carries the session's row (``ROW_FIELDS``): the
# persister stores the row from whichever of them it meets first (api/session_rows.py),
# so a session's create writes nothing to SQL, and no order of entries can leave a state
# change without its row.
_PUBLISH_FN = (
    _MEMBER_FN
    + """
local function publish(etype, data)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local cid = redis.call('HGET', KEYS[1], 'conversation_id')
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
    'sid', ARGV[1], 'cid', cid, 'seq', seq, 'ts', ARGV[3], 'type', etype, 'data', data)
  local row = ''
  if etype == 'session.state' then
    row = cjson.encode(redis.call('HMGET', KEYS[1], ROW_FIELDS))
  end
  redis.call('XADD', KEYS[3], '*',
    'sid', ARGV[1], 'cid', cid, 'seq', seq, 'ts', ARGV[3], 'type', etype, 'data', data,
    'live_id', id, 'row', row)
  return id, seq
end

-- A publisher retrying after a lost reply must not write twice: its events carry
-- an increasing number (0: none), and the hash remembers the highest applied.
-- A new owner's publisher starts again from 1 (pick_up resets the count).
local function already_applied(pseq)
  local n = tonumber(pseq)
  if n == 0 then return false end
  if n <= tonumber(redis.call('HGET', KEYS[1], 'pub_seq') or '0') then return true end
  redis.call('HSET', KEYS[1], 'pub_seq', n)
  return false
end
""".replace("ROW_FIELDS", ", ".join(f"'{name}'" for name in ROW_FIELDS))
)

# Admission to a pool, decided in Redis where the numbers are, so that concurrent
# requests count each other: a queue limit holds exactly, not "about".
# KEYS (from ``k``): the pool's slots hash, its arq queue, its admitting set, its
#   recent starts, the owner's set of live sessions
# ARGV (from ``first``): now (s), most waiting, queue TTL (s), workers required (1/0),
#   heartbeat key prefix, fewest starts to estimate from, their window (s), how long an
#   admitted session may take to reach the queue (s), most live sessions per owner (0: any),
#   the session's profile ('': any)
# Returns {code, n, starts}: 'ok' and the place in the queue (0: a slot is free);
# 'no_workers' and the workers seen (draining and stalled ones offer no slot);
# 'no_profile' and the workers seen, none of which runs the session's profile;
# 'queue_full' and the sessions waiting; 'no_capacity' and the expected wait (ms);
# 'owner_limit' and the limit. ``starts``: starts in the window (for Retry-After).
# Does a worker that serves ``serves`` (comma-separated: its profiles and transports) have
# each of ``needs`` (comma-separated; none: anything does)?
_SERVES_FN = """
local function serves_all(serves, needs)
  for need in string.gmatch(needs, '[^,]+') do
    if not string.find(',' .. serves .. ',', ',' .. need .. ',', 1, true) then return false end
  end
  return true
end
"""

_ADMIT_FN = (
    _SERVES_FN
    + """
local function admit(k, first)
  local k_slots, k_queue, k_admitting, k_starts, k_owner =
    KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local now, max_waiting, queue_ttl = tonumber(ARGV[first]), tonumber(ARGV[first + 1]),
    tonumber(ARGV[first + 2])
  local workers_required, beat_prefix = ARGV[first + 3] == '1', ARGV[first + 4]
  local min_starts, window = tonumber(ARGV[first + 5]), tonumber(ARGV[first + 6])
  local admitting_s, owner_limit = tonumber(ARGV[first + 7]), tonumber(ARGV[first + 8])
  local needs = ARGV[first + 9]
  local offered, free, seen, runs = 0, 0, 0, 0
  local slots = redis.call('HGETALL', k_slots)
  for i = 1, #slots, 2 do
    if redis.call('EXISTS', beat_prefix .. slots[i]) == 1 then
      local o, f, serves = string.match(slots[i + 1], '^(%d+) (%d+) ?(.*)$')
      seen = seen + 1
      -- Only a worker that runs the session's profile and transport offers it a slot.
      if serves_all(serves, needs) then
        runs, offered, free = runs + 1, offered + tonumber(o), free + tonumber(f)
      end
    else
      redis.call('HDEL', k_slots, slots[i])  -- its heartbeat lapsed: the worker is gone
    end
  end
  local starts = redis.call('ZCOUNT', k_starts, now - window, '+inf')
  if workers_required and runs == 0 and seen > 0 then return {'no_profile', seen, starts} end
  if workers_required and offered == 0 then return {'no_workers', runs, starts} end
  redis.call('ZREMRANGEBYSCORE', k_admitting, '-inf', (now - admitting_s) * 1000)
  local waiting = redis.call('ZCARD', k_queue) + redis.call('ZCARD', k_admitting)
  if waiting >= max_waiting then return {'queue_full', waiting, starts} end
  local ahead = waiting + 1 - free  -- sessions to start before this one has a slot
  if ahead > 0 and starts >= min_starts then
    local wait = ahead * window / starts  -- slots free up about as fast as sessions start
    if wait > queue_ttl then return {'no_capacity', math.floor(wait * 1000), starts} end
  end
  if owner_limit > 0 and redis.call('SCARD', k_owner) >= owner_limit then
    return {'owner_limit', owner_limit, starts}
  end
  return {'ok', ahead > 0 and waiting + 1 or 0, starts}
end
"""
)

_ADMIT = _ADMIT_FN + "return admit(1, 1)"


# ARGV: 4 to_state, 5 reason, 6 from-states (space separated), 7 data JSON,
#       8 alive TTL ms, 9 worker id, 10 retention seconds, 11 final (1/0),
#       12 publisher seq (0: none), 13 owner mode (set|expect|''), 14 alive (set|drop|''),
#       15/16 what goes before and after the owner's id in its live-set key,
#       17 fields for the hash alone, never the event (JSON object, '' for none),
#       18 '1': the hash, as the move left it, returned with the event's id,
#       19/20 what goes before a pool in its queue's key and before a job id in its key
# The move as a function, so that one script may make two (``_TAKE``): its parameter
# stands for ARGV (the first three, which ``publish`` reads, are the same for both).
_TRANSITION_FN = (
    _PUBLISH_FN
    + """
local function transition(ARGV)
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
if ARGV[13] == 'expect' and redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[9] then
  return {0, 'not_owner'}  -- moved on to another worker: not ours to change
end
if not member(current, ARGV[6]) then
  local n = tonumber(ARGV[12])
  if n > 0 and n <= tonumber(redis.call('HGET', KEYS[1], 'pub_seq') or '0') then
    return {1, 'applied before'}  -- our own earlier attempt moved it on
  end
  return {0, current}
end
if already_applied(ARGV[12]) then return {1, 'applied before'} end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'reason', ARGV[5], ARGV[4] .. '_ts', ARGV[3])
if ARGV[13] == 'set' then
  redis.call('HSET', KEYS[1], 'worker_id', ARGV[9], 'pub_seq', 0)
end
if ARGV[17] ~= '' then
  for name, value in pairs(cjson.decode(ARGV[17])) do redis.call('HSET', KEYS[1], name, value) end
end
local data = cjson.decode(ARGV[7])
data['state'] = ARGV[4]
data['reason'] = ARGV[5]
data['previous'] = current
if ARGV[9] ~= '' then data['worker_id'] = ARGV[9] end
local id, seq = publish('session.state', cjson.encode(data))
redis.call('HSET', KEYS[1], 'state_seq', seq)
if ARGV[11] == '1' then
  redis.call('SREM', KEYS[4], ARGV[1])
  -- The owner's set is named from the hash (single-instance Redis; not cluster-safe).
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('SREM', ARGV[15] .. owner .. ARGV[16], ARGV[1]) end
  if current == 'queued' or current == 'recovering' then
    -- Its start job leaves the queue in the same step: no one who saw the final event
    -- can find it still waiting (named from the hash, as the owner's set is).
    local s = redis.call('HMGET', KEYS[1], 'pool', 'job_id')
    local job = s[2] or ARGV[1]
    redis.call('ZREM', ARGV[19] .. (s[1] or ''), job)
    redis.call('DEL', ARGV[20] .. job)
  end
  redis.call('DEL', KEYS[5])
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
elseif ARGV[14] == 'set' then
  redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[8])
elseif ARGV[14] == 'drop' then
  redis.call('DEL', KEYS[5])
end
if ARGV[18] == '1' then return {1, id, redis.call('HGETALL', KEYS[1])} end
return {1, id}
end
"""
)
_TRANSITION = _TRANSITION_FN + "return transition(ARGV)"

# A worker's take, and for a session the worker has a pipeline running for (a WebSocket
# session of one of ``ARGV[38]``'s profiles, not a call going on elsewhere before), its
# ready move too: one round trip where two were, each ~0.5 ms of a start one at a time
# (ops/bench/start_trace.py). ARGV: 1-20 the take's move, with its hash read; 21-37 the
# ready move's 4-20; 38 the profiles (space separated). Returns the take's reply, and
# with the ready move made, that move's event id fourth (the hash read after it).
# A function, so that a worker's claim of its jobs may end with one (shared/queue.py).
TAKE_FN = (
    _TRANSITION_FN
    + """
local function take(ARGV)
local taken = transition(ARGV)
if taken[1] ~= 1 or ARGV[38] == '' then return taken end
local s = redis.call('HMGET', KEYS[1], 'transport', 'profile', 'recoveries')
if s[1] ~= 'websocket' or not member(s[2] or '', ARGV[38]) or (tonumber(s[3]) or 0) > 0 then
  return taken
end
local ready = {ARGV[1], ARGV[2], ARGV[3]}
for i = 21, 37 do ready[#ready + 1] = ARGV[i] end
local moved = transition(ready)
if moved[1] ~= 1 then return taken end
return {1, taken[2], redis.call('HGETALL', KEYS[1]), moved[2]}
end
"""
)
_TAKE = TAKE_FN + "return take(ARGV)"

# A new WebSocket session seated in a worker's seat (shared/seats.py): a free slot with a
# pipeline running, offered while the worker waits for work. Only when nothing waits in the
# pool's queue (a seat never jumps it) and the seat is the API's protocol, runs the
# session's profile, and its worker is alive and not draining (its slots entry offers
# some). The session is taken and moved on to ``ready`` in this step, as that worker's own
# take would have (``take``, with the seat's arguments), and handed to the worker through
# its seated list, which its blocking pop wakes on; the create step's caller answers at
# once, with no start job, no ring and no wait for the worker. Returns the session's hash
# after the take, or nil (a seat that is gone, expired or draining is forgotten on the way).
# KEYS and ARGV: ``_CREATE``'s.
_SEAT_FN = (
    TAKE_FN
    + """
local function seat()
  if redis.call('ZCARD', KEYS[7]) > 0 or redis.call('ZCARD', KEYS[8]) > 0 then return nil end
  local s = redis.call('HMGET', KEYS[1], 'transport', 'profile')
  if s[1] ~= 'websocket' then return nil end
  for _, w in ipairs(redis.call('SMEMBERS', KEYS[14])) do
    local raw = redis.call('GET', ARGV[25] .. w)
    local slots = redis.call('HGET', KEYS[6], w)
    local offered = tonumber(slots and string.match(slots, '^(%d+)') or '0')
    if not raw or offered == 0 or redis.call('EXISTS', ARGV[12] .. w) == 0 then
      redis.call('SREM', KEYS[14], w)  -- withdrawn, lapsed, draining or gone
    else
      local offer = cjson.decode(raw)
      if offer['protocol'] == ARGV[24] and member(s[2] or '', offer['profiles']) then
        redis.call('DEL', ARGV[25] .. w)
        redis.call('SREM', KEYS[14], w)
        local args = {ARGV[1], ARGV[2], ARGV[3]}
        for _, a in ipairs(offer['take']) do args[#args + 1] = a end
        local taken = take(args)
        -- A new WebSocket session of one of the seat's profiles: moved on to ready. (Were it
        -- only taken, its worker, never told, would let its liveness lapse: the reaper
        -- would queue it again.)
        if #taken < 4 then return nil end
        redis.call('RPUSH', ARGV[26] .. w, cjson.encode({ARGV[1], taken[3]}))
        redis.call('PEXPIRE', ARGV[26] .. w, ARGV[27])
        return taken[3]
      end
    end
  end
  return nil
end
"""
)

# KEYS: 6..10 admission's (above), 6 being the pool's slots hash, 7 its queue, 8 its
#       admitting set; 11 the owner's rate counter (``RateLimit``), 12 the start job's key,
#       13 the pool's doorbell (with a job), 14 the pool's seats (with a job and seats)
# ARGV: 4 state event data (JSON), 5 initial state, 6 its reason, 7 fields to set (JSON),
#       8..17 admission's (above), 12 being the heartbeat key prefix, 18 the start job
#       ('': none), 19 its TTL (ms), 20 its score (ms), 21 rings kept at most, 22 creates
#       allowed per window (0: not counted here), 23 the counter's TTL (s), 24 the API's
#       fleet protocol ('': seat nothing), 25/26 what goes before a worker id in its seat's
#       and its seated list's keys, 27 the seated list's TTL (ms)
# A session seated (``seat``) is returned with its hash fifth, and has no start job.
_CREATE = (
    _ADMIT_FN
    + _SEAT_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', 0, 0} end
if tonumber(ARGV[22]) > 0 then  -- counted whatever admission says, as a request is
  local hits = redis.call('INCR', KEYS[11])
  if hits == 1 then redis.call('EXPIRE', KEYS[11], ARGV[23]) end
  if hits > tonumber(ARGV[22]) then return {'rate_limited', ARGV[22], 0} end
end
local admitted = admit(6, 8)
if admitted[1] ~= 'ok' then return admitted end
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'reason', ARGV[6], 'seq', 0)
local flat = {}
for name, value in pairs(cjson.decode(ARGV[7])) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[10], ARGV[1])
local id, seq = publish('session.state', ARGV[4])
redis.call('HSET', KEYS[1], 'state_seq', seq)
if ARGV[18] ~= '' then
  if ARGV[24] ~= '' and admitted[2] == 0 then
    local seated = seat()
    if seated then return {'ok', 0, admitted[3], id, seated} end
  end
  -- queued at once, and a worker woken
  redis.call('PSETEX', KEYS[12], ARGV[19], ARGV[18])
  redis.call('ZADD', KEYS[7], ARGV[20], ARGV[1])
  redis.call('LPUSH', KEYS[13], ARGV[1])  -- the ring names it (shared/queue.py, RING)
  redis.call('LTRIM', KEYS[13], 0, tonumber(ARGV[21]) - 1)
else  -- counted as waiting until its job is queued
  redis.call('ZADD', KEYS[8], ARGV[8] * 1000, ARGV[1])
end
return {'ok', admitted[2], admitted[3], id}
"""
)

# ARGV: 4 event type, 5 data JSON, 6 publisher seq (0: none), 7 final states (space
#       separated), 8 the publishing worker ('' for none: only the owner may publish)
_PUBLISH = (
    _PUBLISH_FN
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or member(state, ARGV[7]) then return false end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[8] then return false end
if already_applied(ARGV[6]) then return 'applied before' end
return publish(ARGV[4], ARGV[5])
"""
)

# KEYS: per session, its hash then its alive key
# ARGV: 1 worker id, 2 alive TTL ms, 3 the states a worker owns (space separated)
_KEEP_ALIVE = (
    _MEMBER_FN
    + """
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])  -- what admission counts on
end
local out = {}
for i = 4, #KEYS, 2 do
  local found = redis.call('HMGET', KEYS[i], 'state', 'worker_id')
  local state, owner = found[1], found[2]
  if state and owner == ARGV[1] and member(state, ARGV[3]) then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  end
  out[#out + 1] = state or ''
  out[#out + 1] = owner or ''
end
return out
"""
)

# A queued session moves to its pool's fallback, keeping its place by arrival: only if
# it is still queued in ``from`` (a worker may have taken its job meanwhile), has waited
# ``after`` seconds, and a live worker of the fallback has a free slot for its profile.
# KEYS: 1..5 the session's (as for a move), 6 from-queue, 7 to-queue, 8 to-slots
# ARGV: 1..3 the head, 4 from pool, 5 to pool, 6 heartbeat key prefix, 7 after (seconds)
_SPILL = (
    _PUBLISH_FN
    + _SERVES_FN
    + """
local s = redis.call('HMGET', KEYS[1], 'state', 'pool', 'job_id', 'created_ts', 'profile',
                     'transport')
if s[1] ~= 'queued' or s[2] ~= ARGV[4] then return 0 end
if tonumber(ARGV[3]) - tonumber(s[4] or ARGV[3]) < tonumber(ARGV[7]) then return 0 end
local job = s[3] or ARGV[1]
local place = redis.call('ZSCORE', KEYS[6], job)
if not place then return 0 end
local needs, free = (s[5] or '') .. ',' .. (s[6] or ''), 0
local slots = redis.call('HGETALL', KEYS[8])
for i = 1, #slots, 2 do
  if redis.call('EXISTS', ARGV[6] .. slots[i]) == 1 then
    local _, f, serves = string.match(slots[i + 1], '^(%d+) (%d+) ?(.*)$')
    if serves_all(serves, needs) then free = free + tonumber(f) end
  end
end
if free == 0 then return 0 end
redis.call('ZREM', KEYS[6], job)
redis.call('ZADD', KEYS[7], place, job)
redis.call('HSET', KEYS[1], 'pool', ARGV[5], 'reason', 'pool_fallback')
local data = {state = 'queued', reason = 'pool_fallback', previous = 'queued',
              pool = ARGV[5], from_pool = ARGV[4]}
local _, seq = publish('session.state', cjson.encode(data))
redis.call('HSET', KEYS[1], 'state_seq', seq)
return 1
"""
)

# The reaper's look at every live session, made in Redis: a sweep's cost with a fleet of
# healthy calls was a field read and an EXISTS per session, each parsed in the API (150 ms
# of API CPU a sweep at 5,000 calls, every 0.5 s; ops/bench/reaper_sweep.py). Only the
# sessions that may need something come back whole: not owned by a worker (queued,
# recovering), gone from Redis, or owned with the heartbeat expired or by a worker judged
# gone. Those that need nothing are counted by pool and state. A step takes a slice of
# the live sessions (SWEEP_SLICE): a script holds Redis for as long as it runs, ~5 µs a
# session here, so 5,000 at once would stall every other client for ~25 ms.
# ARGV: 1 what goes before a session id in its hash's key, 2 after the hash's key in its
#       heartbeat's, 3 the owned states, 4 workers judged gone, 5 '1': judging (else no
#       owned session is looked into), 6 how many fields, then the fields returned
#       (state, pool, worker_id first), then the session ids (keys named here, as the
#       transition script names the owner's set: single-instance Redis)
# Returns {looked into: sid, alive (0/1), fields…, …}, {counted: pool, state, n, …}
_SWEEP = (
    _MEMBER_FN
    + """
local fields = {}
local first = 7 + tonumber(ARGV[6])
for i = 7, first - 1 do fields[#fields + 1] = ARGV[i] end
local out, counted, order = {}, {}, {}
for j = first, #ARGV do
  local sid = ARGV[j]
  local hash = ARGV[1] .. sid
  local f = redis.call('HMGET', hash, unpack(fields))
  local state, pool, owner = f[1], f[2] or '', f[3] or ''
  local alive = 1
  local fine = false
  if state and member(state, ARGV[3]) then
    alive = redis.call('EXISTS', hash .. ARGV[2])
    fine = ARGV[5] ~= '1' or (alive == 1 and not member(owner, ARGV[4]))
  end
  if fine then
    local k = pool .. ' ' .. state
    if not counted[k] then counted[k] = 0; order[#order + 1] = k end
    counted[k] = counted[k] + 1
  else
    out[#out + 1] = sid
    out[#out + 1] = alive
    for i = 1, #fields do out[#out + 1] = f[i] or '' end
  end
end
local counts = {}
for _, k in ipairs(order) do
  local pool, state = string.match(k, '^(.*) (%S+)$')
  counts[#counts + 1] = pool
  counts[#counts + 1] = state
  counts[#counts + 1] = counted[k]
end
return {out, counts}
"""
)

SWEEP_SLICE = 500  # live sessions a sweep's step looks at: Redis held ~2.5 ms at a time

_FINAL = " ".join(sorted(FINAL_STATES))
_NOT_OWNED = " ".join(sorted(set(SessionState) - OWNED_STATES))
_OWNED = " ".join(sorted(OWNED_STATES))


class MoveOptions(TypedDict, total=False):
    """How a move is made (``LiveSessions.move``)."""

    only_from: SessionState | None
    """Only from exactly this state (one of the move's sources)."""
    data: dict[str, Any] | None
    """Added to the state event's data."""
    worker_id: str
    """The worker making it: required for an owner's move."""
    publisher_seq: int
    """Increasing per owner: a retry of the same call is a no-op."""
    at: float | None
    """When it happened, if not now (an event held back while Redis was away)."""
    private: dict[str, str] | None
    """Fields set in the session's hash in the same step, and never in the event (what
    only the owner may read, like ``OWNER_CONNECT``)."""


@dataclass(frozen=True)
class ReadyAtTake:
    """What a worker's take needs to move a session on to ``ready`` in the same step."""

    profiles: Collection[str]
    """The profiles the worker has a WebSocket pipeline running for."""
    data: dict[str, Any]
    """The ready event's data (the owner's connect parameters, as ``mark_ready`` has)."""
    private: dict[str, str] | None = None
    """Fields for the hash alone (``MoveOptions.private``)."""


@dataclass(frozen=True)
class Taken:
    """A session a worker took (``LiveSessions.take``)."""

    meta: dict[str, str]
    """Its hash, as the take left it."""
    ready: bool
    """Moved on to ``ready`` in the same step (``ReadyAtTake``)."""

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Taken | None:
        """The take's reply (``TAKE_FN``) read: None if it did not take the session. (From
        a connection that does not decode, as arq's: its hash is decoded here.)"""
        if not reply[0]:
            return None
        return cls(_decoded_hash(reply[2]), ready=len(reply) > 3)


def _decoded_hash(flat: list[Any]) -> dict[str, str]:
    """HGETALL's reply, as a script returns it (flat; bytes from a connection that does not
    decode, as arq's), as a dict."""
    text = [x.decode() if isinstance(x, bytes) else x for x in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


class Created(NamedTuple):
    """A session made live (``LiveSessions.create``)."""

    position: int
    """Its place in the queue (0: a slot is free)."""
    event_id: str
    """Its ``queued`` event's stream id: a wait for what comes next reads on from there
    (``api.events.wait_for_state_event``), with no look at where it is first."""
    seated: dict[str, str] | None = None
    """Its hash, ``ready`` on a worker already, if it was seated in the same step
    (``SeatOffer``); None if it was queued."""


@dataclass(frozen=True)
class SeatOffer:
    """Seat a new WebSocket session in a free worker's seat in its create step if one is
    offered (shared/seats.py): ``protocol``, the caller's fleet protocol (a seat of another
    is not taken)."""

    protocol: int
    seated_ttl_ms: int

    def script_args(self) -> list[str | int]:
        return [str(self.protocol), keys.SEAT_PREFIX, keys.SEATED_PREFIX, self.seated_ttl_ms]


_NO_SEAT: list[str | int] = ["", "", "", 0]


class TakeStep(NamedTuple):
    """A take's keys and arguments, for ``_TAKE`` or a script that ends with one."""

    keys: list[str]
    args: list[Any]


PendingEvent = tuple[str, EventType | str, dict[str, Any], dict[str, Any]]
"""(session id, event type, its data, fields of the session's hash to set with it)."""


class OwnerLimitReached(Exception):
    def __init__(self, limit: int):
        super().__init__(f"at most {limit} live sessions per user")
        self.limit = limit


class RateLimited(Exception):
    """The owner made ``limit`` sessions in this window already (``RateLimit``)."""

    def __init__(self, limit: int):
        super().__init__(f"at most {limit} sessions made per window")
        self.limit = limit


@dataclass(frozen=True)
class RateLimit:
    """A fixed-window count of an owner's creates, made in the create's own step instead
    of a round trip before it (~0.45 ms of a start's answer, one at a time)."""

    key: str
    """The window's counter (``api.limits.window_key``)."""
    limit: int
    ttl_s: int

    def script_args(self) -> list[int]:
        return [self.limit, self.ttl_s]


class AdmissionRefused(Exception):
    """The pool can't take the session now: ``code`` says why (``no_workers``,
    ``no_profile``, ``queue_full``, ``no_capacity``), ``value`` by how much (workers seen,
    sessions waiting, expected wait in seconds), ``starts_per_s`` how fast the pool has
    been starting them."""

    def __init__(self, code: str, value: float, starts_per_s: float):
        super().__init__(f"{code} ({value})")
        self.code, self.value, self.starts_per_s = code, value, starts_per_s


@dataclass(frozen=True)
class StartJob:
    """A new session's start job, queued by ``LiveSessions.create`` in the step that
    records the session (made by ``queue.new_start_job``)."""

    key: str
    payload: bytes
    """The job as arq's worker reads it."""
    ttl_ms: int
    score_ms: int
    """Its place in the pool's queue (when it may run)."""
    doorbell: str
    rings_kept: int

    def script_args(self) -> list[bytes | int]:
        return [self.payload, self.ttl_ms, self.score_ms, self.rings_kept]


_NO_JOB: list[bytes | int] = [b"", 0, 0, 0]


START_RATE_WINDOW_S = 120.0
"""Recent starts in a pool are counted over this long, for wait estimates."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """What a pool admits: the numbers behind ``no_workers``, ``queue_full`` and
    ``no_capacity`` (all checked in one step with the session's creation)."""

    max_waiting: int
    """Sessions waiting (queued, or admitted and on their way to the queue) at most."""
    queue_ttl: float
    """A session expected to wait longer than this is refused rather than left to expire."""
    workers_required: bool = True
    """Refuse at once when no worker offers a slot; off for pools that scale from zero
    (there the queue itself is what wakes the autoscaler)."""
    window_s: float = START_RATE_WINDOW_S
    """Recent starts are counted over this long to estimate the wait."""
    min_starts: int = 10
    """Fewer starts than this in the window say too little about the wait to refuse on it
    (a pool that was idle has few starts, not a long wait)."""

    def args(self, now: float, owner_limit: int, needs: Sequence[str] = ()) -> list[Any]:
        return [
            repr(now),
            self.max_waiting,
            self.queue_ttl,
            int(self.workers_required),
            keys.worker(""),
            self.min_starts,
            self.window_s,
            ADMITTING_S,
            owner_limit,
            ",".join(n for n in needs if n),
        ]


# Admits everything (the owner limit apart): for callers that create sessions directly.
ADMIT_ALL = AdmissionPolicy(max_waiting=2**31, queue_ttl=1e12, workers_required=False)

# An admitted session reaches the queue a few ms later (the API enqueues it next); one
# that never does (the API died in between) stops being counted after this long.
ADMITTING_S = 10.0


def _admission_keys(pool: str, owner: str) -> list[str]:
    return [
        keys.pool_slots(pool),
        keys.queue(pool),
        keys.pool_admitting(pool),
        keys.pool_starts(pool),
        keys.user_live(owner),
    ]


def _admitted(reply: list[Any], policy: AdmissionPolicy) -> int:
    """The place in the queue from an admission's reply (0: a slot is free), or the
    refusal it says."""
    code, value, starts = (x.decode() if isinstance(x, bytes) else x for x in reply[:3])
    if code == "ok":
        return int(value)
    if code == "owner_limit":
        raise OwnerLimitReached(int(value))
    if code == "exists":
        raise ValueError("session already exists")
    if code == "rate_limited":
        raise RateLimited(int(value))
    rate = int(starts) / policy.window_s
    amount = int(value) / 1000 if code == "no_capacity" else int(value)  # ms → s
    raise AdmissionRefused(str(code), amount, rate)


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
        self._admit = redis.register_script(_ADMIT)
        self._transition = redis.register_script(_TRANSITION)
        self._take = redis.register_script(_TAKE)
        self._publish = redis.register_script(_PUBLISH)
        self._keep_alive = redis.register_script(_KEEP_ALIVE)
        self._spill = redis.register_script(_SPILL)
        self._sweep = redis.register_script(_SWEEP)

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

    async def admit(
        self,
        pool: str,
        owner: str,
        policy: AdmissionPolicy,
        *,
        owner_limit: int = 0,
        needs: Sequence[str] = (),
    ) -> int:
        """Would ``pool`` take a session of ``owner``'s now? Its place in the queue (0: a
        slot is free), or ``AdmissionRefused`` / ``OwnerLimitReached``. ``needs``: the
        session's profile and transport, which a worker must serve to count. A cheap look
        before any work is done; ``create`` decides again, atomically."""
        reply = await self._admit(
            keys=_admission_keys(pool, owner),
            args=policy.args(time.time(), owner_limit, needs),
        )
        return _admitted(reply, policy)

    async def create(
        self,
        session_id: str,
        owner: str,
        fields: dict[str, str],
        *,
        owner_limit: int = 0,
        admission: AdmissionPolicy = ADMIT_ALL,
        job: StartJob | None = None,
        rate: RateLimit | None = None,
        seat: SeatOffer | None = None,
    ) -> Created:
        """Record a new queued session and its first event, if its pool admits it, and
        with ``job``, queue its start job and wake a worker in the same step (without one
        it is counted as waiting until ``queue.enqueue_start`` takes it off
        ``keys.pool_admitting``). Returns its place in the queue (0: a slot is free) and
        its ``queued`` event's id. With ``job`` and ``seat``, a session a worker's seat
        takes is seated there instead of queued: ``ready`` on return (``Created.seated``).

        Raises ``AdmissionRefused`` when the pool can't take it and ``OwnerLimitReached``
        when ``owner`` already has ``owner_limit`` live sessions (both checked in the same
        atomic step, so concurrent requests cannot both slip in); with ``rate``, counts
        the create first, and raises ``RateLimited`` past the window's limit.
        """
        now = time.time()
        state, reason = SessionState.QUEUED, Reason.CREATED
        data = json.dumps({"state": state, "reason": reason, "previous": None})
        reply = await self._create(
            keys=[
                *self._keys(session_id),
                *_admission_keys(fields.get("pool", ""), owner),
                rate.key if rate else keys.session(session_id),  # (not counted: not touched)
                *([job.key, job.doorbell] if job else []),
                *([keys.pool_seats(fields.get("pool", ""))] if job and seat else []),
            ],
            args=[
                *self._head(session_id, now),
                data,
                str(state),
                str(reason),
                json.dumps({**fields, "owner": owner}),
                *admission.args(
                    now, owner_limit, (fields.get("profile", ""), fields.get("transport", ""))
                ),
                *(job.script_args() if job else _NO_JOB),
                *(rate.script_args() if rate else [0, 0]),
                *(seat.script_args() if job and seat else _NO_SEAT),
            ],
        )
        try:
            position = _admitted(reply, admission)
        except ValueError:
            raise ValueError(f"session {session_id} already exists") from None
        event_id = reply[3]
        seated = _decoded_hash(reply[4]) if len(reply) > 4 else None
        return Created(
            position, event_id.decode() if isinstance(event_id, bytes) else event_id, seated
        )

    async def move(
        self, session_id: str, name: MoveName, reason: Reason | str, **how: Unpack[MoveOptions]
    ) -> tuple[bool, str]:
        """Make the move ``name`` (``shared.lifecycle.MOVES``) if the session is where it
        starts from, and, with ``only_from``, in exactly that state (a caller that judged
        the session in one state, like the reaper, changes nothing if it moved meanwhile).

        Returns (changed, stream id of the event) or (False, the current state, or
        ``not_owner`` when the move is the owner's and ``worker_id`` no longer owns it).
        The options: ``MoveOptions``.
        """
        changed, value, *_ = await self._move(session_id, name, reason, **how)
        return bool(changed), value

    async def _move(
        self,
        session_id: str,
        name: MoveName,
        reason: Reason | str,
        *,
        only_from: SessionState | None = None,
        data: dict[str, Any] | None = None,
        worker_id: str = "",
        publisher_seq: int = 0,
        at: float | None = None,
        private: dict[str, str] | None = None,
        read: bool = False,
    ) -> list[Any]:
        """``move``'s step; its reply, and with ``read``, the hash after a move made."""
        return cast(
            "list[Any]",
            await self._transition(
                keys=self._keys(session_id),
                args=[
                    *self._head(session_id, at),
                    *self._move_args(
                        name, reason, only_from, data, worker_id, publisher_seq, private, read
                    ),
                ],
            ),
        )

    def _move_args(
        self,
        name: MoveName,
        reason: Reason | str,
        only_from: SessionState | None,
        data: dict[str, Any] | None,
        worker_id: str,
        publisher_seq: int,
        private: dict[str, str] | None,
        read: bool,
    ) -> list[Any]:
        """The move's arguments after the head (``_TRANSITION``'s ARGV 4-20)."""
        move = MOVES[name]
        sources = move.sources if only_from is None else move.sources & {only_from}
        to = target(move, reason)
        if move.owner and not worker_id:
            raise ValueError(f"{name} is a worker's move: give its worker_id")
        return [
            str(to),
            str(reason),
            " ".join(sorted(sources)),
            json.dumps(data or {}),
            alive_ms(self.heartbeat_ttl),
            worker_id,
            int(self.stream_retention),
            "1" if to in FINAL_STATES else "0",
            publisher_seq,
            move.owner,
            move.alive,
            *keys.USER_LIVE_AROUND,
            json.dumps(private) if private else "",
            "1" if read else "",
            keys.queue(""),
            job_key_prefix,
        ]

    # The moves by name, for callers that make one directly (a worker's go through its
    # publisher, after the events emitted before them).

    async def pick_up(
        self, session_id: str, worker_id: str, *, data: dict[str, Any] | None = None
    ) -> bool:
        """The worker takes a waiting session (and from now on owns it)."""
        changed, _ = await self.move(
            session_id, "pick_up", Reason.PICKED_UP, worker_id=worker_id, data=data
        )
        return changed

    async def take(
        self,
        session_id: str,
        worker_id: str,
        *,
        data: dict[str, Any] | None = None,
        ready_if: ReadyAtTake | None = None,
    ) -> Taken | None:
        """``pick_up``, and the session's hash as it left it, in one step (None: not
        taken). A worker that takes its job's session this way is one round trip from
        ``starting`` where a read and then a pick-up were two.

        With ``ready_if``, a new WebSocket session of one of its profiles is also moved on
        to ``ready`` in the same step (``_TAKE``): the taker has its pipeline running."""
        step = self.take_step(session_id, worker_id, data=data, ready_if=ready_if)
        return Taken.from_reply(await self._take(keys=step.keys, args=step.args))

    def take_step(
        self,
        session_id: str,
        worker_id: str,
        *,
        data: dict[str, Any] | None = None,
        ready_if: ReadyAtTake | None = None,
    ) -> TakeStep:
        """``take``'s keys and arguments (``TAKE_FN``'s KEYS 1-5, ARGV 1-38)."""
        args = [
            *self._head(session_id),
            *self._move_args("pick_up", Reason.PICKED_UP, None, data, worker_id, 0, None, True),
        ]
        if ready_if is not None and ready_if.profiles:
            args += [
                *self._move_args(
                    "mark_ready", Reason.PIPELINE_READY, None, ready_if.data, worker_id, 0,
                    ready_if.private, False,
                ),
                " ".join(ready_if.profiles),
            ]  # fmt: skip
        else:
            args += [""] * 18  # no ready move (ARGV 21-38)
        return TakeStep(self._keys(session_id), args)

    async def cancel(self, session_id: str, reason: Reason) -> bool:
        """A queued session given up before any worker took it (its job: ``queue``)."""
        changed, _ = await self.move(session_id, "cancel", reason)
        return changed

    async def sweep(
        self,
        fields: Sequence[str],
        *,
        gone: Callable[[], Awaitable[Collection[str]]],
        judging: bool,
    ) -> tuple[list[tuple[str, bool, dict[str, str | None]]], Counter[tuple[str, str]]]:
        """The reaper's look at every live session, in steps of ``SWEEP_SLICE``: (session id,
        its heartbeat exists (looked up for owned sessions; True for others), ``fields`` of
        its hash, None where not there) of each that may need something
        (not owned by a worker, gone from Redis, or owned, with ``judging``, with its
        heartbeat expired or by a worker ``gone`` names; asked only when some session is
        live), in session id order, and how many of the others there are by (pool, state).
        ``fields`` start with state, pool and worker_id."""
        if tuple(fields[:3]) != ("state", "pool", "worker_id"):
            raise ValueError("fields start with state, pool and worker_id")
        live = sorted(await cast("Awaitable[set[str]]", self.redis.smembers(keys.LIVE_SESSIONS)))
        lost = " ".join(sorted(await gone())) if live and judging else ""
        head = [keys.SESSION_PREFIX, keys.ALIVE_SUFFIX, _OWNED, lost,
                "1" if judging else "", len(fields), *fields]  # fmt: skip
        looked: list[Any] = []
        counted: list[Any] = []
        for start in range(0, len(live), SWEEP_SLICE):
            part = await self._sweep(args=[*head, *live[start : start + SWEEP_SLICE]])
            looked += part[0]
            counted += part[1]
        width = 2 + len(fields)
        sessions = [
            (
                str(looked[i]),
                bool(looked[i + 1]),
                {
                    name: (value or None)
                    for name, value in zip(fields, looked[i + 2 : i + width], strict=True)
                },
            )
            for i in range(0, len(looked), width)
        ]
        counts: Counter[tuple[str, str]] = Counter()
        for i in range(0, len(counted), 3):
            counts[(str(counted[i]), str(counted[i + 1]))] += int(counted[i + 2])
        return sessions, counts

    async def spill(self, session_id: str, from_pool: str, to_pool: str, after: float) -> bool:
        """Move a session queued ``after`` seconds or more in ``from_pool`` to ``to_pool``'s
        queue, in its place by arrival, if a worker there has a free slot for it (its
        event: ``queued``, reason ``pool_fallback``, with the new ``pool``). False if not
        (taken meanwhile, too young, or no free slot there)."""
        moved = await self._spill(
            keys=[
                *self._keys(session_id),
                keys.queue(from_pool),
                keys.queue(to_pool),
                keys.pool_slots(to_pool),
            ],
            args=[*self._head(session_id), from_pool, to_pool, keys.worker(""), after],
        )
        return bool(moved)

    async def expire(self, session_id: str) -> bool:
        changed, _ = await self.move(session_id, "expire", Reason.NO_CAPACITY)
        return changed

    async def finish(
        self,
        session_id: str,
        reason: Reason,
        *,
        only_from: SessionState | None = None,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """End a running or recovering session from outside its worker (the reaper)."""
        changed, _ = await self.move(session_id, "finish", reason, only_from=only_from, data=data)
        return changed

    async def publish_all(self, events: list[PendingEvent]) -> None:
        """``publish`` for many sessions in one round trip, each with fields of its hash
        set alongside (a queue position, say). The API's, never a worker's: no owner
        fence, no retry number."""
        if not events:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id, type, data, fields in events:
                if fields:
                    pipe.hset(keys.session(session_id), mapping=fields)
                args = [*self._head(session_id), str(type), json.dumps(data), 0, _FINAL, ""]
                await self._publish(keys=self._keys(session_id), args=args, client=pipe)
            await pipe.execute()

    async def publish(
        self,
        session_id: str,
        type: EventType | str,
        data: dict[str, Any],
        *,
        worker_id: str = "",
        publisher_seq: int = 0,
        at: float | None = None,
    ) -> bool:
        """Append an event to a live session; False if the session is gone or final, or
        (with ``worker_id``) is no longer that worker's: another's, or waiting for one
        (``recovering``), so a worker that let the call go cannot add to it.

        ``publisher_seq`` (increasing per owner) makes a retry of the same event a no-op;
        ``at`` is when it happened, if not now.
        """
        entry_id = await self._publish(
            keys=self._keys(session_id),
            args=[
                *self._head(session_id, at),
                str(type),
                json.dumps(data),
                publisher_seq,
                _NOT_OWNED if worker_id else _FINAL,
                worker_id,
            ],
        )
        return entry_id is not None

    async def keep_alive(
        self,
        worker_id: str,
        session_ids: list[str],
        *,
        beat: WorkerBeat | None = None,
    ) -> dict[str, tuple[str, str]]:
        """A worker's heartbeat, in one round trip: its own ``beat`` (the fleet's entry and
        its pool's count of slots, when given), then the liveness key of each of
        ``session_ids`` it still owns (set, not refreshed: after a Redis restart the key may
        have lapsed while the call lived), and none of the others. Returns each session's
        state and owner as Redis has them ("" for what it no longer has)."""
        if not session_ids and beat is None:
            return {}
        pool = beat.pool if beat is not None else ""
        names = [keys.worker(worker_id), keys.WORKERS, keys.pool_slots(pool)]
        names += [k for sid in session_ids for k in (keys.session(sid), keys.session_alive(sid))]
        flat = await self._keep_alive(
            keys=names,
            args=[
                worker_id,
                alive_ms(self.heartbeat_ttl),
                _OWNED,
                beat.model_dump_json() if beat is not None else "",
                f"{beat.serving_capacity} {beat.free_slots} {','.join(beat.serves)}"
                if beat is not None
                else "",
            ],
        )
        return {sid: (flat[2 * i], flat[2 * i + 1]) for i, sid in enumerate(session_ids)}

    async def get(self, session_id: str) -> dict[str, str]:
        return await cast("Awaitable[dict[str, str]]", self.redis.hgetall(keys.session(session_id)))
