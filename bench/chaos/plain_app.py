"""``celery -A bench.chaos.plain_app worker``: a plain Celery app, no indexgate code at all.

Used by ``findings.py redis_restart_crash`` to show that the worker crash on a Redis
restart comes from Celery/kombu, not from indexgate's intake bootstep: same reliability
settings (acks_late, reject_on_worker_lost, prefetch 1), one task that sleeps 20 ms.
With ``PLAIN_TRANSPORT=indexgate.events.brokers.redis_kombu:Transport`` it runs on indexgate's patched
Redis transport instead, to show the workaround holds.
"""

from __future__ import annotations

import os
import time

from celery import Celery


def make_app(broker: str) -> Celery:
    app = Celery("plain", broker=broker, set_as_current=False)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                    broker_transport_options={"visibility_timeout": 1.0}, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, task_default_queue="plain.tasks",
                    task_ignore_result=True, broker_transport=os.environ.get("PLAIN_TRANSPORT") or None)

    @app.task(name="plain.work", acks_late=True, shared=False)
    def work(_n: int) -> None:
        time.sleep(0.02)

    return app


app = make_app(os.environ.get("PLAIN_BROKER", "redis://127.0.0.1:6379/0"))
