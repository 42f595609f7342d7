"""Worker-side Prometheus metrics: what the pool processes count as they apply events.

Celery's prefork pool runs tasks in several child processes, each with its own memory, so
these series use prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR``
set for the worker, every child writes its values to files in that folder, which the
worker wipes when it starts (``wipe``) and whose live gauges of a finished child are
dropped (``mark_dead``). ``indexgate serve`` merges the files found below
``INDEXGATE_WORKER_METRICS_DIR`` (``merged_families``) into its ``/metrics``. Counters and
histograms are summed over the children; the last-sweep timestamps keep their maximum, so
they survive the child that wrote them.

What is *state* (locks by health, their age and deadlines, shadow builds, the intake
backlog, whether the store answers) is not counted here but read from the store and the
broker when ``/metrics`` is scraped (``indexgate.api.metrics``): one source of truth, right
after a restart too. Labels are bounded: event types by their catalog kind (``type="indexing.heartbeat"``,
``unknown`` for anything else), outcome statuses, sweep names; never ids.

The metric objects are built on first use (``worker_metrics``), in the process that counts,
so importing this module opens no file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Sequence

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from indexgate.outcomes import Outcome, Status
from indexgate.switch_policy import SwitchResult

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BLACKOUT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SWITCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SWEEP_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class WorkerMetrics:
    events: Counter
    dead_letters: Counter
    store_errors: Counter
    switches: Counter
    blackout: Histogram
    switch_duration: Histogram
    sweep_duration: Histogram
    sweep_last: Gauge


@cache
def worker_metrics() -> WorkerMetrics:
    return WorkerMetrics(
        events=Counter("indexgate_events_total", "Funnel events applied by the workers, by type (its catalog "
                       "kind, e.g. indexing.heartbeat; unknown for any other) and outcome", ["type", "outcome"]),
        dead_letters=Counter("indexgate_dead_letters_total", "Messages dead-lettered by the workers, by type "
                             "(catalog kind or unknown)", ["type"]),
        store_errors=Counter("indexgate_store_errors_total",
                             "Worker tasks that found the store unavailable (each is retried with backoff)",
                             ["task"]),
        switches=Counter("indexgate_switches_total", "Shadow switches and rollbacks run by the workers, by "
                         "outcome (switched, validation_failed, refused, branch_busy, rolled_back)", ["outcome"]),
        blackout=Histogram("indexgate_switch_blackout_seconds",
                           "How long a switch blocked writes (switch lock held)", buckets=BLACKOUT_BUCKETS_S),
        switch_duration=Histogram("indexgate_switch_duration_seconds",
                                  "A switch from validation to its record", buckets=SWITCH_BUCKETS_S),
        sweep_duration=Histogram("indexgate_sweep_duration_seconds", "Duration of beat's periodic tasks",
                                 ["sweep"], buckets=SWEEP_BUCKETS_S),
        sweep_last=Gauge("indexgate_sweep_last_run_timestamp_seconds",
                         "Unix time the periodic task last finished successfully", ["sweep"],
                         multiprocess_mode="max"),
    )


def count_events(kinds: Sequence[str], outcomes: Sequence[Outcome]) -> None:
    """One applied batch: ``kinds[i]`` is the catalog kind of the event ``outcomes[i]`` is of."""
    m = worker_metrics()
    for kind, outcome in zip(kinds, outcomes):
        m.events.labels(kind, str(outcome.status)).inc()
        if outcome.status is Status.DEAD_LETTERED:
            m.dead_letters.labels(kind).inc()


def observe_switch(result: SwitchResult) -> None:
    """A switch or rollback ended (``Shadows.on_switch``): its outcome and durations."""
    m = worker_metrics()
    m.switches.labels(str(result.status)).inc()
    if result.blackout_ms is not None:
        m.blackout.observe(result.blackout_ms / 1000)
    if result.switch_duration_ms is not None:
        m.switch_duration.observe(result.switch_duration_ms / 1000)


def store_error(task: str) -> None:
    worker_metrics().store_errors.labels(task).inc()


def sweep_done(sweep: str, seconds: float, finished_at_s: float) -> None:
    m = worker_metrics()
    m.sweep_duration.labels(sweep).observe(seconds)
    m.sweep_last.labels(sweep).set(finished_at_s)


# --- the multiprocess folder -------------------------------------------------------------

def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def wipe(folder: Path) -> int:
    """Delete the value files of a previous run (the worker's start, before its pool
    forks): a restarted worker's children reuse pids, and stale files would add to them."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def mark_dead(pid: int) -> None:
    """A pool child ended: drop its live-gauge files (prometheus_client's own rule)."""
    if multiproc_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def merged_families(folder: Path, skip_pid: int | None = None) -> list[Metric]:
    """Every series in the multiprocess files below ``folder`` (subfolders too: one per
    worker when several share a volume), merged as prometheus_client merges one folder.
    ``skip_pid``: the reading process's own files, which its own registry reports."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = sorted(str(path) for path in folder.rglob("*.db")
                   if skip_pid is None or not path.stem.endswith(f"_{skip_pid}"))
    return list(MultiProcessCollector.merge(files, accumulate=True)) if files else []
