"""Worker processes: pull session start jobs from a pool's queue and own the live pipelines."""

import os

# onnxruntime 1.32 (Silero VAD's runtime) reports usage to Microsoft from a thread of its
# own on Linux: it looks up mobile.events.data.microsoft.com every few seconds from the
# moment it is imported. A self-hosted worker sends nothing off its network
# unasked; the switch is read once, at onnxruntime's import, so it is set before any
# worker module imports it. An operator who wants the reports sets it to 0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
