"""Redis key names, in one place so both sides agree.

``vp:`` prefixes everything voicepool writes; arq's own keys keep arq's names.
"""

PREFIX = "vp"

INGEST_STREAM = f"{PREFIX}:ingest"  # every event of every session, for the persister
PERSISTER_GROUP = "persister"
LIVE_SESSIONS = f"{PREFIX}:live"  # set of session ids not yet in a final state
REVOCATIONS = f"{PREFIX}:revocations"  # pub/sub: ids of users whose tokens were revoked
PROTOCOL = f"{PREFIX}:protocol"  # the API's fleet.PROTOCOL, set when it starts
WORKERS = f"{PREFIX}:workers"  # set of worker ids ever seen (pruned by the reaper)


SESSION_PREFIX = f"{PREFIX}:session:"
"""What goes before a session id in its hash's key (the reaper's sweep builds the names)."""
ALIVE_SUFFIX = ":alive"
"""What goes after a session's hash key in its heartbeat key's."""


def session(session_id: str) -> str:
    """Hash: state, reason, owner, pool, worker_id, seq counter, …"""
    return f"{SESSION_PREFIX}{session_id}"


def session_events(session_id: str) -> str:
    """Stream: the session's events, for live fan-out and replay."""
    return f"{PREFIX}:session:{session_id}:events"


def session_alive(session_id: str) -> str:
    """Heartbeat: exists while the owning worker is alive (short TTL)."""
    return f"{SESSION_PREFIX}{session_id}{ALIVE_SUFFIX}"


USER_LIVE_AROUND = (f"{PREFIX}:user:", ":live")
"""What goes before and after a user id in ``user_live`` (the transition script builds the
name from the session's owner)."""


def user_live(user_id: str) -> str:
    """Set: the user's sessions not yet in a final state (for the per-user limit)."""
    before, after = USER_LIVE_AROUND
    return f"{before}{user_id}{after}"


def user_signouts(user_id: str) -> str:
    """String: the user's sign-out generation (a counter; absent means 0). No TTL: it must
    outlive every browser session opened before it, and there is one per revoked user."""
    return f"{PREFIX}:user:{user_id}:signouts"


def pool_starts(pool: str) -> str:
    """Sorted set: recent session starts in a pool (for queue wait estimates)."""
    return f"{PREFIX}:pool:{pool}:starts"


def pool_slots(pool: str) -> str:
    """Hash: worker id → "<slots offered> <slots free>" for each worker of the pool, as of
    its last beat (a field outlives its worker until someone sees ``worker(id)`` gone)."""
    return f"{PREFIX}:pool:{pool}:slots"


def pool_admitting(pool: str) -> str:
    """Sorted set: sessions admitted to the pool whose start job is not queued yet, scored
    by admission time (ms), so that concurrent admissions count each other."""
    return f"{PREFIX}:pool:{pool}:admitting"


def worker(worker_id: str) -> str:
    """Heartbeat with the worker's JSON status (short TTL)."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_signals(worker_id: str) -> str:
    """List: control messages for one worker (SDP offers, ICE candidates, end requests)."""
    return f"{PREFIX}:worker:{worker_id}:signals"


def reply(request_id: str) -> str:
    """List: the worker's answer to one control message."""
    return f"{PREFIX}:reply:{request_id}"


def queue(pool: str) -> str:
    """The arq queue (sorted set) of session start jobs for one pool."""
    return f"{PREFIX}:queue:{pool}"


def doorbell(pool: str) -> str:
    """A list the API pushes to once per start job queued; idle workers of the pool block
    on it instead of polling the queue (shared/queue.py ``ring``)."""
    return f"{PREFIX}:doorbell:{pool}"


def pool_seats(pool: str) -> str:
    """Set: ids of the pool's workers offering a seat (``worker_seat``) to the create step."""
    return f"{PREFIX}:pool:{pool}:seats"


SEAT_PREFIX = f"{PREFIX}:seat:"
"""What goes before a worker id in its seat's key (the create step builds the names)."""
SEATED_PREFIX = f"{PREFIX}:seated:"
"""What goes before a worker id in its seated list's key (the create step builds them)."""


def worker_seat(worker_id: str) -> str:
    """String with a short expiry: the worker's free slot with a pipeline running, offered
    to the API's create step while the worker waits for work (shared/seats.py)."""
    return f"{SEAT_PREFIX}{worker_id}"


def worker_seated(worker_id: str) -> str:
    """List: the session the create step seated in the worker's seat, for the worker's
    blocking pop to bring in (shared/seats.py)."""
    return f"{SEATED_PREFIX}{worker_id}"


def leases(scope: str, who: str) -> str:
    """Sorted set: a user's open event streams or requests in flight, scored by lease end."""
    return f"{PREFIX}:leases:{scope}:{who}"


def session_invites(session_id: str) -> str:
    """Set: ids of the users the owner invited into the session's Daily room."""
    return f"{PREFIX}:session:{session_id}:invites"
