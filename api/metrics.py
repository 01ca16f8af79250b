"""The API's Prometheus metrics (prometheus-client's default registry).

Labels are bounded sets (pool, transport, profile, state, reason, route
template, status) — never session or user ids.
"""

from prometheus_client import Counter, Gauge, Histogram, Info

from shared.fleet import PROTOCOL
from shared.lifecycle import FAILURES, SessionState
from shared.settings import Settings

INFO = Info(
    "voicepool_api",
    "This API's voicepool version and worker protocol (equal protocols run together).",
)
SESSIONS_REQUESTED = Counter(
    "voicepool_sessions_requested_total",
    "Sessions requested through the API.",
    ["pool", "transport", "profile"],
)
SESSIONS_REFUSED = Counter(
    "voicepool_sessions_refused_total",
    "Session requests refused at admission "
    "(no_workers, queue_full, no_capacity, too_many_sessions).",
    ["pool", "reason"],
)
SESSIONS_SPILLED = Counter(
    "voicepool_sessions_spilled_total",
    "Sessions sent to a pool's fallback (VOICEPOOL_POOL_FALLBACKS): the pool couldn't "
    "take them (reason: its refusal), or they waited there too long (reason: waited).",
    ["pool", "to", "reason"],
)
SESSIONS_SEATED = Counter(
    "voicepool_sessions_seated_total",
    "Sessions made ready in their create step, in a waiting worker's seat (shared/seats.py), "
    "instead of queued: the rest of the requested ones went through the queue.",
    ["pool"],
)
SESSIONS_STARTED = Counter(
    "voicepool_sessions_started_total",
    "Sessions that reached ready.",
    ["pool", "transport", "profile"],
)
SESSIONS_RECOVERING = Counter(
    "voicepool_sessions_recovering_total",
    "Calls moved to another worker (recovering): their worker was lost, or drained.",
    ["pool", "transport", "profile", "reason"],
)
SESSIONS_ENDED = Counter(
    "voicepool_sessions_ended_total",
    "Sessions that reached a final state.",
    ["pool", "transport", "profile", "state", "reason"],
)
DISPATCH_SECONDS = Histogram(
    "voicepool_dispatch_seconds",
    "From the session request to the ready state.",
    ["pool"],
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
QUEUE_WAIT_SECONDS = Histogram(
    "voicepool_queue_wait_seconds",
    "From the session request to a worker taking it.",
    ["pool"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
QUEUE_DEPTH = Gauge("voicepool_queue_depth", "Session start jobs waiting, per pool.", ["pool"])
LIVE_SESSIONS = Gauge(
    "voicepool_live_sessions", "Sessions not yet ended, per pool and state.", ["pool", "state"]
)
POOL_WORKERS = Gauge("voicepool_pool_workers", "Workers with a live heartbeat.", ["pool"])
POOL_WORKERS_STALLED = Gauge(
    "voicepool_pool_workers_stalled",
    "Workers whose heartbeat lives but whose queue poll loop has not run for a few seconds.",
    ["pool"],
)
POOL_CAPACITY = Gauge(
    "voicepool_pool_capacity_sessions", "Session slots of live, non-draining workers.", ["pool"]
)
PERSISTED_EVENTS = Counter(
    "voicepool_persister_events_total", "Events stored by the persister (new rows)."
)
PERSIST_BATCH_SECONDS = Histogram(
    "voicepool_persister_batch_seconds",
    "Time to store and acknowledge one batch of events.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PERSISTER_PENDING = Gauge(
    "voicepool_persister_pending_entries",
    "Ingest stream entries delivered but not yet acknowledged, plus not yet read.",
)
REAPED_SESSIONS = Counter(
    "voicepool_reaped_sessions_total", "Sessions ended by the reaper.", ["reason"]
)
REQUESTS_REFUSED = Counter(
    "voicepool_http_requests_refused_total",
    "Requests refused before authentication: their credential had too many in flight.",
)
SSE_CLIENTS = Gauge("voicepool_sse_clients", "Open Server-Sent Event streams.")
HTTP_REQUESTS = Counter(
    "voicepool_http_requests_total", "HTTP requests by route and status.", ["route", "status"]
)

# Label sets alerts rate() over exist from the start, so their first increment counts.
for _reason in ("worker_lost", "no_capacity"):
    REAPED_SESSIONS.labels(reason=_reason)

REFUSALS = ("no_workers", "queue_full", "no_capacity", "too_many_sessions")


def prime(settings: Settings, version: str) -> None:
    """Create, at 0, the series of this deployment's failures and refusals: a counter's
    first value is invisible to rate() and increase(), so a series born at 1 (the first
    worker_lost of a pool, say) would never fire an alert. One per pool, transport, profile
    and failure reason: a few dozen series per pool."""
    INFO.info({"version": version, "protocol": str(PROTOCOL)})
    for pool in settings.pools:
        for reason in REFUSALS:
            SESSIONS_REFUSED.labels(pool=pool, reason=reason)
        for transport in settings.available_transports:
            for profile in settings.available_profiles:
                for reason in FAILURES:
                    SESSIONS_ENDED.labels(
                        pool=pool, transport=transport, profile=profile,
                        state=SessionState.FAILED, reason=reason,
                    )  # fmt: skip
