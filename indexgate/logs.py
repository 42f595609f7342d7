"""Logs for machines: ``INDEXGATE_LOG_FORMAT=json`` makes worker, beat and API log one JSON
object per line (python-json-logger); plain text stays the default.

Every line carries ``timestamp``, ``level``, ``logger`` and ``message``; a line logged while
an event is being applied also carries ``event_id``, ``event_type``, ``branch`` and
``job_id`` (those known), and inside a Celery task ``task_id`` and ``task_name``. The event
fields travel in a context variable (``log_context``) set by the intake task around each
event, so code deep in the service logs them without passing them along.

Wiring: Celery (worker and beat) configures its own handlers, so ``install_celery`` hooks
its ``after_setup_logger`` / ``after_setup_task_logger`` signals and swaps the formatter of
the handlers it made; ``indexgate serve`` calls ``configure_root`` and lets uvicorn's
loggers propagate to it; in JSON mode Python warnings are logged too. Logs go to stderr.
Celery prints a few lines of its own to stdout that are not log lines: the start banners
(JSON mode leaves the worker's out; ``celery --quiet`` leaves out beat's too) and
``worker: Warm shutdown (MainProcess)`` on SIGTERM.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from pythonjsonlogger.json import JsonFormatter

_context: ContextVar[dict[str, str] | None] = ContextVar("indexgate_log_context", default=None)
JSON_FIELDS = "%(timestamp)s %(levelname)s %(name)s %(message)s"


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Log lines inside carry ``fields`` (merged over the enclosing context's)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Adds the event context (and the Celery task, when inside one) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        task = _current_task()
        if task is not None and not hasattr(record, "task_id"):
            record.task_id = task.request.id
            record.task_name = task.name
        return True


def _current_task():
    celery_state = sys.modules.get("celery._state")  # only where Celery runs; never imported here
    task = celery_state.get_current_task() if celery_state else None
    return task if task is not None and getattr(task.request, "id", None) else None


def json_formatter() -> logging.Formatter:
    return JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"}, timestamp=True,
                         json_ensure_ascii=False)


def apply(handlers: list[logging.Handler], json_format: bool) -> None:
    """Give ``handlers`` the context filter and, for JSON, the JSON formatter."""
    for handler in handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if json_format:
            handler.setFormatter(json_formatter())


def configure_root(json_format: bool, level: int = logging.INFO) -> None:
    """A stderr handler on the root logger (``indexgate serve``); uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if not json_format:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    apply([handler], json_format)
    root.handlers = [handler]
    root.setLevel(level)


def install_celery(json_format: bool) -> None:
    """Hook Celery's logging setup (worker, beat): its handlers get the filter and formatter."""
    from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup

    def setup(logger=None, **_) -> None:
        if logger is not None:
            apply(logger.handlers, json_format)

    if json_format:
        # Lines logged (and Python warnings, e.g. Celery's about running as root) before
        # Celery sets up logging are JSON too; Celery keeps a root handler it finds.
        logging.captureWarnings(True)
        if not logging.getLogger().handlers:
            configure_root(True, logging.WARNING)

    def no_banner(instance=None, **_) -> None:
        if json_format:
            instance.quiet = True  # the worker's banner is text on stdout, not a log line

    # one receiver each per process (the first app built decides): tests build many apps
    after_setup_logger.connect(setup, weak=False, dispatch_uid="indexgate-logs")
    after_setup_task_logger.connect(setup, weak=False, dispatch_uid="indexgate-task-logs")
    celeryd_after_setup.connect(no_banner, weak=False, dispatch_uid="indexgate-no-banner")
