"""Shadow builds and the active index pointer, pure: states, validation, swap, rollback.

A shadow build takes no lock: every write stays allowed while it builds. Only legal state
changes happen (``LEGAL``). Like a lock, a build whose heartbeats stop is dead at its
deadline (``effective_state`` says FAILED before any sweep), and a switch claim that was
abandoned by a crashed worker expires, so the switch can be retried.

The pointer only moves forward in fencing order: ``swap`` refuses a token older than the
last one applied, so a stale switcher can never clobber a newer index.

Validation and verification each do only what they say: ``validate`` turns the checks asked
for into results (``INTEGRITY_CHECK`` from the manifest facts ``indexgate.locations``
gathered); what post-switch verification found (``indexgate.verifiers``) arrives as a
``Verification`` and is recorded on the build, the pointer and the ``switched`` entry.
Heartbeats count like a lock's, corrected for the funnel's clock skew (``indexgate.skew``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from pydantic import BaseModel

from indexgate import skew
from indexgate.errors import InvalidRequest, InvalidTransition, StaleFencingToken, SwitchClaimed
from indexgate.rules import Policy, Transition
from indexgate.schemas.records import AuditEntry, AuditKind, ClockSkew
from indexgate.schemas.shadows import IndexPointer, IndexState, ShadowBuild, ShadowState, Verification

S = ShadowState
LEGAL: dict[ShadowState, frozenset[ShadowState]] = {
    S.PREPARING: frozenset({S.BUILDING, S.BUILT, S.FAILED, S.CANCELLED}),
    S.BUILDING: frozenset({S.BUILT, S.FAILED, S.CANCELLED}),
    S.BUILT: frozenset({S.SWITCHING, S.FAILED, S.CANCELLED}),
    S.SWITCHING: frozenset({S.ACTIVE, S.BUILT, S.FAILED}),
    S.ACTIVE: frozenset({S.CLEANUP}),
    S.CLEANUP: frozenset({S.ACTIVE}),  # a backup re-activated by rollback
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
IN_FLIGHT = frozenset({S.PREPARING, S.BUILDING, S.BUILT, S.SWITCHING})
FINISHED = frozenset({S.FAILED, S.CANCELLED, S.CLEANUP})
CHECKS = ("RECORD_COUNT_VALIDATION", "SIZE_COMPARISON", "INTEGRITY_CHECK")
MAX_BACKUPS = 3


@dataclass(frozen=True)
class BuildRequest:
    shadow_index_id: str
    job_id: str
    index_type: str
    resource_types: tuple[str, ...]
    holder: str
    heartbeat_interval_s: float | None = None
    event_time: datetime | None = None


@dataclass(frozen=True)
class LocationFacts:
    """What reading an index location's manifest found (gathered by ``indexgate.locations``)."""

    exists: bool
    integrity_ok: bool
    detail: str


class CheckResult(BaseModel):
    check: str
    passed: bool
    detail: str


# --- liveness -------------------------------------------------------------------------


def heartbeat_deadline(build: ShadowBuild, policy: Policy) -> datetime:
    return build.last_heartbeat + timedelta(seconds=build.heartbeat_interval_s * policy.missed_heartbeats)


def effective_state(build: ShadowBuild, now: datetime, policy: Policy) -> ShadowState:
    """The state at ``now``: a silent build is FAILED, an abandoned switch claim is BUILT."""
    if build.state in (S.PREPARING, S.BUILDING) and now >= heartbeat_deadline(build, policy):
        return S.FAILED
    if build.state is S.SWITCHING and build.switch_claim_expires_at and now >= build.switch_claim_expires_at:
        return S.BUILT
    return build.state


def forgettable(state: IndexState, build: ShadowBuild) -> bool:
    """A finished build nothing points at: FAILED, CANCELLED, or CLEANUP that is no kept
    backup (nor the automatic rollback's target). ACTIVE and backups are never forgotten."""
    kept = {pointer.shadow_index_id for pointer in (state.active, state.replaced, *state.backups) if pointer}
    return build.state in FINISHED and build.shadow_index_id not in kept


