"""The HTTP API: sessions, signalling relay, SSE, history, health and metrics."""
