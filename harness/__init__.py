"""The test and benchmark harness: the system launcher (real processes), clients (HTTP, SSE,
WebRTC, protobuf WebSocket), a PostgreSQL cluster and protocol doubles (OpenAI Realtime,
Daily REST, the nested team, a ``claude`` stand-in) that tests/ and ops/ share.

Production code (api, worker, shared, voicepool) never imports it; deploy/Dockerfile leaves
it out of the image.
"""
