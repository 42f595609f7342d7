"""Thin Celery tasks: validate the payload, call one service function, return.

Cross-cutting policy lives once, in ``IndexgateTask``: at-least-once delivery settings,
retry with capped exponential backoff while the store is unavailable or contended, and the
one-line-per-outage logging. Dead-lettering lives in ``events.intake``.
"""

from __future__ import annotations

import random

from celery import Celery, Task

from indexgate import beat_schedule as names
from indexgate.events.intake import HandOff, ingest_batch
from indexgate.errors import StoreUnavailable, TransientError
from indexgate.schemas.records import ReleaseReason
from indexgate.workers.intake import INTAKE_TASK
from indexgate.workers.runtime import runtime, settings_of


class IndexgateTask(Task):
    acks_late = True  # ack only after the effect is committed
    reject_on_worker_lost = True  # a killed worker's message goes back to the queue
    max_retries = None  # a store outage must not lose events: retry until it is back

    def __call__(self, *args, **kwargs):
        # Celery's tracer sets up self.request; calling run directly keeps retries counted.
        rt = runtime(self.app)
        try:
            result = self.run(*args, **kwargs)
        except TransientError as exc:
            if isinstance(exc, StoreUnavailable):
                rt.outage.failed(exc)
            raise self.retry(exc=exc, countdown=self.backoff_s(), max_retries=None)
        rt.outage.succeeded()
        return result

    def backoff_s(self) -> float:
        """1, 2, 4 ... seconds, capped at ``store_retry_max_s``, with full jitter."""
        cap = settings_of(self.app).store_retry_max_s
        return random.uniform(0, min(cap, 2 ** (self.request.retries or 0)))


def register_tasks(app: Celery) -> None:
    def task(name: str):
        return app.task(name=name, base=IndexgateTask, bind=True, ignore_result=True, shared=False)

    @task(name=INTAKE_TASK)
    def intake(self, handoff: dict) -> list[dict]:
        rt = runtime(self.app)
        batch = HandOff.model_validate(handoff)
        return [o.as_dict() for o in ingest_batch(rt.service, rt.settings, batch, rt.acks(batch.consumer))]

    @task(name=names.SWEEP_TTL)
    def sweep_ttl(self) -> int:
        return len(runtime(self.app).service.sweep([ReleaseReason.TTL_EXPIRED]))

    @task(name=names.SWEEP_HEARTBEATS)
    def sweep_heartbeats(self) -> int:
        service = runtime(self.app).service
        return len(service.sweep([ReleaseReason.HEARTBEAT_MISSED])) + len(service.shadows.sweep())

    @task(name=names.HEALTH_SWEEP)
    def health_sweep(self) -> int:
        return len(runtime(self.app).service.refresh_health())

    @task(name=names.RETENTION)
    def retention(self) -> dict:
        return runtime(self.app).service.retention.run().model_dump()

    @task(name=names.RELAY_OUTBOX)
    def relay_outbox(self) -> int:
        return runtime(self.app).service.relay_outbox()
