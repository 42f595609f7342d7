"""Thin Celery tasks: validate the payload, call one service function, return.

Cross-cutting policy lives once, in ``IndexgateTask``: at-least-once delivery settings,
retry with capped exponential backoff while the store is unavailable or contended, the
one-line-per-outage logging, and the worker's metrics (store errors, sweep durations and
last runs; events by type and outcome in ``apply_batch``). Dead-lettering lives in
``events.intake``.

Funnel events are applied by one task per event kind (``indexgate.indexing.heartbeat``,
``indexgate.shadow.switch``, ... ``indexgate.unknown`` for a kind that cannot be told; the
old single name ``indexgate.intake`` is still served for tasks queued before an upgrade),
so Flower lists them by kind. A batch that dead-lettered anything ends in FAILURE
(``DeadLettered``) *after* its letters and effects were committed and acked: Celery acks a
failed task too (``task_acks_on_failure_or_timeout``) and never retries it, so nothing is
lost or applied twice, and a dead letter never shows as SUCCESS.
"""

from __future__ import annotations

import random
import time

from celery import Celery, Task

from indexgate import beat_schedule as names
from indexgate import metrics
from indexgate.events.intake import HandOff, ingest_batch
from indexgate.events.labels import TASK_NAMES, Label, label_of
from indexgate.errors import DeadLettered, Fenced, StoreUnavailable, TransientError
from indexgate.leases import BEAT, Fence
from indexgate.outcomes import Outcome, Status
from indexgate.schemas.records import ReleaseReason
from indexgate.service import Service
from indexgate.workers.intake import INTAKE_TASK
from indexgate.workers.runtime import runtime, settings_of

SWEEPS = frozenset({names.SWEEP_TTL, names.SWEEP_HEARTBEATS, names.HEALTH_SWEEP, names.RELAY_OUTBOX, names.RETENTION})
RESULT_MAX_CHARS = 800  # what Flower shows of a result (Celery cuts its repr at 1024)


class IndexgateTask(Task):
    acks_late = True  # ack only after the effect is committed
    reject_on_worker_lost = True  # a killed worker's message goes back to the queue
    max_retries = None  # a store outage must not lose events: retry until it is back
    throws = (DeadLettered, Fenced)  # expected: logged as one line, no traceback

    def __call__(self, *args, **kwargs):
        # Celery's tracer sets up self.request; calling run directly keeps retries counted.
        rt = runtime(self.app)
        started = time.perf_counter()
        try:
            result = self.run(*args, **kwargs)
        except TransientError as exc:
            if isinstance(exc, StoreUnavailable):
                rt.outage.failed(exc)
                metrics.store_error(self.name)
            raise self.retry(exc=exc, countdown=self.backoff_s(), max_retries=None)
        except DeadLettered:
            rt.outage.succeeded()  # the store took the letters: it answers
            raise
        rt.outage.succeeded()
        if self.name in SWEEPS:
            metrics.sweep_done(self.name.removeprefix("indexgate."), time.perf_counter() - started, time.time())
        return result

    def backoff_s(self) -> float:
        """1, 2, 4 ... seconds, capped at ``store_retry_max_s``, with full jitter."""
        cap = settings_of(self.app).store_retry_max_s
        return random.uniform(0, min(cap, 2 ** (self.request.retries or 0)))


def apply_batch(task: Task, handoff: dict) -> dict:
    """Apply one hand-off; count it; a batch with dead letters ends in ``DeadLettered``."""
    rt = runtime(task.app)
    batch = HandOff.model_validate(handoff)
    labels = [label_of(item.raw) for item in batch.items]
    outcomes = ingest_batch(rt.service, rt.settings, batch, rt.acks(batch.consumer), labels)
    metrics.count_events([label.kind for label in labels], outcomes)
    dead = [(label, o) for label, o in zip(labels, outcomes) if o.status is Status.DEAD_LETTERED]
    if dead:
        raise DeadLettered(_dead_message(dead, labels, outcomes))
    return batch_result(labels, outcomes)


def batch_result(labels: list[Label], outcomes: list[Outcome]) -> dict:
    """Counts by status, and each event's id and status (cut for Flower)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[str(outcome.status)] = counts.get(str(outcome.status), 0) + 1
    each = "; ".join(f"{label.event_id or '?'} {outcome.status}" for label, outcome in zip(labels, outcomes))
    return {"outcomes": counts, "events": each[:RESULT_MAX_CHARS]}


def _dead_message(dead: list[tuple[Label, Outcome]], labels: list[Label], outcomes: list[Outcome]) -> str:
    letters = "; ".join(f"{label.text()} -> letter {o.ref}: {o.detail[:300]}" for label, o in dead[:5])
    more = f" (+{len(dead) - 5} more)" if len(dead) > 5 else ""
    rest = batch_result(labels, outcomes)["outcomes"]
    return (f"{len(dead)} of {len(outcomes)} event(s) dead-lettered (committed; see `indexgate deadletters list`): "
            f"{letters}{more}; batch outcomes {rest}")


def beat_job(task: Task, lease_token: int | None) -> tuple[Service, Fence]:
    """The service and the fence of a beat job: beat sends its lease's fencing token
    (``workers.beat``); a job without one (run by hand) is not fenced."""
    service = runtime(task.app).service
    return service, service.leases.fence(BEAT, lease_token)


def register_tasks(app: Celery) -> None:
    def task(name: str):
        return app.task(name=name, base=IndexgateTask, bind=True, ignore_result=True, shared=False)

    def intake(self, handoff: dict) -> dict:
        return apply_batch(self, handoff)

    for name in (*TASK_NAMES, INTAKE_TASK):
        task(name=name)(intake)

    @task(name=names.SWEEP_TTL)
    def sweep_ttl(self, lease_token: int | None = None) -> int:
        service, fence = beat_job(self, lease_token)
        return len(service.sweep([ReleaseReason.TTL_EXPIRED], fence))

    @task(name=names.SWEEP_HEARTBEATS)
    def sweep_heartbeats(self, lease_token: int | None = None) -> int:
        service, fence = beat_job(self, lease_token)
        return len(service.sweep([ReleaseReason.HEARTBEAT_MISSED], fence)) + len(service.shadows.sweep(fence))

    @task(name=names.HEALTH_SWEEP)
    def health_sweep(self, lease_token: int | None = None) -> int:
        service, fence = beat_job(self, lease_token)
        return len(service.refresh_health(fence))

    @task(name=names.RETENTION)
    def retention(self, lease_token: int | None = None) -> dict:
        service, fence = beat_job(self, lease_token)
        return service.retention.run(fence).model_dump()

    @task(name=names.RELAY_OUTBOX)
    def relay_outbox(self, lease_token: int | None = None) -> int:
        service, fence = beat_job(self, lease_token)
        return service.relay_outbox(fence=fence)