def forget_at(state: IndexState, build: ShadowBuild, policy: Policy) -> datetime | None:
    """When a finished build's retention ends (None: it is not forgettable)."""
    if not forgettable(state, build):
        return None
    ended = build.finished_at or max(t for t in (build.created_at, build.completed_at, build.switched_at,
                                                  build.last_heartbeat) if t)  # builds finished before the field
    return ended + timedelta(seconds=policy.build_retention_s)


def _forget(t: Transition, now: datetime, policy: Policy, keep: int) -> None:
    """Drop finished builds past their retention, then the oldest finished ones beyond
    ``keep`` builds: the aggregate every shadow event rewrites stays bounded."""
    state: IndexState = t.state
    ends = {n: at for n, b in enumerate(state.builds) if (at := forget_at(state, b, policy)) is not None}
    gone = {n for n, at in ends.items() if at <= now}
    spare = sorted((at, n) for n, at in ends.items() if n not in gone)  # oldest first, then first registered
    gone |= {n for _, n in spare[:max(0, len(state.builds) - len(gone) - keep)]}
    if gone:
        state.builds = [b for n, b in enumerate(state.builds) if n not in gone]
        t.touch()


# --- transitions ----------------------------------------------------------------------


def register(state: IndexState, req: BuildRequest, now: datetime, policy: Policy) -> Transition:
    """Start a shadow build, or refuse it while another is in flight for this index."""
    t = Transition(_copy(state))
    if t.state.build(req.job_id) or t.state.build(req.shadow_index_id):
        t.note(_entry(AuditKind.IGNORED, now, req.holder, t.state, None, f"build {req.shadow_index_id} already registered"))
        return t
    busy = [b for b in t.state.builds if effective_state(b, now, policy) in IN_FLIGHT]
    if busy:
        t.note(AuditEntry(
            at=now, kind=AuditKind.SHADOW_REFUSED, actor=req.holder, branch=t.state.branch, job_id=req.job_id,
            reason=f"build {busy[0].shadow_index_id} ({effective_state(busy[0], now, policy)}) is in flight for "
                   f"{t.state.branch} {t.state.index_type}; one build at a time",
            detail={"shadow_index_id": req.shadow_index_id, "index_type": t.state.index_type,
                    "in_flight": busy[0].shadow_index_id},
        ))
        return t
    _forget(t, now, policy, keep=policy.max_builds_per_index - 1)
    if len(t.state.builds) >= policy.max_builds_per_index:
        t.note(AuditEntry(
            at=now, kind=AuditKind.SHADOW_REFUSED, actor=req.holder, branch=t.state.branch, job_id=req.job_id,
            reason=f"{t.state.branch} {t.state.index_type} keeps {len(t.state.builds)} builds (active, backups, in "
                   f"flight) and none may be forgotten; the limit is {policy.max_builds_per_index} builds per index "
                   "(INDEXGATE_MAX_BUILDS_PER_INDEX)",
            detail={"shadow_index_id": req.shadow_index_id, "index_type": t.state.index_type,
                    "limit": "INDEXGATE_MAX_BUILDS_PER_INDEX"},
        ))
        return t
    clock = skew.observe(ClockSkew(), req.event_time, now, policy.max_clock_skew_s)
    build = ShadowBuild(
        shadow_index_id=req.shadow_index_id, job_id=req.job_id, branch=t.state.branch, index_type=t.state.index_type,
        resource_types=list(req.resource_types), holder=req.holder, created_at=now, last_heartbeat=now,
        heartbeat_interval_s=req.heartbeat_interval_s or policy.default_heartbeat_interval_s,
        last_event_time=skew.believed_time(req.event_time, now, policy.max_clock_skew_s), clock=clock,
        last_alive_at=skew.alive_at(clock, req.event_time, now, policy.max_clock_skew_s),
    )
    t.state.builds.append(build)
    t.note(_entry(AuditKind.SHADOW_STATE, now, req.holder, t.state, build, "registered", to=S.PREPARING))
    return t


