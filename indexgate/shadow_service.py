"""Shadow builds and the atomic switch: use cases over the store, like ``service``.

The switch, step by step (each step is one atomic store write, so a crash between any two
leaves the pointer at the old index or the new one, never none):

1. validate the BUILT shadow (record count, size vs active, manifest integrity) - before
   any lock: the shadow is immutable once built, so validation need not block writes;
2. claim: BUILT -> SWITCHING, the compare-and-swap that lets exactly one switch win;
3. take the short switch lock on the affected resource types (writes denied from here:
   the blackout) and get its fencing token;
4. swap the active pointer (old one kept as backup), carrying that token; the store
   refuses a token older than the last applied;
5. verify the new location by its kind (``indexgate.verifiers``: a directory exists, an
   http(s) URL answers 2xx, an opaque pointer is recorded ``verified: false``), or swap back
   (automatic rollback) when a verifier says it does not answer;
6. release the switch lock (blackout ends), record ``switch_duration_ms``,
   ``blackout_ms`` and the verification.

A crashed switcher's lock and claim both expire at the lock's heartbeat deadline, after
which the switch can simply be requested again.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime
from time import perf_counter
from typing import Any, Callable, Sequence

from indexgate import due, early_ends, locations, shadows
from indexgate.commits import Commits
from indexgate.errors import (
    ConfigError,
    DuplicateEvent,
    IndexgateError,
    InvalidRequest,
    InvalidTransition,
    StaleFencingToken,
    SwitchClaimed,
    SwitchInProgress,
)
from indexgate.leases import UNFENCED, Fence
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.rules import Policy, Transition
from indexgate.schemas.payloads import HeartbeatData, JobEnd, StartedData, SwitchRequestData
from indexgate.schemas.records import AuditKind, EarlyEnd, LockKind, ReleaseReason
from indexgate.schemas.shadows import (
    IndexPointer,
    IndexState,
    ShadowBuild,
    ShadowState,
    Verification,
    VerifyOutcome,
    index_key,
)
from indexgate.switch_policy import SwitchLocks, SwitchPolicy, SwitchResult

Rule = Callable[[IndexState, datetime], Transition]


log = logging.getLogger(__name__)
SWITCHER = "indexgate-switch"


class Shadows:
    def __init__(self, commits: Commits, rules: Policy, locks: SwitchLocks, policy: SwitchPolicy,
                 inspect: Callable[[str | None], shadows.LocationFacts] = locations.inspect,
                 on_step: Callable[[str], None] | None = None,
                 on_switch: Callable[[SwitchResult], None] | None = None) -> None:
        self.on_switch = on_switch  # sees every switch and rollback's result (the worker's metrics)
        self.commits = commits
        self.store = commits.store
        self.rules = rules
        self.locks = locks
        self.policy = policy
        self.inspect = inspect
        self.verifiers = policy.verifiers
        self.on_step = on_step

    # --- events -------------------------------------------------------------------------

    def register(self, data: StartedData, origin: Origin) -> Outcome:
        """Register the build; one whose end already arrived is registered ended, in the same write."""
        index_type = data.index_type or self.policy.default_index_type
        refs = self.refs_of(data)
        request = shadows.BuildRequest(
            shadow_index_id=refs[1], job_id=data.job_id,
            index_type=index_type, resource_types=tuple(data.resource_types), holder=data.service_name or origin.actor,
            heartbeat_interval_s=data.heartbeat_interval_s, event_time=origin.time)
        early = early_ends.lookup(self.store, refs, self.commits.clock(), self.rules)
        rule: Rule = lambda s, now: shadows.register(s, request, now, self.rules)  # noqa: E731
        if early is not None:
            rule = _then(rule, self._end_rule(request.shadow_index_id, early_ends.payload(early), early.reason,
                                              early.actor))
        outcome = self._mutate(index_key(data.branch, index_type), rule, origin)
        if early is not None:
            self._after_end(request.shadow_index_id, early.reason, outcome)
        elif outcome.status in (Status.APPLIED, Status.DUPLICATE):  # an end remembered meanwhile ends it now
            self.settle(refs)
        return outcome

    @staticmethod
    def refs_of(data: StartedData) -> tuple[str, str]:
        """The job id and the shadow id a shadow ``started`` registers its build under."""
        return data.job_id, getattr(data, "shadow_index_id", None) or f"shadow-{data.job_id}"

    def settle(self, refs: Sequence[str], late: EarlyEnd | None = None) -> Outcome | None:
        """End the build known by ``refs`` if its end (``late``, else looked up) was remembered
        while it was registered and it is still building (``Service.settle`` says why)."""
        late = late or early_ends.lookup(self.store, refs, self.commits.clock(), self.rules)
        key = self.store.index_of(refs[0]) if late is not None else None
        state = self.store.load_index(key) if key else None
        build = state.build(refs[0]) if state else None
        if late is None or build is None or shadows.effective_state(
                build, self.commits.clock(), self.rules) not in (ShadowState.PREPARING, ShadowState.BUILDING):
            return None
        return self.finish(build.shadow_index_id, early_ends.payload(late), late.reason, early_ends.origin_of(late))

    def progress(self, data: HeartbeatData, origin: Origin) -> Outcome:
        return self._mutate(self._key_of(data.job_id), lambda s, now: shadows.progress(
            s, data.job_id, now, self.rules, percent=data.progress_percent, record_count=data.record_count,
            eta_s=data.estimated_remaining_s, event_time=origin.time), origin)

    def finish(self, ref: str, data: JobEnd, reason: ReleaseReason, origin: Origin) -> Outcome:
        outcome = self._mutate(self._key_of(ref), self._end_rule(ref, data, reason, origin.actor), origin)
        self._after_end(ref, reason, outcome)
        return outcome

    def _end_rule(self, ref: str, data: JobEnd, reason: ReleaseReason, actor: str) -> Rule:
        if reason is ReleaseReason.COMPLETED:
            return lambda s, now: shadows.complete(
                s, ref, now, self.rules, record_count=getattr(data, "record_count", None),
                index_size_bytes=getattr(data, "index_size_bytes", None), location=getattr(data, "location", None))
        to = ShadowState.FAILED if reason is ReleaseReason.FAILED else ShadowState.CANCELLED
        why = getattr(data, "error", None) or getattr(data, "reason", None) or str(reason)
        return lambda s, now: shadows.end(s, ref, to, why, actor, now, self.rules)

    def _after_end(self, ref: str, reason: ReleaseReason, outcome: Outcome) -> None:
        if self.policy.auto_switch and reason is ReleaseReason.COMPLETED and outcome.status is Status.APPLIED:
            self._auto_switch(ref)

    def switch_requested(self, data: SwitchRequestData, origin: Origin) -> Outcome:
        result = self.switch(data.ref, force=data.force, checks=data.validation_checks, backup=data.backup_current,
                             actor=origin.actor, retry_if_busy=True)
        if origin.key:
            with contextlib.suppress(DuplicateEvent):  # a concurrent delivery recorded it first
                self.store.record([], origin.key)
        return Outcome(status=result.status, detail=result.detail)

    # --- the switch ---------------------------------------------------------------------

    def switch(self, ref: str, *, force: bool = False, checks: list[str] | tuple[str, ...] = shadows.CHECKS,
               backup: bool = True, actor: str = SWITCHER, retry_if_busy: bool = False) -> SwitchResult:
        """Validate, claim, lock, swap, verify, unlock. See the module docstring."""
        return self._seen(self._switch(ref, force=force, checks=checks, backup=backup, actor=actor,
                                       retry_if_busy=retry_if_busy))

    def _seen(self, result: SwitchResult) -> SwitchResult:
        if self.on_switch is not None:
            self.on_switch(result)
        return result

    def _switch(self, ref: str, *, force: bool, checks: list[str] | tuple[str, ...], backup: bool, actor: str,
                retry_if_busy: bool) -> SwitchResult:
        started = perf_counter()
        key = self._key_of(ref)
        state = self._load(key)
        build = shadows._get(state, ref)
        result = SwitchResult(status=Status.SWITCHED, shadow_index_id=build.shadow_index_id, branch=state.branch,
                              index_type=state.index_type)
        if self.policy.strategy == "filesystem" and locations.as_path(build.location) is None:
            why = f"the filesystem strategy needs a local directory; {build.location!r} is not one"
            self._mutate(key, lambda s, now: _note_failure(s, ref, why, now), _origin())
            return result.model_copy(update={"status": Status.REFUSED, "detail": why})
        try:
            verify = self.verifiers.prepare(build.location)  # loads a plugin now, not inside the blackout
        except ConfigError as exc:
            why = f"post-switch verification cannot run: {exc}"
            self._mutate(key, lambda s, now: _note_failure(s, ref, why, now), _origin())
            return result.model_copy(update={"status": Status.REFUSED, "detail": why})
        if not force:
            facts = self.inspect(build.location) if "INTEGRITY_CHECK" in checks else None
            result.checks = shadows.validate(build, state.active, facts, checks, self.policy.max_shrink_fraction)
            failed = [c for c in result.checks if not c.passed]
            if failed:
                why = "validation failed: " + "; ".join(f"{c.check}: {c.detail}" for c in failed)
                self._mutate(key, lambda s, now: _note_failure(s, ref, why, now), _origin())
                return result.model_copy(update={"status": Status.VALIDATION_FAILED, "detail": why})
        self._step("validated")
        try:
            self._mutate(key, lambda s, now: shadows.claim_switch(s, ref, now, self.rules, self.policy.claim_s),
                         _origin())
        except SwitchClaimed as exc:
            if retry_if_busy:
                raise SwitchInProgress(f"{exc}; retrying once the other switch ends or its claim expires") from exc
            return result.model_copy(update={"status": Status.REFUSED, "detail": str(exc)})
        except InvalidTransition as exc:
            return result.model_copy(update={"status": Status.REFUSED, "detail": str(exc)})
        self._step("claimed")
        return self._locked_swap(key, build, result, backup, started, verify)

    def _locked_swap(self, key: str, build: ShadowBuild, result: SwitchResult, backup: bool,
                     started: float, verify: Callable[[], Verification]) -> SwitchResult:
        ref, branch = build.shadow_index_id, build.branch
        job = f"switch-{ref}-{uuid.uuid4().hex[:8]}"
        granted = self._switch_lock(branch, job, build.resource_types, f"switching {build.index_type} to {ref}")
        if granted is None:
            why = f"branch busy: a lock holds {', '.join(build.resource_types) or branch}"
            self._mutate(key, lambda s, now: shadows.unclaim(s, ref, why, now), _origin())
            return result.model_copy(update={"status": Status.BRANCH_BUSY, "detail": why})
        blackout_start = perf_counter()
        self._step("locked")
        status, detail, verification = Status.SWITCHED, f"{ref} is active", None
        try:
            self._mutate(key, lambda s, now: shadows.swap(s, ref, granted, now, keep_backup=backup), _origin())
            self._step("swapped")
            self._link(build.branch, build.index_type, build.location)
            verification = verify()
            detail = f"{ref} is active ({'verified' if verification.verified else 'not verified'}: {verification.reason})"
            if verification.outcome is VerifyOutcome.FAILED:
                status = Status.ROLLED_BACK
                detail = f"post-switch verification of {build.location} failed: {verification.reason}; rolled back"
                self._mutate(key, lambda s, now: shadows.undo_swap(s, ref, detail, now), _origin())
                restored = self._load(key).active
                self._link(build.branch, build.index_type, restored.location if restored else None)
            self._step("verified")
        except (StaleFencingToken, InvalidTransition) as exc:
            status, detail = Status.REFUSED, str(exc)
            self._mutate(key, lambda s, now: shadows.unclaim(s, ref, detail, now), _origin())
        finally:
            self.locks.release(branch, job, ReleaseReason.COMPLETED, _origin())
            blackout_ms = (perf_counter() - blackout_start) * 1000
        self._step("unlocked")
        switch_ms = (perf_counter() - started) * 1000
        self._mutate(key, lambda s, now: shadows.record_switch(s, ref, switch_ms, blackout_ms, now, verification),
                     _origin())
        return result.model_copy(update={"status": status, "detail": detail, "fencing_token": granted,
                                         "switch_duration_ms": round(switch_ms, 3), "blackout_ms": round(blackout_ms, 3),
                                         "verification": verification})

    def rollback(self, branch: str, index_type: str, actor: str, why: str) -> SwitchResult:
        """Re-activate the newest backup, under a switch lock, with a new fencing token."""
        key = index_key(branch, index_type)
        state = self._load(key)
        current = state.build(state.active.shadow_index_id) if state.active else None
        job = f"rollback-{uuid.uuid4().hex[:8]}"
        token = self._switch_lock(branch, job, current.resource_types if current else [], f"rollback: {why}")
        if token is None:
            raise InvalidRequest(f"{branch} is locked by an indexing job; roll back once it ends")
        blackout_start = perf_counter()
        try:
            self._mutate(key, lambda s, now: shadows.rollback(s, token, actor, why, now), _origin(actor))
            restored = self._load(key).active
            self._link(branch, index_type, restored.location if restored else None)
        finally:
            self.locks.release(branch, job, ReleaseReason.COMPLETED, _origin())
        blackout_ms = (perf_counter() - blackout_start) * 1000
        return self._seen(SwitchResult(
            status=Status.ROLLED_BACK, shadow_index_id=restored.shadow_index_id if restored else "", branch=branch,
            index_type=index_type, detail=why, fencing_token=token, blackout_ms=round(blackout_ms, 3)))

    def cancel(self, ref: str, actor: str, why: str) -> Outcome:
        return self._mutate(self._key_of(ref), lambda s, now: shadows.end(
            s, ref, ShadowState.CANCELLED, why, actor, now, self.rules), _origin(actor))

    # --- reads and sweeps ---------------------------------------------------------------

    def builds(self) -> list[tuple[ShadowBuild, ShadowState]]:
        now = self.commits.clock()
        return [(b, shadows.effective_state(b, now, self.rules))
                for state in self.store.indexes() for b in state.builds]

    def status(self, ref: str) -> dict[str, Any]:
        state = self._load(self._key_of(ref))
        build = shadows._get(state, ref)
        return status_json(build, shadows.effective_state(build, self.commits.clock(), self.rules))

    def current(self, branch: str, index_type: str) -> IndexPointer | None:
        state = self.store.load_index(index_key(branch, index_type))
        return state.active if state else None

    def sweep(self, fence: Fence = UNFENCED) -> list:
        """Record silent builds FAILED and stale claims BUILT, forget finished builds past
        their retention: on the indexes that are due (``IndexState.due_at``) only; the beat
        lease's fence is checked before each (``indexgate.leases``)."""
        entries = []
        for key in fence.guard(lambda: self.store.indexes_due(self.commits.clock())):
            entries += self._mutate(key, lambda s, now: shadows.sweep(s, now, self.rules), _origin(),
                                    sweeping=True).audit
        return entries

    # --- helpers ------------------------------------------------------------------------

    def _switch_lock(self, branch: str, job: str, resource_types: list[str], reason: str) -> int | None:
        """Take the switch lock; its highest fencing token, or None if the branch is busy."""
        request = AcquireRequest(job_id=job, holder=SWITCHER, resource_types=tuple(resource_types) or (None,),
                                 reason=reason, ttl_s=self.policy.lock_ttl_s,
                                 heartbeat_interval_s=self.policy.lock_heartbeat_interval_s, kind=LockKind.SWITCH)
        outcome = self.locks.acquire(branch, request, _origin())
        tokens = [e.fencing_token for e in outcome.audit if e.kind is AuditKind.ACQUIRED and e.fencing_token]
        return max(tokens) if outcome.status is Status.APPLIED and tokens else None

    def _link(self, branch: str, index_type: str, location: str | None) -> None:
        if self.policy.strategy != "filesystem" or not self.policy.links_dir:
            return
        if location:
            locations.swap_link(self.policy.links_dir, branch, index_type, location)
        else:  # rolled back to "no index": the link must not name the failed one
            locations.remove_link(self.policy.links_dir, branch, index_type)
        self._step("linked")

    def _auto_switch(self, ref: str) -> None:
        try:
            result = self.switch(ref, actor="auto-switch")
            log.info("auto-switch of %s: %s %s", ref, result.status, result.detail)
        except IndexgateError as exc:
            log.warning("auto-switch of %s did not run: %s", ref, exc)

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    def _key_of(self, ref: str) -> str:
        key = self.store.index_of(ref)
        if key is None:
            raise InvalidRequest(f"no shadow build {ref}; `indexgate shadows list` shows them")
        return key

    def _load(self, key: str) -> IndexState:
        state = self.store.load_index(key)
        if state is None:
            raise InvalidRequest(f"no index {key}")
        return state

    def _mutate(self, key: str, rule: Callable[[IndexState, datetime], Transition], origin: Origin,
                sweeping: bool = False) -> Outcome:
        branch, _, index_type = key.rpartition("|")
        store = self.store
        return self.commits.cas_loop(lambda: store.load_index(key) or IndexState(branch=branch, index_type=index_type),
                                     store.save_index, rule, origin, key,
                                     due=lambda s, now: due.index_due(s, now, self.rules), sweeping=sweeping)


