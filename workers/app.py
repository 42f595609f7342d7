"""The Celery app factory and the reliability settings everything depends on.

Why each setting (see also the README's operations section):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only after its
  effect is committed; a SIGKILLed worker's message is redelivered, and the idempotent
  service makes the second delivery harmless.
- ``worker_prefetch_multiplier=1``: a crashed worker holds back as few messages as possible.
- Redis ``visibility_timeout`` (600 s) is above the task time limit (300 s) and the longest
  retry backoff (60 s), so running or waiting tasks are not delivered twice, while a
  crashed worker's messages come back within ten minutes.
- RabbitMQ ``confirm_publish``: the intake acks a funnel message only after the broker
  confirmed the hand-off task.
- ``beat_scheduler``: every beat competes for one lease in the store and only its holder
  sends (``workers.beat``), so a second beat, or ``-B`` next to a ``celery beat``, is safe.
- Shutdown: SIGTERM is Celery's warm shutdown, bounded by ``INDEXGATE_SHUTDOWN_TIMEOUT_S``
  (``workers.shutdown``): past it, the worker turns cold and what still runs goes back to
  the broker.
- Task events off by default: publishing them cost the worker a third of its event
  throughput (bench/RESULTS.md). Flower switches them on at runtime (its
  ``enable_events``), or set ``INDEXGATE_TASK_EVENTS=true``.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Callable

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from kombu.utils.url import maybe_sanitize_url

from indexgate import logs, metrics
from indexgate.beat_schedule import build_schedule
from indexgate.events.brokers import transport_for
from indexgate.errors import StoreUnavailable
from indexgate.settings import TASK_TIME_LIMIT_S, Settings, check_celery_broker
from indexgate.store import initialize_store
from indexgate.workers.intake import IntakeStep, StreamStep
from indexgate.workers.runtime import reset
from indexgate.workers.shutdown import BoundedShutdown
from indexgate.workers.tasks import register_tasks


log = logging.getLogger(__name__)
BEAT_SCHEDULER = "indexgate.workers.beat:LeaseScheduler"


def create_app(settings: Settings | None = None, on_switch_step: Callable[[str], None] | None = None) -> Celery:
    """A configured Celery app; connects to nothing until a worker or producer starts.
    ``on_switch_step`` is called at each step of a switch (tests inject faults with it)."""
    settings = settings or Settings.from_env()
    check_celery_broker(settings, os.environ)  # a `celery -b` / CELERY_BROKER_URL that disagrees stops it
    transport = transport_for(settings)
    app = Celery("indexgate", set_as_current=False)
    app.indexgate_settings = settings  # type: ignore[attr-defined]
    app.indexgate_transport = transport  # type: ignore[attr-defined]
    app.indexgate_on_switch_step = on_switch_step  # type: ignore[attr-defined]
    app.conf.update(
        **transport.celery_config(),  # a plain broker URL; our patched kombu transport by its alias
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S,
        task_soft_time_limit=TASK_TIME_LIMIT_S - 60,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        beat_schedule=build_schedule(settings),
        beat_scheduler=BEAT_SCHEDULER,  # any number of beats: one sends, under a lease (workers.beat)
        beat_enable_remote_control=True,  # `celery inspect ping -d celerybeat@<host>` probes a beat
        timezone="UTC",
        enable_utc=True,
    )
    app.steps["consumer"].add(IntakeStep)  # each step includes itself only for its transport's IntakeMode
    app.steps["worker"].add(StreamStep)
    app.steps["worker"].add(BoundedShutdown)  # SIGTERM waits for running tasks up to INDEXGATE_SHUTDOWN_TIMEOUT_S
    register_tasks(app)
    _connect_signals(app)
    _connect_observability(app)
    return app


def _connect_observability(app: Celery) -> None:
    """JSON or text logs (``INDEXGATE_LOG_FORMAT``); the metrics folder wiped at the worker's
    start, before its pool forks, and a finished pool child marked dead (``indexgate.metrics``)."""
    logs.install_celery(app.indexgate_settings.log_format == "json")  # type: ignore[attr-defined]

    def wipe_metrics(sender=None, **_) -> None:
        folder = metrics.multiproc_dir()
        if getattr(sender, "app", None) is app and folder is not None:
            metrics.wipe(folder)
            log.info("worker metrics: prometheus multiprocess files in %s (wiped at start)", folder)

    def child_ended(pid=None, **_) -> None:
        metrics.mark_dead(pid or os.getpid())

    worker_init.connect(wipe_metrics, weak=False)
    worker_process_shutdown.connect(child_ended, weak=False)


def _connect_signals(app: Celery) -> None:
    def make_dirs(**_) -> None:
        app.indexgate_settings.ensure_data_dirs()  # type: ignore[attr-defined]
        app.indexgate_transport.prepare()  # type: ignore[attr-defined]  # the embedded broker's folders

    def freeze(**_) -> None:
        # Everything loaded by now lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stalled a pool process for ~45 ms now
        # and then (seen as one 55 ms switch blackout among 6 ms ones in the benchmark).
        gc.freeze()

    def initialize(sender=None, **_) -> None:
        if getattr(sender, "app", None) is not app:
            return  # another app's worker in this process (tests run several)
        settings = app.indexgate_settings  # type: ignore[attr-defined]
        try:
            initialize_store(settings)
        except StoreUnavailable as exc:  # tasks retry until it answers; say why now
            log.error("store %s not initialized at worker start (tasks will retry): %s",
                      maybe_sanitize_url(settings.resolved_store_url), exc)

    def fresh_clients(**_) -> None:
        reset(app)  # connections never cross a fork; new ones open on first use
        freeze()

    # on first configuration load (worker, beat, flower start), never at import
    app.on_after_configure.connect(make_dirs, weak=False)
    worker_process_init.connect(fresh_clients, weak=False)
    worker_init.connect(initialize, weak=False)  # a worker's start initializes the store
    worker_init.connect(freeze, weak=False)  # the main process, before it forks the pool