def progress(state: IndexState, ref: str, now: datetime, policy: Policy, *, percent: float | None,
             record_count: int | None, eta_s: float | None, event_time: datetime | None) -> Transition:
    """A heartbeat or progress report: PREPARING -> BUILDING, counters updated."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    current = effective_state(build, now, policy)
    if current not in (S.PREPARING, S.BUILDING):
        if current is S.FAILED and build.state is not S.FAILED:
            build.failure_reason = "HEARTBEAT_MISSED"
            _move(t, build, S.FAILED, now, "heartbeat deadline passed before this heartbeat", "indexgate-sweeper")
        else:
            t.note(_entry(AuditKind.IGNORED, now, build.holder, t.state, build, f"heartbeat for a {current} build"))
        return t
    beat = skew.beat(build.clock, event_time, now, policy.max_clock_skew_s, policy.missed_heartbeats)
    build.clock = beat.clock  # kept even from a stale heartbeat: the estimate must move on (indexgate.skew)
    stale = skew.stale(beat, build.last_alive_at)
    if stale:
        t.touch()
        t.note(_entry(AuditKind.IGNORED, now, build.holder, t.state, build, stale))
        return t
    build.last_event_time, build.last_alive_at = beat.believed_time or build.last_event_time, beat.alive_at
    build.last_heartbeat = max(build.last_heartbeat, beat.alive_at)
    build.build_progress_percent = percent if percent is not None else build.build_progress_percent
    build.record_count = record_count if record_count is not None else build.record_count
    build.estimated_remaining_s = eta_s
    if build.state is S.PREPARING:
        _move(t, build, S.BUILDING, now, "first heartbeat", build.holder)
    t.touch()
    return t


def complete(state: IndexState, ref: str, now: datetime, policy: Policy, *, record_count: int | None,
             index_size_bytes: int | None, location: str | None) -> Transition:
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    if effective_state(build, now, policy) not in (S.PREPARING, S.BUILDING):
        t.note(_entry(AuditKind.IGNORED, now, build.holder, t.state, build, f"completion for a {build.state} build"))
        return t
    build.record_count = record_count if record_count is not None else build.record_count
    build.index_size_bytes = index_size_bytes
    build.location = location
    build.completed_at = now
    build.build_progress_percent = 100.0
    _move(t, build, S.BUILT, now, "build completed", build.holder)
    return t


def end(state: IndexState, ref: str, to: ShadowState, why: str, actor: str, now: datetime, policy: Policy) -> Transition:
    """FAILED or CANCELLED; ending an already ended build changes nothing."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    if build.state not in IN_FLIGHT or build.state is S.SWITCHING:
        t.note(_entry(AuditKind.IGNORED, now, actor, t.state, build, f"{to} for a {build.state} build"))
        return t
    if effective_state(build, now, policy) is S.FAILED:  # it died silently before this event
        to, why, actor = S.FAILED, "HEARTBEAT_MISSED", "indexgate-sweeper"
    build.failure_reason = why
    _move(t, build, to, now, why, actor)
    return t


def claim_switch(state: IndexState, ref: str, now: datetime, policy: Policy, claim_s: float) -> Transition:
    """BUILT -> SWITCHING: the one compare-and-swap that makes concurrent switches exclusive."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    current = effective_state(build, now, policy)
    if current is S.SWITCHING:
        raise SwitchClaimed(f"build {build.shadow_index_id} is SWITCHING: another switch holds its claim")
    if current is not S.BUILT:
        raise InvalidTransition(f"build {build.shadow_index_id} is {current}, not BUILT: it cannot be switched now")
    build.state = S.BUILT  # an abandoned claim reverts before it is claimed again
    build.switch_claimed_at = now
    build.switch_claim_expires_at = now + timedelta(seconds=claim_s)
    _move(t, build, S.SWITCHING, now, "switch claimed", "indexgate-switch")
    return t


def unclaim(state: IndexState, ref: str, why: str, now: datetime) -> Transition:
    """SWITCHING -> BUILT after a refused validation or a busy branch; the old index stays."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    if build.state is S.SWITCHING:
        build.switch_claim_expires_at = None
        _move(t, build, S.BUILT, now, why, "indexgate-switch")
    t.note(_entry(AuditKind.SWITCH_FAILED, now, "indexgate-switch", t.state, build, why))
    return t


