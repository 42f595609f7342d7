"""Celery beat's periodic jobs (sweeps, outbox relay, retention), and nothing else.

Every sweep is idempotent (a sweep racing an event changes nothing twice). Any number of
beats may run: only the holder of the beat lease sends these jobs, each with its fencing
token (``indexgate.workers.beat``).
Intervals come from ``Settings`` (``INDEXGATE_*_INTERVAL_S``). The sweeps read only what is
due (``Store.branches_due``); retention prunes inbox keys, audit entries and dead letters.
"""

from __future__ import annotations

from typing import Any

from indexgate.settings import Settings

SWEEP_TTL = "indexgate.sweep_ttl"
SWEEP_HEARTBEATS = "indexgate.sweep_heartbeats"
HEALTH_SWEEP = "indexgate.health_sweep"
RELAY_OUTBOX = "indexgate.relay_outbox"
RETENTION = "indexgate.retention"


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` mapping for ``settings``; each entry expires after one period
    so a backlog of sweeps never piles up behind a stopped worker."""

    def every(task: str, interval_s: float) -> dict[str, Any]:
        return {"task": task, "schedule": interval_s, "options": {"expires": interval_s}}

    return {
        "ttl-cleanup": every(SWEEP_TTL, settings.ttl_sweep_interval_s),
        "heartbeat-cleanup": every(SWEEP_HEARTBEATS, settings.heartbeat_sweep_interval_s),
        "health-sweep": every(HEALTH_SWEEP, settings.health_sweep_interval_s),
        "outbox-relay": every(RELAY_OUTBOX, settings.outbox_relay_interval_s),
        "retention": every(RETENTION, settings.retention_interval_s),
    }
