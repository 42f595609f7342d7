"""Use cases over a store: events, sweeps, operator actions and the permission check.

Every change goes through ``_mutate``: load the branch aggregate, apply one pure rule from
``indexgate.locks``, save it with a compare-and-swap on its version (retrying on a lost
race). The idempotency key of the event that caused it is written in the same save. The
Celery tasks, beat's sweeps and the CLI all enter here; nothing bypasses it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence

from indexgate import locks, permissions
from indexgate.clock import Clock, utcnow
from indexgate.errors import DuplicateEvent, LockNotFound, VersionConflict
from indexgate.locks import AcquireRequest, HeartbeatUpdate, LockView
from indexgate.permissions import Decision
from indexgate.rules import Policy, Transition
from indexgate.settings import Settings
from indexgate.shadow_service import Shadows, SwitchPolicy
from indexgate.store import Store, open_store
from schemas.payloads import HeartbeatData, JobEnd, StartedData
from schemas.records import (
    AuditEntry,
    AuditKind,
    BranchState,
    DeadLetter,
    Health,
    ReleaseReason,
)

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 20
Notify = Callable[[Sequence[AuditEntry]], None]


@dataclass(frozen=True)
class Origin:
    """Who caused a change: the event's source (or an operator), its key and time."""

    actor: str
    key: str | None = None
    time: datetime | None = None


@dataclass
class Outcome:
    """What applying one event or action did, for logs, task results and the CLI."""

    status: str  # applied | refused | ignored | duplicate | unknown_job
    detail: str = ""
    audit: list[AuditEntry] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail, "entries": [e.entry_id for e in self.audit]}


def policy_from(settings: Settings) -> Policy:
    return Policy(
        default_ttl_s=settings.default_ttl_s,
        max_ttl_s=settings.max_ttl_s,
        default_heartbeat_interval_s=settings.default_heartbeat_interval_s,
        missed_heartbeats=settings.missed_heartbeats,
        job_retention_s=settings.job_retention_s,
        max_finished_jobs=settings.max_finished_jobs,
    )


