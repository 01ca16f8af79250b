"""A worker's Prometheus metrics, served on its own port (``--metrics-port``).

Labels are bounded (pool, tool name from the config, outcome, error kind);
never session ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

CAPACITY = Gauge("voicepool_worker_capacity_sessions", "Session slots of this worker.", ["pool"])
ACTIVE = Gauge("voicepool_worker_active_sessions", "Sessions this worker runs now.", ["pool"])
DRAINING = Gauge("voicepool_worker_draining", "1 while the worker drains.", ["pool"])
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
PUBLISH_ERRORS = Counter(
    "voicepool_event_publish_errors_total", "Events that could not be published to Redis."
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` (port 0: not at all)."""
    if port:
        start_http_server(port, addr=host)
