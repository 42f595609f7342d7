"""``GET /metrics``: Prometheus text exposition (no token, like ``/healthz``: counts only).

Three sources, each named by where its numbers come from (see ``indexgate.metrics``):

- *state, read at scrape time* from the store and the broker (``overview``): locks by
  health and kind, the oldest lock's age, the least time to a deadline, locks held past
  their ETA, shadow builds by state, active indexes, the intake backlog and its oldest
  unacked event's age, whether the store and the broker answer, the sweep intervals;
- *the worker's counters*, merged from its prometheus_client multiprocess files below
  ``INDEXGATE_WORKER_METRICS_DIR`` (events by type and outcome, dead letters, store errors,
  switches, blackout and duration histograms, sweep durations and last runs);
- *this process's own* (``API_REGISTRY``): checks answered, store errors seen by the API.
"""

from __future__ import annotations

import os
from typing import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from indexgate import metrics as worker_side
from indexgate.api.context import context
from indexgate.api.overview import Overview
from indexgate.beat_schedule import build_schedule
from indexgate.schemas.records import Health, LockKind
from indexgate.schemas.shadows import ShadowState
from indexgate.settings import Settings

router = APIRouter()
API_REGISTRY = CollectorRegistry(auto_describe=True)
CHECKS = Counter("indexgate_api_checks_total", "Permission checks answered by this API process, by answer "
                 "(allowed, denied, unknown)", ["answer"], registry=API_REGISTRY)
STORE_ERRORS_SEEN = Counter("indexgate_api_store_errors_total", "Store calls of this API process that failed "
                            "or timed out, by error", ["error"], registry=API_REGISTRY)


def store_error_seen(exc: Exception) -> None:
    STORE_ERRORS_SEEN.labels(type(exc).__name__).inc()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    ctx = context(request)
    view = await request.app.state.watch.overview(ctx.service, ctx.calls)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Families(list(state_families(view, ctx.settings)) + worker_families(ctx.settings)))
    return Response(generate_latest(scrape) + generate_latest(API_REGISTRY), media_type=CONTENT_TYPE_LATEST)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def worker_families(settings: Settings) -> list[Metric]:
    folder = settings.worker_metrics_dir
    if folder is None or not folder.is_dir():
        return []
    return worker_side.merged_families(folder, skip_pid=os.getpid())


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    if value is not None:
        family.add_metric([], value)
    return family


def state_families(view: Overview, settings: Settings) -> Iterator[Metric]:
    now = view.at
    yield _gauge("indexgate_store_up", "1 when the store answered this scrape within the API's deadline",
                 float(view.store is not None))
    yield _gauge("indexgate_broker_up", "1 when the broker reported the intake backlog for this scrape",
                 float(view.backlog is not None))
    sweeps = _gauge("indexgate_sweep_interval_seconds", "Configured period of each beat task", labels=["sweep"])
    for entry in build_schedule(settings).values():
        sweeps.add_metric([entry["task"].removeprefix("indexgate.")], float(entry["schedule"]))
    yield sweeps
    if view.store is not None:
        yield from _lock_families(view, now)
        builds = _gauge("indexgate_shadow_builds", "Shadow builds by effective state", labels=["state"])
        counts = {state: 0 for state in ShadowState}
        for _build, state in view.store.builds:
            counts[state] += 1
        for state, count in counts.items():
            builds.add_metric([str(state)], count)
        yield builds
        yield _gauge("indexgate_active_indexes", "(branch, index_type) pairs with an active index pointer",
                     sum(1 for index in view.store.indexes if index.active is not None))
        yield from _lease_families(view, now)
    if view.backlog is not None:
        backlog = view.backlog
        yield _gauge("indexgate_intake_backlog", "Funnel events waiting to be applied (Redis: entries in the intake "
                     "stream + kombu messages not yet moved; RabbitMQ / embedded: ready messages in the intake queue)",
                     backlog.waiting)
        if backlog.unacked is not None:
            yield _gauge("indexgate_intake_unacked", "Intake events handed to a worker and not yet acked",
                         backlog.unacked)
        if backlog.oldest_age_s is not None:
            yield _gauge("indexgate_intake_oldest_unacked_age_seconds", "Age of the oldest funnel event not yet "
                         "applied (Redis only: AMQP shows no message ages)", backlog.oldest_age_s)
        alerts = _gauge("indexgate_intake_alerts", "Alerts of `indexgate intake status`, by kind", labels=["alert"])
        for kind in ("no_reader", "not_declared"):
            alerts.add_metric([kind], sum(1 for a in backlog.alerts if a["alert"] == kind))
        yield alerts


def _lock_families(view: Overview, now) -> Iterator[Metric]:
    assert view.store is not None
    locks = view.store.locks
    by = _gauge("indexgate_locks", "Stored locks by health (critical = dead, until a sweep removes it) and kind",
                labels=["health", "kind"])
    counts = {(health, kind): 0 for health in Health for kind in LockKind}
    for v in locks:
        counts[(v.health, v.lock.kind)] += 1
    for (health, kind), count in counts.items():
        by.add_metric([str(health), str(kind)], count)
    yield by
    yield _gauge("indexgate_lock_oldest_age_seconds", "Age of the oldest stored lock (0: none)",
                 max(((now - v.lock.acquired_at).total_seconds() for v in locks), default=0.0))
    if locks:
        yield _gauge("indexgate_lock_time_to_deadline_min_seconds", "Least time until a lock's heartbeat deadline "
                     "or TTL (negative: past it); absent without locks",
                     min((min(v.heartbeat_deadline, v.lock.expires_at) - now).total_seconds() for v in locks))
    yield _gauge("indexgate_locks_past_eta", "Locks in force whose holder's last ETA (last heartbeat + estimated "
                 "remaining) has passed", sum(1 for v in locks if v.in_force and _past_eta(v, now)))


def _lease_families(view: Overview, now) -> Iterator[Metric]:
    assert view.store is not None
    lease = view.store.beat_lease
    yield _gauge("indexgate_beat_lease_held", "1 while a beat holds the beat lease (only its holder sends sweeps)",
                 float(lease is not None and lease.alive(now)))
    if lease is not None:
        yield _gauge("indexgate_beat_lease_token", "Fencing token of the beat lease (+1 at each change of holder)",
                     lease.token)


def _past_eta(v, now) -> bool:
    remaining = v.lock.estimated_remaining_s
    return remaining is not None and (now - v.lock.last_heartbeat).total_seconds() > remaining
