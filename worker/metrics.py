"""A worker's Prometheus metrics, served on its own port (``--metrics-port``).

Labels are bounded (pool, tool name from the config, outcome, error kind);
never session ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
# From a healthy loop's scheduling noise (≤ 1 ms) to a stall that breaks every call.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

INFO = Info(
    "voicepool_worker",
    "This worker's voicepool version and API protocol (equal protocols run together).",
)
CAPACITY = Gauge("voicepool_worker_capacity_sessions", "Session slots of this worker.", ["pool"])
ACTIVE = Gauge("voicepool_worker_active_sessions", "Sessions this worker runs now.", ["pool"])
DRAINING = Gauge("voicepool_worker_draining", "1 while the worker drains.", ["pool"])
WARM_PIPELINES = Gauge(
    "voicepool_worker_warm_pipelines",
    "Pipelines running ahead of any session, for a WebSocket session to take (worker/warm.py).",
    ["pool"],
)
MODEL_SOCKETS_SPARE = Gauge(
    "voicepool_worker_model_sockets_spare",
    "Realtime model sockets open ahead of any assistant session (worker/model_sockets.py).",
    ["pool"],
)
MODEL_SOCKETS_TAKEN = Counter(
    "voicepool_worker_model_sockets_taken_total",
    "Assistant model connections that took a socket opened ahead instead of connecting.",
    ["pool"],
)
SESSION_STARTS = Counter(
    "voicepool_worker_session_starts_total",
    "Sessions started, by pipeline: warm (taken running, built ahead) or built (at the start).",
    ["pool", "pipeline"],
)
SESSION_SECONDS = Histogram(
    "voicepool_worker_session_duration_seconds",
    "How long sessions ran on this worker, by how they ended.",
    ["pool", "reason"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
TOOL_SECONDS = Histogram(
    "voicepool_tool_call_duration_seconds",
    "Tool call duration by tool and outcome (ok, error, timeout).",
    ["tool", "outcome"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
MODEL_TTFB_SECONDS = Histogram(
    "voicepool_model_ttfb_seconds",
    "Time to first byte of the model's answers.",
    ["pool"],
    buckets=LATENCY_BUCKETS,
)
USER_BOT_LATENCY_SECONDS = Histogram(
    "voicepool_user_bot_latency_seconds",
    "From the user stopping speaking to the bot starting to speak.",
    ["pool"],
    buckets=LATENCY_BUCKETS,
)
PIPELINE_ERRORS = Counter(
    "voicepool_pipeline_errors_total", "Pipeline errors by kind.", ["pool", "kind"]
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "voicepool_worker_event_loop_lag_seconds",
    "How late the worker's event loop woke a sleeping task (sampled; see worker/loop_monitor.py).",
    ["pool"],
    buckets=LOOP_LAG_BUCKETS,
)
PIPELINE_HEARTBEAT_TIMEOUTS = Counter(
    "voicepool_worker_pipeline_heartbeat_timeouts_total",
    "Pipecat heartbeat timeouts: a session's pipeline passed no heartbeat frame in time.",
    ["pool"],
)
PUBLISH_ERRORS = Counter(
    "voicepool_event_publish_errors_total", "Events that could not be published to Redis."
)
EVENTS_BUFFERED = Gauge(
    "voicepool_worker_events_buffered",
    "Events held in memory until Redis takes them (non-zero while Redis is away).",
)
EVENTS_DROPPED = Counter(
    "voicepool_worker_events_dropped_total",
    "Events dropped because a session's buffer filled during a Redis outage "
    "(each gap is recorded as a session.gap event).",
)
SUPERVISED_RESTARTS = Counter(
    "voicepool_worker_task_restarts_total",
    "Restarts of a worker's long-lived tasks after a transient failure (Redis away).",
    ["task"],
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` (port 0: not at all)."""
    if port:
        start_http_server(port, addr=host)