def swap(state: IndexState, ref: str, token: int, now: datetime, keep_backup: bool = True) -> Transition:
    """Point readers at the build; the old pointer becomes a backup. One atomic write."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    if build.state is not S.SWITCHING:
        raise InvalidTransition(f"build {build.shadow_index_id} is {build.state}; only a SWITCHING build is swapped in")
    _require_token(t.state, token)
    old = t.state.active
    t.state.replaced = old  # kept even without a backup: verification may still swap back
    if old is not None:
        if keep_backup:
            t.state.backups = (t.state.backups + [old])[-MAX_BACKUPS:]
        previous = t.state.build(old.shadow_index_id)
        if previous is not None and previous.state is S.ACTIVE:
            _move(t, previous, S.CLEANUP, now, f"superseded by {build.shadow_index_id}", "indexgate-switch")
    t.state.active = IndexPointer(shadow_index_id=build.shadow_index_id, location=build.location, switched_at=now,
                                  fencing_token=token, record_count=build.record_count,
                                  index_size_bytes=build.index_size_bytes)
    t.state.pointer_token = token
    build.switch_fencing_token = token
    build.switched_at = now
    _move(t, build, S.ACTIVE, now, "switched in", "indexgate-switch")
    return t


def undo_swap(state: IndexState, ref: str, why: str, now: datetime) -> Transition:
    """Automatic rollback after a failed post-switch verification: back to the backup."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    if t.state.active is None or t.state.active.shadow_index_id != build.shadow_index_id:
        return t  # someone already moved on; nothing of ours to undo
    restored = t.state.replaced
    if restored is not None and t.state.backups and t.state.backups[-1] == restored:
        t.state.backups.pop()  # it is active again, no longer a backup
    _activate(t, restored, now, why)
    build.state = S.SWITCHING  # the ACTIVE it reached never served: record it as a failed switch
    build.failure_reason = why
    _move(t, build, S.FAILED, now, why, "indexgate-switch")
    t.note(_entry(AuditKind.ROLLED_BACK, now, "indexgate-switch", t.state, build, why))
    return t


def rollback(state: IndexState, token: int, operator: str, why: str, now: datetime) -> Transition:
    """Operator rollback: re-activate the newest backup, the same atomic way as a switch."""
    t = Transition(_copy(state))
    if not t.state.backups:
        raise InvalidRequest(f"{t.state.branch} {t.state.index_type} has no backup index to roll back to")
    _require_token(t.state, token)
    current = t.state.build(t.state.active.shadow_index_id) if t.state.active else None
    _reactivate_backup(t, now, why)
    t.state.active = t.state.active.model_copy(update={"fencing_token": token, "switched_at": now})  # type: ignore[union-attr]
    t.state.pointer_token = token
    if current is not None and current.state is S.ACTIVE:
        _move(t, current, S.CLEANUP, now, f"rolled back: {why}", operator)
    t.note(_entry(AuditKind.ROLLED_BACK, now, operator, t.state, current, why))
    return t


def record_switch(state: IndexState, ref: str, switch_ms: float, blackout_ms: float, now: datetime,
                  verification: Verification | None = None) -> Transition:
    """Durations and the verification, on the build, on the pointer it set, and announced."""
    t = Transition(_copy(state))
    build = _get(t.state, ref)
    build.switch_duration_ms = round(switch_ms, 3)
    build.blackout_ms = round(blackout_ms, 3)
    build.verification = verification or build.verification
    if verification and t.state.active and t.state.active.shadow_index_id == build.shadow_index_id:
        t.state.active = t.state.active.model_copy(update={"verification": verification})
    kind = AuditKind.SWITCHED if build.state is S.ACTIVE else AuditKind.SWITCH_FAILED
    checked = ({"verified": verification.verified, "verification": verification.model_dump(mode="json")}
               if verification else {})
    t.note(_entry(kind, now, "indexgate-switch", t.state, build,
                  f"switch {'done' if kind is AuditKind.SWITCHED else 'failed'} in {switch_ms:.1f} ms, "
                  f"writes blocked {blackout_ms:.1f} ms",
                  switch_duration_ms=build.switch_duration_ms, blackout_ms=build.blackout_ms,
                  fencing_token=build.switch_fencing_token, location=build.location, **checked))
    return t


