"""Beat's scheduler: only the holder of the ``beat`` lease sends sweeps, and each carries its token.

Every beat of a deployment (``celery -A indexgate.workers beat``, the ``-B`` of a worker,
``indexgate up``) runs ``LeaseScheduler``; the app sets it as ``beat_scheduler``. Each tick
it takes or renews the lease in indexgate's own store (``indexgate.leases``):

- the holder renews every ``beat_lease_interval_s`` and sends due jobs with
  ``lease_token=<its token>``; the sweeps check the token before each change (a job sent by
  a beat that has lost the lease since changes nothing);
- any other beat waits, trying every half interval; the lease lasts two intervals, so when
  the holder dies (SIGKILL, host gone) one of them takes over within 2.5 intervals and its
  token is one higher;
- a holder that cannot renew (store unreachable) stops sending once its lease may have run
  out, by its own monotonic clock, before anyone else can have taken it;
- a beat that stops cleanly gives the lease up, so a waiting one takes over at its next try.

The schedule itself is kept in memory (``celery.beat.Scheduler``), not in a shelve file:
interval jobs need no history, and two beats on one host must not share one file.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from typing import Any

from celery.beat import Scheduler

from indexgate.errors import StoreUnavailable
from indexgate.leases import BEAT, Leases
from indexgate.store import open_store

log = logging.getLogger(__name__)

TTL_INTERVALS = 2  # a lease outlives one missed renewal


def holder_name() -> str:
    """Who holds the lease, as operators read it: host and pid (``indexgate beat status``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseScheduler(Scheduler):
    """``celery.beat.Scheduler`` that sends only while it holds the beat lease."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        settings = app.indexgate_settings
        self.interval_s: float = settings.beat_lease_interval_s
        self.ttl_s = TTL_INTERVALS * self.interval_s
        self.holder = holder_name()
        self.token: int | None = None
        self._leases: Leases | None = None
        self._valid_until = 0.0  # monotonic: the lease may have run out after this
        self._next_try = 0.0
        self._state = ""  # what was last logged (holding <token>, waiting, lost, store)
        super().__init__(app, *args, **kwargs)
        self.max_interval = min(self.max_interval, self.interval_s / 2)

    # --- the lease -------------------------------------------------------------------

    @property
    def leases(self) -> Leases:
        if self._leases is None:  # opened in the beat's own process, on its first tick
            self._leases = Leases(open_store(self.app.indexgate_settings))
        return self._leases

    def keep_lease(self) -> None:
        """Take or renew the lease when it is time to; forget it once it may have run out."""
        now = time.monotonic()
        if now >= self._next_try:
            self._try(now)
        if self.token is not None and time.monotonic() > self._valid_until:
            self._lost()

    def _try(self, started: float) -> None:
        half_s = self.interval_s / 2
        try:
            lease = self.leases.take(BEAT, self.holder, self.ttl_s)
            # who holds it, only for the one line logged when this beat starts waiting
            holder = self.leases.current(BEAT) if lease is None and self._state != "waiting" else None
        except StoreUnavailable as exc:
            self._next_try = started + half_s
            self._note("store", logging.ERROR, f"beat lease: the store does not answer, retrying every {half_s:g} s "
                                               f"(this beat sends nothing once its lease may have run out): {exc}")
            return
        if lease is None:
            self._next_try = started + half_s
            self.token = None
            who = f"{holder.holder}, token {holder.token}" if holder else "another beat"
            self._note("waiting", logging.INFO, f"beat lease held by {who}: waiting (trying every {half_s:g} s)")
            return
        self._valid_until = started + self.ttl_s  # measured from before the write
        self._next_try = started + self.interval_s
        self.token = lease.token
        self._note(f"holding {lease.token}", logging.INFO,
                   f"beat lease taken: token {lease.token}, holder {self.holder}; sending beat's jobs")

    def _lost(self) -> None:
        self.token = None
        self._note("lost", logging.WARNING, f"beat lease lost: not renewed within {self.ttl_s:g} s (store "
                                            "unreachable?); sending nothing until this beat takes it again")

    def _note(self, state: str, level: int, line: str) -> None:
        """Log ``line`` when the state changes: one line per change, not one per tick."""
        if state != self._state:
            log.log(level, line)
            self._state = state

    # --- celery.beat.Scheduler ---------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.keep_lease()
        until_try = max(0.0, self._next_try - time.monotonic())
        if self.token is None:
            return until_try
        return min(super().tick(*args, **kwargs), until_try)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send ``entry`` with the lease's token, if the lease is still ours by our clock."""
        if self.token is None or time.monotonic() > self._valid_until:
            return None
        fenced = copy.copy(entry)
        fenced.kwargs = {**(entry.kwargs or {}), "lease_token": self.token}
        return super().apply_async(fenced, producer, advance, **kwargs)

    def close(self) -> None:
        """Give the lease up (a waiting beat takes over at its next try), then close."""
        if self.token is not None and self._leases is not None:
            try:
                self._leases.give_up(BEAT, self.holder)
                log.info("beat lease given up (token %s)", self.token)
            except StoreUnavailable as exc:
                log.warning("beat lease not given up (%s): it runs out within %g s", exc, self.ttl_s)
            self.token = None
        if self._leases is not None:
            self._leases.store.close()
        super().close()
