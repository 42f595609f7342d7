"""The broker names one run uses, counted and deleted in one place.

Tests, benchmarks and chaos runs give every run its own queue, exchange and stream names
(a random suffix) on the shared Redis and RabbitMQ, and must leave nothing behind; the
chaos harness also waits until a run's queues stay empty. Both live here so the list of
names cannot drift between them; what each broker keeps under those names is its intake
transport's business (``events.brokers``).
"""

from __future__ import annotations

from indexgate.events.brokers import transport_for
from indexgate.settings import Settings


def _queues(settings: Settings) -> list[str]:
    return [settings.intake_queue, settings.task_queue, f"{settings.out_exchange}.probe"]


def _exchanges(settings: Settings) -> list[str]:
    # Celery declares a direct exchange named like the task queue
    return [settings.funnel_exchange, settings.out_exchange, settings.task_queue]


def delete_run_names(settings: Settings) -> None:
    """Delete the run's queues, exchanges and intake stream; best effort, never raises
    (a name may never have been declared, the broker may already be gone)."""
    transport = transport_for(settings)
    try:
        transport.teardown(_queues(settings), _exchanges(settings))
    finally:
        transport.close()


def waiting_count(settings: Settings) -> int:
    """Messages of the run not yet finished: ready in its intake and task queues, plus
    intake stream entries not yet acked (Redis)."""
    transport = transport_for(settings)
    try:
        return transport.waiting([settings.intake_queue, settings.task_queue])
    finally:
        transport.close()