class Service:
    def __init__(self, store: Store, policy: Policy, clock: Clock = utcnow, notify: Notify | None = None,
                 switch: SwitchPolicy | None = None) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.notify = notify  # called with each commit's audit entries (outgoing events)
        self.shadows = Shadows(self, switch or SwitchPolicy())

    @classmethod
    def from_settings(cls, settings: Settings, notify: Notify | None = None) -> "Service":
        return cls(open_store(settings), policy_from(settings), notify=notify, switch=SwitchPolicy.from_settings(settings))

    def acquire(self, branch: str, request: AcquireRequest, origin: Origin) -> Outcome:
        """Grant locks directly (the switch lock); events go through ``start``."""
        return self._mutate(branch, lambda s, now: locks.acquire(s, request, now, self.policy), origin)

    def release(self, branch: str, job_id: str, reason: ReleaseReason, origin: Origin) -> Outcome:
        return self._mutate(branch, lambda s, now: locks.release_job(s, job_id, reason, origin.actor, now,
                                                                     self.policy), origin)

    # --- events ---------------------------------------------------------------------

    def already_applied(self, origin: Origin) -> bool:
        return origin.key is not None and self.store.seen(origin.key)

    def start(self, data: StartedData, origin: Origin) -> Outcome:
        if data.indexing_mode == "shadow":
            return self.shadows.register(data, origin)
        request = AcquireRequest(
            job_id=data.job_id,
            holder=data.service_name or origin.actor,
            resource_types=tuple(data.resource_types) or (None,),
            reason=data.reason or "indexing",
            ttl_s=data.ttl_s,
            heartbeat_interval_s=data.heartbeat_interval_s,
            event_time=origin.time,
        )
        return self.acquire(data.branch, request, origin)

    def heartbeat(self, data: HeartbeatData, origin: Origin) -> Outcome:
        update = HeartbeatUpdate(
            job_id=data.job_id, status=data.status, progress_percent=data.progress_percent,
            estimated_remaining_s=data.estimated_remaining_s, event_time=origin.time,
        )
        return self._for_job(data.job_id, origin, lambda s, now: locks.heartbeat(s, update, now, self.policy),
                             lambda: self.shadows.progress(data, origin))

    def end_job(self, data: JobEnd, reason: ReleaseReason, origin: Origin) -> Outcome:
        job_id = data.job_id or data.shadow_index_id or ""
        detail = {"result": data.model_dump(mode="json", exclude_none=True, exclude={"job_id", "shadow_index_id", "branch"})}
        return self._for_job(job_id, origin, lambda s, now: locks.release_job(
            s, job_id, reason, origin.actor, now, self.policy, detail),
            lambda: self.shadows.finish(job_id, data, reason, origin))

    # --- operators ------------------------------------------------------------------

    def extend(self, lock_id: str, by_s: float, operator: str, why: str) -> Outcome:
        branch = self._branch_of_lock(lock_id)
        return self._mutate(branch, lambda s, now: locks.extend(s, lock_id, by_s, operator, why, now, self.policy),
                            Origin(actor=operator))

    def force_release(self, lock_id: str, operator: str, why: str) -> Outcome:
        branch = self._branch_of_lock(lock_id)
        return self._mutate(branch, lambda s, now: locks.force_release(s, lock_id, operator, why, now, self.policy),
                            Origin(actor=operator))

    def check(self, branch: str, resource_type: str | None, action: str = "write") -> Decision:
        """The permission check; a store failure propagates as ``StoreUnavailable``."""
        return permissions.check(self.store.load(branch), branch, resource_type, action, self.clock(), self.policy)

    def list_locks(self, branch: str | None = None) -> list[LockView]:
        now = self.clock()
        states = [self.store.load(branch)] if branch else self.store.branches_with_locks()
        return [locks.view(lock, now, self.policy) for state in states if state for lock in state.locks]

    def show(self, lock_id: str) -> LockView:
        for lock_view in self.list_locks():
            if lock_view.lock.lock_id == lock_id:
                return lock_view
        raise LockNotFound(f"no lock {lock_id}; `indexgate locks list` shows live locks")

    def summary(self) -> dict[str, int]:
        counts = Counter(str(v.health) for v in self.list_locks())
        return {str(h): counts.get(str(h), 0) for h in Health} | {"total": sum(counts.values())}

    # --- sweeps ---------------------------------------------------------------------

    def sweep(self, reasons: Sequence[ReleaseReason]) -> list[AuditEntry]:
        """Release dead auto-release locks for ``reasons``; idempotent, safe to run twice."""
        return self._over_locked_branches(lambda s, now: locks.sweep(s, now, self.policy, reasons))

    def refresh_health(self) -> list[AuditEntry]:
        return self._over_locked_branches(lambda s, now: locks.refresh_health(s, now, self.policy))

    # --- core -----------------------------------------------------------------------

    def _over_locked_branches(self, rule: Callable[[BranchState, datetime], Transition]) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        for state in self.store.branches_with_locks():
            entries += self._mutate(state.branch, rule, Origin(actor=locks.SWEEPER)).audit
        return entries

    def _for_job(self, job_id: str, origin: Origin, rule: Callable[[BranchState, datetime], Transition],
                 shadow: Callable[[], Outcome]) -> Outcome:
        """Apply ``rule`` to the job's branch; shadow builds' jobs go to ``shadow`` instead."""
        branch = self.store.branch_of_job(job_id)
        if branch is None:
            if self.store.index_of(job_id) is not None:
                return shadow()
            return self._record_only(origin, AuditKind.UNKNOWN_JOB, None, job_id,
                                     f"event {origin.key} names job {job_id}, which this store never saw")
        return self._mutate(branch, rule, origin)

    def _branch_of_lock(self, lock_id: str) -> str:
        return self.show(lock_id).lock.branch

    def _record_only(self, origin: Origin, kind: AuditKind, branch: str | None, job_id: str | None,
                     why: str) -> Outcome:
        entry = AuditEntry(at=self.clock(), kind=kind, actor=origin.actor, branch=branch, job_id=job_id,
                           reason=why, published=True, cause=origin.key)
        try:
            self.store.record([entry], origin.key)
        except DuplicateEvent as exc:
            return Outcome(status="duplicate", detail=str(exc))
        return Outcome(status=str(kind), detail=why, audit=[entry])

    def _mutate(self, branch: str, rule: Callable[[BranchState, datetime], Transition], origin: Origin) -> Outcome:
        return self.cas_loop(lambda: self.store.load(branch) or BranchState(branch=branch), self.store.save,
                             rule, origin, branch)

    def cas_loop(self, load: Callable[[], Any], save: Callable[..., int], rule: Callable[[Any, datetime], Transition],
                 origin: Origin, name: str) -> Outcome:
        """Load -> pure rule -> conditional save, again on a lost race; then announce."""
        for _ in range(CAS_ATTEMPTS):
            state = load()
            transition = rule(state, self.clock())
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
                return Outcome(status="duplicate", detail=str(exc))
            self._announce(transition.audit)
            return _outcome(transition)
        raise VersionConflict(f"{name} kept changing during {CAS_ATTEMPTS} attempts; will retry")

    def _announce(self, entries: Sequence[AuditEntry]) -> None:
        due = [entry for entry in entries if not entry.published]
        if not due or self.notify is None:
            return
        try:
            self._publish(due)
        except Exception:  # the outbox relay re-sends what is still unpublished
            log.warning("outgoing events not published now; the outbox relay will retry", exc_info=True)

    def relay_outbox(self, limit: int = 500) -> int:
        """Publish what a crash or a broker hiccup left unannounced; returns how many."""
        if self.notify is None:
            return 0
        due = self.store.unpublished(limit)
        if due:
            self._publish(due)
        return len(due)

    def _publish(self, due: Sequence[AuditEntry]) -> None:
        """Announce, then mark published: a crash in between only re-sends (at-least-once)."""
        assert self.notify is not None
        self.notify(due)
        self.store.mark_published([entry.entry_id for entry in due])

    def record_dead_letter(self, letter: DeadLetter) -> None:
        self.store.add_dead_letter(letter)


_NOT_ANNOUNCED = frozenset({AuditKind.IGNORED, AuditKind.UNKNOWN_JOB})


def _outcome(transition: Transition) -> Outcome:
    kinds = {entry.kind for entry in transition.audit}
    if kinds & {AuditKind.REFUSED, AuditKind.SHADOW_REFUSED}:
        status = "refused"
    elif transition.changed:
        status = "applied"
    else:
        status = "ignored"
    detail = "; ".join(filter(None, (entry.reason for entry in transition.audit)))
    return Outcome(status=status, detail=detail, audit=transition.audit)
