"""A bounded warm shutdown: SIGTERM waits for running tasks, but no longer than
``INDEXGATE_SHUTDOWN_TIMEOUT_S``.

Celery 5.7's warm shutdown (SIGTERM, the first Ctrl+C) stops consuming and then waits for
every running task without limit; only the task time limit (300 s) ends a stuck one, far
beyond any orchestrator's grace period, whose SIGKILL then cuts everything off at once.
Its own remedy does not fit: ``worker_soft_shutdown_timeout`` applies to the *cold*
shutdown only (SIGQUIT, or SIGTERM with the ``REMAP_SIGTERM=SIGQUIT`` environment variable,
read when billiard is imported), and it sleeps the whole timeout inside the signal handler
whenever a task is active, however soon the tasks finish, then exits 1.

So ``BoundedShutdown`` starts a timer when the worker's warm shutdown begins (Celery's
``worker_shutting_down`` signal, sent by its signal handler in the main process, before the
worker stops anything) and, if the process is still there when it fires, sends itself
SIGQUIT: Celery's cold shutdown cancels the tasks still running (their pool processes get
SIGTERM), bounds the broker sockets and exits. Nothing is lost by the cut: every task is
``acks_late`` + ``reject_on_worker_lost`` and the intake acks an event only after its
effect is committed, so what was cut off goes back to the broker (RabbitMQ requeues an
unacked delivery when the channel closes, kombu's Redis transport restores its unacked
messages on close, intake stream entries stay pending) and the inbox drops what had been
committed already. A shutdown that finishes in time exits before the timer fires (it is a
daemon thread).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery import bootsteps
from celery.signals import worker_shutting_down

from indexgate.workers.runtime import settings_of

log = logging.getLogger(__name__)


class BoundedShutdown(bootsteps.StartStopStep):
    """Worker bootstep: arms the cold-shutdown timer at the start of a warm shutdown."""

    def __init__(self, parent, **kwargs) -> None:
        self.timeout_s = settings_of(parent.app).shutdown_timeout_s
        self.hostname: str | None = None
        self.timer: threading.Timer | None = None
        super().__init__(parent, **kwargs)

    def start(self, parent) -> None:
        # Celery's signals match a str sender by value: only this worker's shutdown counts
        # (several embedded workers may live in one test process).
        self.hostname = parent.hostname
        worker_shutting_down.connect(self.on_shutting_down, sender=self.hostname, weak=False)

    def shutdown(self, parent) -> None:
        if self.hostname is not None:
            worker_shutting_down.disconnect(self.on_shutting_down, sender=self.hostname)

    def on_shutting_down(self, sig: str | None = None, how: str | None = None, **_) -> None:
        """Runs in the main process's signal handler: only start a thread here."""
        if how != "Warm" or self.timer is not None:
            return  # a cold shutdown is bounded already; a second SIGTERM keeps the first deadline
        self.timer = threading.Timer(self.timeout_s, self.escalate, args=(sig,))
        self.timer.name = "indexgate-shutdown-bound"
        self.timer.daemon = True
        self.timer.start()

    def escalate(self, sig: str | None) -> None:
        log.warning("warm shutdown (%s) still waiting for running tasks after %g s (INDEXGATE_SHUTDOWN_TIMEOUT_S): "
                    "cold shutdown, the tasks still running go back to the broker", sig, self.timeout_s)
        os.kill(os.getpid(), signal.SIGQUIT)
