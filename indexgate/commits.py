"""How every use case commits: load -> pure rule -> compare-and-swap, then announce.

``Commits`` is shared by the lock use cases (``indexgate.service``) and the shadow use
cases (``indexgate.shadow_service``), so both write the same way and neither imports the
other: the event's inbox key rides in the same save as its effect, a lost race reloads and
re-applies, and the audit entries of a commit are published afterwards (a crash in between
is repaired by the outbox relay).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable, Sequence

from indexgate.clock import Clock
from indexgate.errors import DuplicateEvent, VersionConflict
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.rules import Transition
from indexgate.schemas.records import AuditEntry, AuditKind
from indexgate.store import Store

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 20
Notify = Callable[[Sequence[AuditEntry]], None]
Due = Callable[[Any, datetime], "datetime | None"]  # the aggregate's next due time (indexgate.due)
_NOT_ANNOUNCED = frozenset({AuditKind.IGNORED, AuditKind.UNKNOWN_JOB})


class Commits:
    """The store, the clock and the outgoing announcements every use case writes through."""

    def __init__(self, store: Store, clock: Clock, notify: Notify | None = None) -> None:
        self.store = store
        self.clock = clock
        self.notify = notify  # called with each commit's audit entries (outgoing events)

    def cas_loop(self, load: Callable[[], Any], save: Callable[..., int], rule: Callable[[Any, datetime], Transition],
                 origin: Origin, name: str, due: Due | None = None, sweeping: bool = False) -> Outcome:
        """Load -> pure rule -> conditional save, again on a lost race; then announce.
        ``due`` stamps the aggregate's next due time on every save; a ``sweeping`` rule that
        changed nothing still saves when the stored due time was wrong (nothing is due yet),
        so a sweep never reads that aggregate again for nothing."""
        for _ in range(CAS_ATTEMPTS):
            state = load()
            now = self.clock()
            transition = rule(state, now)
            if due is not None:
                _schedule(state, transition, due(transition.state, now), now, sweeping)
            for entry in transition.audit:
                entry.published = entry.kind in _NOT_ANNOUNCED
                entry.cause = origin.key
            try:
                if transition.changed:
                    save(transition.state, transition.audit, origin.key)
                else:
                    self.store.record(transition.audit, origin.key)
            except VersionConflict:
                continue
            except DuplicateEvent as exc:  # a concurrent delivery of this event committed first
                return Outcome(status=Status.DUPLICATE, detail=str(exc))
            self._announce(transition.audit)
            return _outcome(transition)
        raise VersionConflict(f"{name} kept changing during {CAS_ATTEMPTS} attempts; will retry")

    def record_only(self, origin: Origin, kind: AuditKind, branch: str | None, job_id: str | None,
                    why: str) -> Outcome:
        """An audit entry (and the event's inbox key) without any state change; not announced."""
        entry = AuditEntry(at=self.clock(), kind=kind, actor=origin.actor, branch=branch, job_id=job_id,
                           reason=why, published=True, cause=origin.key)
        try:
            self.store.record([entry], origin.key)
        except DuplicateEvent as exc:
            return Outcome(status=Status.DUPLICATE, detail=str(exc))
        return Outcome(status=_RECORD_STATUSES.get(kind, Status.IGNORED), detail=why, audit=[entry])

    def relay_outbox(self, limit: int = 500) -> int:
        """Publish what a crash or a broker hiccup left unannounced; returns how many."""
        if self.notify is None:
            return 0
        due = self.store.unpublished(limit)
        if due:
            self._publish(due)
        return len(due)

    def _announce(self, entries: Sequence[AuditEntry]) -> None:
        due = [entry for entry in entries if not entry.published]
        if not due or self.notify is None:
            return
        try:
            self._publish(due)
        except Exception:  # the outbox relay re-sends what is still unpublished
            log.warning("outgoing events not published now; the outbox relay will retry", exc_info=True)

    def _publish(self, due: Sequence[AuditEntry]) -> None:
        """Announce, then mark published: a crash in between only re-sends (at-least-once)."""
        assert self.notify is not None
        self.notify(due)
        self.store.mark_published([entry.entry_id for entry in due])


def _schedule(before: Any, transition: Transition, due_at: datetime | None, now: datetime, sweeping: bool) -> None:
    """Stamp the next due time; make a sweep save a due time that said "due" too early (a
    store created before due times, a due time rounded by the store) with the right one."""
    stale = before.due_at is not None and before.due_at <= now and (due_at is None or due_at > now)
    transition.state.due_at = due_at
    if sweeping and stale:
        transition.touch()


_RECORD_STATUSES = {AuditKind.UNKNOWN_JOB: Status.UNKNOWN_JOB, AuditKind.REFUSED: Status.REFUSED}


def _outcome(transition: Transition) -> Outcome:
    kinds = {entry.kind for entry in transition.audit}
    if kinds & {AuditKind.REFUSED, AuditKind.SHADOW_REFUSED}:
        status = Status.REFUSED
    elif kinds == {AuditKind.IGNORED}:  # it may still have saved something (a stale heartbeat's clock observation)
        status = Status.IGNORED
    elif transition.changed:
        status = Status.APPLIED
    else:
        status = Status.IGNORED
    detail = "; ".join(filter(None, (entry.reason for entry in transition.audit)))
    return Outcome(status=status, detail=detail, audit=transition.audit)
