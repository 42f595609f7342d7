"""Per-process clients: store, service and publisher, created after fork, never at import.

``runtime(app)`` builds them on first use in each process (the pid is checked, so a
prefork child never reuses its parent's connections); ``worker_process_init`` builds them
eagerly in each pool child. The outage tracker makes a store outage one log line, not a
flood: the first failure logs an error, the recovery logs once more - once per machine,
not once per pool process, because the processes agree through a flag file (see
``Outage``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from celery import Celery

from indexgate import metrics
from indexgate.events.brokers import Acks, IntakeTransport
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.settings import Settings

log = logging.getLogger(__name__)


REMIND_S = 300.0  # a long store outage is logged again this often


def outage_flag(settings: Settings) -> Path:
    """The file the pool processes of this machine agree through during a store outage."""
    return settings.data_dir / "store-outage.flag"


def _age_s(flag: Path) -> float | None:
    """Seconds since the flag was created or last refreshed; None when there is none."""
    try:
        return time.time() - flag.stat().st_mtime
    except OSError:
        return None


def outage_reported(settings: Settings) -> bool:
    """A store outage is going on here: its flag exists and is not stale (retrying tasks
    refresh it at least every ``REMIND_S``; one older than that plus a retry interval was
    left behind by a killed worker)."""
    age_s = _age_s(outage_flag(settings))
    return age_s is not None and age_s <= REMIND_S + settings.store_retry_max_s


@dataclass
class Outage:
    """Logs each store outage once per machine: an error when it starts, a line when it ends.

    Each pool process sees the outage on its own, so the processes agree through a flag
    file: whoever creates it (``O_EXCL``, atomic) logs the error, whoever removes it logs the
    recovery. A flag older than ``remind_s`` (a long outage, or one left by a killed worker)
    is taken over and logged again, so a stale flag can hide a new outage for at most that.
    """

    flag: Path
    remind_s: float = REMIND_S
    since_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self.since_failures += 1
            first = self.since_failures == 1
        if (first or self._stale()) and self._claim():
            log.error("store unavailable, events are being retried with backoff: %s", exc)

    def succeeded(self) -> None:
        """Any success ends the outage, also in a process that saw none of it (the one that
        did may have been killed meanwhile): one ``stat`` per task while all is well."""
        with self._lock:
            failures, self.since_failures = self.since_failures, 0
        if (failures or self.flag.exists()) and self._release():
            log.warning("store reachable again (%d failed attempt(s) in this process)", failures)

    def _claim(self) -> bool:
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            if not self._stale():
                return False
            os.utime(self.flag)  # remind: still down (or a killed worker's flag)
            return True
        except OSError:
            return True  # no flag possible (read-only dir): log rather than stay silent

    def _stale(self) -> bool:
        age_s = _age_s(self.flag)
        return age_s is not None and age_s > self.remind_s

    def _release(self) -> bool:
        try:
            self.flag.unlink()
            return True
        except FileNotFoundError:
            return False  # another process reported the recovery
        except OSError:
            return True


@dataclass
class Runtime:
    settings: Settings
    service: Service
    publisher: Publisher
    outage: Outage
    pid: int

    def acks(self, consumer: str | None) -> Acks | None:
        """Who acks a hand-off's entries after their commit: the broker's transport says
        (the Redis intake stream's group; None where the intake acked already)."""
        return self.publisher.transport.acks(consumer)

    def close(self) -> None:
        self.service.store.close()
        self.publisher.close()


_guard = threading.Lock()


def settings_of(app: Celery) -> Settings:
    return app.indexgate_settings  # type: ignore[attr-defined]


def transport_of(app: Celery) -> IntakeTransport:
    """The app's intake transport, chosen once from the broker URL by ``create_app``."""
    return app.indexgate_transport  # type: ignore[attr-defined]


def runtime(app: Celery) -> Runtime:
    current = getattr(app, "_indexgate_runtime", None)
    if current is not None and current.pid == os.getpid():
        return current
    with _guard:
        current = getattr(app, "_indexgate_runtime", None)
        if current is None or current.pid != os.getpid():
            current = _build(settings_of(app), getattr(app, "indexgate_on_switch_step", None))
            app._indexgate_runtime = current  # type: ignore[attr-defined]
    return current


def reset(app: Celery) -> None:
    """Forget this process's clients (after fork, or in tests)."""
    current = getattr(app, "_indexgate_runtime", None)
    if current is not None and current.pid == os.getpid():
        current.close()
    app._indexgate_runtime = None  # type: ignore[attr-defined]


def _build(settings: Settings, on_switch_step=None) -> Runtime:
    publisher = Publisher(settings)
    service = Service.from_settings(settings, notify=publisher.publish_entries, on_switch_step=on_switch_step,
                                    on_switch=metrics.observe_switch)
    return Runtime(settings, service, publisher, Outage(outage_flag(settings)), os.getpid())