def _origin(actor: str = SWITCHER) -> Origin:
    return Origin(actor=actor)


def _then(first: Rule, second: Rule) -> Rule:
    """Both rules in one write; ``second`` runs only if ``first`` changed something."""
    def rule(state: IndexState, now: datetime) -> Transition:
        transition = first(state, now)
        if not transition.changed:
            return transition
        more = second(transition.state, now)
        transition.state = more.state
        transition.audit += more.audit
        return transition
    return rule


def _note_failure(state: IndexState, ref: str, why: str, now: datetime) -> Transition:
    transition = Transition(state)
    transition.note(shadows._entry(AuditKind.SWITCH_FAILED, now, SWITCHER, state, state.build(ref), why))
    return transition


def status_json(build: ShadowBuild, state: ShadowState) -> dict[str, Any]:
    """The stable ``--json`` shape of a shadow build (field names as in the seed design)."""
    return {
        "shadow_index_id": build.shadow_index_id, "job_id": build.job_id, "branch_name": build.branch,
        "index_type": build.index_type, "state": str(state), "build_progress_percent": build.build_progress_percent,
        "switch_ready": state is ShadowState.BUILT, "record_count": build.record_count,
        "index_size_bytes": build.index_size_bytes, "location": build.location,
        "created_at": build.created_at.isoformat(),
        "completed_at": build.completed_at.isoformat() if build.completed_at else None,
        "switched_at": build.switched_at.isoformat() if build.switched_at else None,
        "switch_fencing_token": build.switch_fencing_token, "switch_duration_ms": build.switch_duration_ms,
        "blackout_ms": build.blackout_ms, "failure_reason": build.failure_reason,
        "verified": build.verification.verified if build.verification else None,
        "verification": build.verification.model_dump(mode="json") if build.verification else None,
        "clock": build.clock.model_dump(mode="json"),  # the funnel clock's offset estimate (indexgate.skew)
    }
