"""Pipeline heartbeats, counted.

With ``PipelineParams(enable_heartbeats=True)`` a ``PipelineWorker`` queues a
``HeartbeatFrame`` into its pipeline every ``heartbeats_period_secs`` (here
``HEARTBEAT_PERIOD_S``) and waits for it at the sink. When none arrives for
``heartbeats_monitor_secs`` it logs a warning and fires its ``on_heartbeat_timeout``
event, again every ``heartbeats_monitor_secs`` for as long as the stall lasts: a
processor is stuck (or the whole event loop is; see worker/loop_monitor.py). This
module counts those events.

Heartbeats are ordinary control frames, so the output transport plays them
out in order with the bot's audio: a reply the model streams faster than real
time holds them back by however much audio is queued ahead of playback. The
monitor timeout is set well above that; a heartbeat timeout that fires once and
not again can still be a very long bot reply, a stuck pipeline fires repeatedly.
"""

from __future__ import annotations

import logging

from pipecat.pipeline.worker import PipelineWorker

from worker import metrics

log = logging.getLogger(__name__)

# Pipecat's default is 10 s; longer so that bot audio queued ahead of playback
# (which heartbeats wait behind) rarely counts as a stall.
HEARTBEAT_MONITOR_S = 20.0
# Pipecat's default is 1 s. Each heartbeat is a frame through every processor: at 1 s they
# were the largest part of what a warm pipeline costs with nobody on it (worker/warm.py;
# uvloop, 10 s: 0.0018-0.0020 cores at 1 s, 0.0011-0.0012 at 5 s), and of a worker idle
# with one (anchor.py's idle row: 0.006 -> 0.005 cores). A stall is still seen at
# HEARTBEAT_MONITOR_S, with four heartbeats missed instead of twenty.
HEARTBEAT_PERIOD_S = 5.0


def count_heartbeat_timeouts(worker: PipelineWorker, *, pool: str, session_id: str) -> None:
    """Count ``worker``'s heartbeat timeouts (it needs ``enable_heartbeats=True``)."""
    timeouts = metrics.PIPELINE_HEARTBEAT_TIMEOUTS.labels(pool=pool)  # exported from 0 on

    def _timed_out(_worker: PipelineWorker) -> None:
        timeouts.inc()
        log.warning("session %s: its pipeline passed no heartbeat in time", session_id)

    worker.add_event_handler("on_heartbeat_timeout", _timed_out)