def sweep(state: IndexState, now: datetime, policy: Policy) -> Transition:
    """Record what ``effective_state`` already says: silent builds FAILED, stale claims BUILT;
    forget finished builds past ``build_retention_s`` (or beyond ``max_builds_per_index``)."""
    t = Transition(_copy(state))
    for build in t.state.builds:
        current = effective_state(build, now, policy)
        if current is not build.state:
            if current is S.FAILED:
                build.failure_reason = "HEARTBEAT_MISSED"
            _move(t, build, current, now, "HEARTBEAT_MISSED" if current is S.FAILED else "switch claim expired",
                  "indexgate-sweeper")
    _forget(t, now, policy, keep=policy.max_builds_per_index)
    return t


# --- validation -----------------------------------------------------------------------


def validate(build: ShadowBuild, active: IndexPointer | None, facts: LocationFacts | None, checks: Iterable[str],
             max_shrink_fraction: float) -> list[CheckResult]:
    """The asked checks only; ``facts`` (the manifest's) are needed only for ``INTEGRITY_CHECK``."""
    results = []
    for check in checks:
        if check == "RECORD_COUNT_VALIDATION":
            ok = bool(build.record_count)
            results.append(CheckResult(check=check, passed=ok, detail=f"{build.record_count or 0} records"))
        elif check == "SIZE_COMPARISON":
            results.append(_size_check(build, active, max_shrink_fraction))
        elif check == "INTEGRITY_CHECK":
            passed = facts is not None and facts.exists and facts.integrity_ok
            results.append(CheckResult(check=check, passed=passed, detail=facts.detail if facts else "not inspected"))
        else:
            results.append(CheckResult(check=check, passed=False, detail=f"unknown check; known: {', '.join(CHECKS)}"))
    return results


def _size_check(build: ShadowBuild, active: IndexPointer | None, max_shrink: float) -> CheckResult:
    name = "SIZE_COMPARISON"
    if active is None or not active.index_size_bytes:
        return CheckResult(check=name, passed=True, detail="no active index to compare with")
    new = build.index_size_bytes or 0
    shrink = 1 - new / active.index_size_bytes
    return CheckResult(check=name, passed=shrink <= max_shrink,
                       detail=f"{new} bytes vs {active.index_size_bytes} active ({shrink:+.1%} shrink, limit {max_shrink:.0%})")


# --- helpers --------------------------------------------------------------------------


def _copy(state: IndexState) -> IndexState:
    return state.model_copy(deep=True)


def _get(state: IndexState, ref: str) -> ShadowBuild:
    build = state.build(ref)
    if build is None:
        raise InvalidRequest(f"no shadow build {ref} on {state.branch} {state.index_type}; `indexgate shadows list`")
    return build


def _require_token(state: IndexState, token: int) -> None:
    if token <= state.pointer_token:
        raise StaleFencingToken(f"fencing token {token} is not newer than {state.pointer_token}, the last applied to "
                                f"{state.branch} {state.index_type}; a newer switch already moved the pointer")


def _reactivate_backup(t: Transition, now: datetime, why: str) -> None:
    _activate(t, t.state.backups.pop() if t.state.backups else None, now, why)


def _activate(t: Transition, restored: IndexPointer | None, now: datetime, why: str) -> None:
    state: IndexState = t.state
    state.active = restored
    state.replaced = None
    if restored is not None:
        build = state.build(restored.shadow_index_id)
        if build is not None and build.state is S.CLEANUP:
            _move(t, build, S.ACTIVE, now, f"re-activated: {why}", "indexgate-switch")


def _move(t: Transition, build: ShadowBuild, to: ShadowState, now: datetime, why: str, actor: str) -> None:
    if to not in LEGAL[build.state]:
        raise InvalidTransition(f"build {build.shadow_index_id}: {build.state} -> {to} is not a legal transition")
    before = build.state
    build.state = to
    build.finished_at = now if to in FINISHED else None
    t.note(_entry(AuditKind.SHADOW_STATE, now, actor, t.state, build, why, **{"from": str(before), "to": str(to)}))


def _entry(kind: AuditKind, now: datetime, actor: str, state: IndexState, build: ShadowBuild | None, why: str,
           **detail) -> AuditEntry:
    base = {"index_type": state.index_type, "shadow_index_id": build.shadow_index_id if build else None}
    return AuditEntry(at=now, kind=kind, actor=actor, branch=state.branch, job_id=build.job_id if build else None,
                      reason=why, detail=base | {k: (str(v) if isinstance(v, S) else v) for k, v in detail.items()})
