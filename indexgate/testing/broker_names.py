"""The broker names one run uses, counted and deleted in one place.

Tests, benchmarks and chaos runs give every run its own queue, exchange and stream names
(a random suffix) on the shared Redis and RabbitMQ, and must leave nothing behind; the
chaos harness also waits until a run's queues stay empty. Both live here so the list of
names cannot drift between them.
"""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

from indexgate.events import redis_stream
from indexgate.events.publisher import queue_depth
from indexgate.settings import Settings


def _queues(settings: Settings) -> list[str]:
    return [settings.intake_queue, settings.task_queue, f"{settings.out_exchange}.probe"]


def _exchanges(settings: Settings) -> list[str]:
    # Celery declares a direct exchange named like the task queue
    return [settings.funnel_exchange, settings.out_exchange, settings.task_queue]


def delete_run_names(settings: Settings) -> None:
    """Delete the run's queues, exchanges and intake stream; best effort, never raises
    (a name may never have been declared, the broker may already be gone)."""
    if not settings.broker_url:
        return  # the embedded broker lives under data_dir, which the run deletes
    try:
        with Connection(settings.broker_url, connect_timeout=5) as conn:
            for name in _queues(settings):
                _quietly(lambda: Queue(name, channel=conn.channel()).delete())
            for name in _exchanges(settings):
                _quietly(lambda: Exchange(name, channel=conn.channel()).delete())
    except Exception:
        pass
    if redis_stream.uses_stream(settings):
        _delete_redis_keys(settings)


def _delete_redis_keys(settings: Settings) -> None:
    """kombu's Redis transport keeps each exchange's bindings in sets that deleting a queue
    declared elsewhere leaves behind; every name here carries this run's suffix."""
    bindings = [f"_kombu.{kind}.{name}" for name in _exchanges(settings) for kind in ("binding", "binding_permanent")]
    conn = redis_stream.client(settings)
    try:
        conn.delete(*bindings, *_queues(settings), redis_stream.stream_key(settings))
    except Exception:
        pass
    finally:
        conn.close()


def waiting_count(settings: Settings) -> int:
    """Messages of the run not yet finished: ready in its intake and task queues, plus
    intake stream entries not yet acked (Redis)."""
    with Connection(settings.resolved_broker_url, connect_timeout=2) as conn:
        total = sum(queue_depth(conn, name)[0] for name in (settings.intake_queue, settings.task_queue))
    if redis_stream.uses_stream(settings):
        conn = redis_stream.client(settings)
        try:
            total += conn.xlen(redis_stream.stream_key(settings))  # acked entries are deleted
        finally:
            conn.close()
    return total


def _quietly(action) -> None:
    try:
        action()
    except Exception:
        pass
