"""Use cases over a store: events, sweeps, operator actions and the permission check.

Every change goes through ``_mutate``: load the branch aggregate, apply one pure rule from
``indexgate.locks``, save it with a compare-and-swap on its version (retrying on a lost
race). The idempotency key of the event that caused it is written in the same save. The
Celery tasks, beat's sweeps and the CLI all enter here; nothing bypasses it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Callable, Sequence

from indexgate import due, early_ends, locks, permissions
from indexgate.clock import Clock, utcnow
from indexgate.commits import Commits, Notify
from indexgate.errors import LimitExceeded, LockNotFound
from indexgate.leases import UNFENCED, Fence, Leases
from indexgate.locks import AcquireRequest, HeartbeatUpdate, LockView
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.permissions import Decision
from indexgate.retention import Retention, RetentionPolicy
from indexgate.rules import Policy, Transition
from indexgate.schemas.payloads import HeartbeatData, JobEnd, StartedData
from indexgate.schemas.records import AuditEntry, AuditKind, BranchState, DeadLetter, Health, JobStatus, ReleaseReason
from indexgate.settings import Settings
from indexgate.shadow_service import Shadows
from indexgate.switch_policy import SwitchPolicy, SwitchResult
from indexgate.store import Store, open_store

__all__ = ["Origin", "Outcome", "Service", "policy_from"]


def policy_from(settings: Settings) -> Policy:
    return Policy(
        default_ttl_s=settings.default_ttl_s,
        max_ttl_s=settings.max_ttl_s,
        default_heartbeat_interval_s=settings.default_heartbeat_interval_s,
        missed_heartbeats=settings.missed_heartbeats,
        job_retention_s=settings.job_retention_s,
        max_finished_jobs=settings.max_finished_jobs,
        max_locks_per_branch=settings.max_locks_per_branch,
        max_builds_per_index=settings.max_builds_per_index,
        build_retention_s=settings.build_retention_s,
        max_early_ends=settings.max_early_ends,
        max_clock_skew_s=settings.max_clock_skew_s,
    )


class Service:
    def __init__(self, store: Store, policy: Policy, clock: Clock = utcnow, notify: Notify | None = None,
                 switch: SwitchPolicy | None = None, on_switch_step: Callable[[str], None] | None = None,
                 retention: RetentionPolicy | None = None, max_resource_types_per_event: int = 256,
                 on_switch: Callable[[SwitchResult], None] | None = None) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.commits = Commits(store, clock, notify)
        self.shadows = Shadows(self.commits, policy, self, switch or SwitchPolicy(), on_step=on_switch_step,
                               on_switch=on_switch)
        self.retention = Retention(store, retention or RetentionPolicy(), clock)
        self.leases = Leases(store, clock)
        self.max_resource_types_per_event = max_resource_types_per_event

    @classmethod
    def from_settings(cls, settings: Settings, notify: Notify | None = None,
                      on_switch_step: Callable[[str], None] | None = None,
                      on_switch: Callable[[SwitchResult], None] | None = None) -> "Service":
        return cls(open_store(settings), policy_from(settings), notify=notify,
                   switch=SwitchPolicy.from_settings(settings), on_switch_step=on_switch_step,
                   retention=RetentionPolicy.from_settings(settings),
                   max_resource_types_per_event=settings.max_resource_types_per_event, on_switch=on_switch)

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
        """Lock for a traditional job (none if its end already arrived); register a shadow build."""
        if len(data.resource_types) > self.max_resource_types_per_event:
            raise LimitExceeded(
                f"resource_types names {len(data.resource_types)} types; the limit is "
                f"{self.max_resource_types_per_event} resource types per event (INDEXGATE_MAX_RESOURCE_TYPES_PER_EVENT)")
        if any(permissions.whole_branch(rt) is None for rt in data.resource_types):  # "*", "-": as the CLI and API
            data = data.model_copy(update={"resource_types": []})  # read them: the whole branch
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
        early = early_ends.lookup(self.store, (data.job_id,), self.clock(), self.policy)
        if early is not None:  # saved (the job is remembered as ended), yet nothing was granted
            ended = self._mutate(data.branch, lambda s, now: locks.ended_before_start(s, request, early, now,
                                                                                      self.policy), origin)
            return ended if ended.status is Status.DUPLICATE else replace(ended, status=Status.IGNORED)
        outcome = self.acquire(data.branch, request, origin)
        if outcome.status in (Status.APPLIED, Status.DUPLICATE):  # an end remembered meanwhile ends it now
            self.settle((data.job_id,))
        return outcome

    def settle(self, refs: Sequence[str]) -> Outcome | None:
        """End the job known by ``refs`` (job id first, then a shadow id) if its end was
        remembered while its start was being applied (``indexgate.early_ends``).

        Both sides of that race run this after their own write, and again whenever their
        event turns out to be a duplicate (``reconcile``): a retry after the store failed
        between the two steps would otherwise never redo it. Idempotent and cheap: with no
        remembered end it is one read; a job already over is left alone, nothing written."""
        late = early_ends.lookup(self.store, refs, self.clock(), self.policy)
        if late is None:
            return None
        job_id = refs[0]
        branch = self.store.branch_of_job(job_id)
        if branch is None:
            return self.shadows.settle(refs, late) if self.store.index_of(job_id) is not None else None
        state = self.store.load(branch)
        job = state.job(job_id) if state else None
        if job is None or job.status is not JobStatus.ACTIVE:
            return None
        detail = {"result": late.data, "arrived_before_started": True}
        return self._mutate(branch, lambda s, now: locks.release_job(s, job_id, late.reason, late.actor, now,
                                                                     self.policy, detail), early_ends.origin_of(late))

    def reconcile(self, data: StartedData | JobEnd) -> Outcome | None:
        """A ``started`` or an end that is a duplicate: redo its early-end reconciliation
        (``settle``), which its first delivery may not have reached."""
        if isinstance(data, StartedData):
            return self.settle(self.shadows.refs_of(data) if data.indexing_mode == "shadow" else (data.job_id,))
        return self.settle((data.job_id or data.shadow_index_id or "",))

    def heartbeat(self, data: HeartbeatData, origin: Origin) -> Outcome:
        update = HeartbeatUpdate(
            job_id=data.job_id, status=data.status, progress_percent=data.progress_percent,
            estimated_remaining_s=data.estimated_remaining_s, event_time=origin.time,
        )
        outcome = self._for_job(data.job_id, origin, lambda s, now: locks.heartbeat(s, update, now, self.policy),
                                lambda o: self.shadows.progress(data, o))
        return outcome or self.commits.record_only(
            origin, AuditKind.UNKNOWN_JOB, None, data.job_id,
            f"heartbeat names job {data.job_id}, which has not started here (no started applied yet, or "
            "forgotten): nothing changed")

    def end_job(self, data: JobEnd, reason: ReleaseReason, origin: Origin) -> Outcome:
        """End the job; an end before its job's started is remembered (``indexgate.early_ends``)."""
        job_id = data.job_id or data.shadow_index_id or ""
        detail = {"result": data.model_dump(mode="json", exclude_none=True, exclude={"job_id", "shadow_index_id", "branch"})}

        def rule(state: BranchState, now: datetime) -> Transition:
            return locks.release_job(state, job_id, reason, origin.actor, now, self.policy, detail)

        def shadow(o: Origin) -> Outcome:
            return self.shadows.finish(job_id, data, reason, o)

        outcome = self._for_job(job_id, origin, rule, shadow)
        if outcome is not None:
            return outcome
        remembered = early_ends.remember(self.store, job_id, data, reason, origin, self.clock(), self.policy)
        # its start may have committed meanwhile, before it could see this end: end the job now
        settled = self.settle((job_id,))
        return remembered if remembered.status is Status.DUPLICATE else settled or remembered

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
        """The permission check; a store failure propagates as ``StoreUnavailable``, a blank
        branch, resource type or action is refused with ``InvalidRequest``."""
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

    def sweep(self, reasons: Sequence[ReleaseReason], fence: Fence = UNFENCED) -> list[AuditEntry]:
        """Release dead auto-release locks for ``reasons``; idempotent, safe to run twice."""
        return self._over_due_branches(lambda s, now: locks.sweep(s, now, self.policy, reasons), fence)

    def refresh_health(self, fence: Fence = UNFENCED) -> list[AuditEntry]:
        return self._over_due_branches(lambda s, now: locks.refresh_health(s, now, self.policy), fence)

    # --- core -----------------------------------------------------------------------

    def _over_due_branches(self, rule: Callable[[BranchState, datetime], Transition], fence: Fence
                           ) -> list[AuditEntry]:
        """Apply a sweep's rule to the branches that are due (``BranchState.due_at``), not to
        every locked one: with nothing due a sweep is one index read (and a fence check). A branch due for
        another sweep's reason is left as it is (it stays due until that sweep). The fence is
        checked before each branch: a sweep whose beat lost its lease stops (``Fenced``)."""
        entries: list[AuditEntry] = []
        for branch in fence.guard(lambda: self.store.branches_due(self.clock())):
            entries += self._mutate(branch, rule, Origin(actor=locks.SWEEPER), sweeping=True).audit
        return entries

    def _for_job(self, job_id: str, origin: Origin, rule: Callable[[BranchState, datetime], Transition],
                 shadow: Callable[[Origin], Outcome]) -> Outcome | None:
        """Apply ``rule`` to the job's branch, or ``shadow`` to a shadow build's job; None for a
        job this store has not seen start."""
        branch = self.store.branch_of_job(job_id)
        if branch is not None:
            return self._mutate(branch, rule, origin)
        if self.store.index_of(job_id) is not None:
            return shadow(origin)
        return None

    def _branch_of_lock(self, lock_id: str) -> str:
        return self.show(lock_id).lock.branch

    def _mutate(self, branch: str, rule: Callable[[BranchState, datetime], Transition], origin: Origin,
                sweeping: bool = False) -> Outcome:
        return self.commits.cas_loop(lambda: self.store.load(branch) or BranchState(branch=branch),
                                     self.store.save, rule, origin, branch,
                                     due=lambda s, now: due.branch_due(s, now, self.policy), sweeping=sweeping)

    def relay_outbox(self, limit: int = 500, fence: Fence = UNFENCED) -> int:
        """Publish what a crash or a broker hiccup left unannounced; returns how many."""
        fence.check()
        return self.commits.relay_outbox(limit)

    def record_dead_letter(self, letter: DeadLetter) -> None:
        self.store.add_dead_letter(letter)


