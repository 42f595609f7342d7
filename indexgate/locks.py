"""Lock rules, pure: conflict, grant, heartbeat, expiry, health, extend, release.

Every function takes a ``BranchState`` and ``now`` and returns a ``Transition``: a new state
plus the audit entries describing what changed. Nothing here touches a store, a broker or
the clock, so the rules are tested without any server and the service can apply them
inside a compare-and-swap loop.

Expiry is computed, not stored: a lock is dead the instant ``now`` passes its TTL or its
heartbeat deadline. Sweeps only tidy up and announce; the permission check and a new
acquire never wait for them. A heartbeat counts at the instant its funnel's ``time`` says,
corrected for that funnel's estimated clock skew (``indexgate.skew``), never later than now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from pydantic import BaseModel

from indexgate import skew
from indexgate.errors import InvalidRequest, LockNotFound
from indexgate.rules import Policy, Transition
from indexgate.schemas.records import (
    AuditEntry,
    AuditKind,
    BranchState,
    ClockSkew,
    EarlyEnd,
    FinishedJob,
    Health,
    JobRecord,
    JobStatus,
    Lock,
    LockKind,
    ReleaseReason,
)

SWEEPER = "indexgate-sweeper"


@dataclass(frozen=True)
class AcquireRequest:
    job_id: str
    holder: str
    resource_types: tuple[str | None, ...]  # (None,) = branch-wide
    reason: str
    ttl_s: float | None = None
    heartbeat_interval_s: float | None = None
    kind: LockKind = LockKind.INDEXING
    auto_release: bool = True
    event_time: datetime | None = None


@dataclass(frozen=True)
class HeartbeatUpdate:
    job_id: str
    status: str = "healthy"
    progress_percent: float | None = None
    estimated_remaining_s: float | None = None
    event_time: datetime | None = None


class LockView(BaseModel):
    """A lock as operators and developers see it at one instant."""

    lock: Lock
    health: Health
    in_force: bool
    death_reason: ReleaseReason | None
    heartbeat_deadline: datetime
    seconds_since_heartbeat: float
    clock_skew_s: float  # the correction applied to the holder's event times (its clock's estimated skew)
    clock_skew_beyond_bound: bool  # the holder's clock looks off by more than max_clock_skew_s


# --- liveness -------------------------------------------------------------------------


def heartbeat_deadline(lock: Lock, policy: Policy) -> datetime:
    return lock.last_heartbeat + timedelta(
        seconds=lock.heartbeat_interval_s * policy.missed_heartbeats
    )


def death_reason(lock: Lock, now: datetime, policy: Policy) -> ReleaseReason | None:
    """Why the lock is dead at ``now``, or None while it lives."""
    if now >= lock.expires_at:
        return ReleaseReason.TTL_EXPIRED
    if now >= heartbeat_deadline(lock, policy):
        return ReleaseReason.HEARTBEAT_MISSED
    return None


def in_force(lock: Lock, now: datetime, policy: Policy) -> bool:
    """A dead lock binds nobody, unless it opted out of automatic release."""
    return not lock.auto_release or death_reason(lock, now, policy) is None


def health(lock: Lock, now: datetime, policy: Policy) -> Health:
    if death_reason(lock, now, policy) is not None:
        return Health.CRITICAL
    since_s = (now - lock.last_heartbeat).total_seconds()
    if since_s <= lock.heartbeat_interval_s:
        return Health.HEALTHY
    return Health.WARNING


def view(lock: Lock, now: datetime, policy: Policy) -> LockView:
    return LockView(
        lock=lock,
        health=health(lock, now, policy),
        in_force=in_force(lock, now, policy),
        death_reason=death_reason(lock, now, policy),
        heartbeat_deadline=heartbeat_deadline(lock, policy),
        seconds_since_heartbeat=round((now - lock.last_heartbeat).total_seconds(), 3),
        clock_skew_s=round(skew.correction_s(lock.clock, policy.max_clock_skew_s), 3),
        clock_skew_beyond_bound=skew.beyond_bound(lock.clock, policy.max_clock_skew_s),
    )


def conflicts(a: str | None, b: str | None) -> bool:
    """Branch-wide (None) conflicts with everything on its branch; else same type only."""
    return a is None or b is None or a == b


# --- transitions ----------------------------------------------------------------------


def acquire(state: BranchState, req: AcquireRequest, now: datetime, policy: Policy) -> Transition:
    """Grant all requested locks to the job, or none: a refusal names the holders."""
    t = Transition(_copy(state, now, policy))
    known = t.state.job(req.job_id)
    if known is not None:
        t.note(_ignored(now, req.holder, t.state.branch, req.job_id, f"job is already {known.status}"))
        return t
    wanted = _normalized(req.resource_types)
    _release_dead(t, now, policy, lambda lock: any(conflicts(lock.resource_type, rt) for rt in wanted))
    blockers = [
        lock
        for lock in t.state.locks
        if in_force(lock, now, policy) and any(conflicts(lock.resource_type, rt) for rt in wanted)
    ]
    if blockers:
        return _refuse(t, req, blockers, now)
    if len(t.state.locks) + len(wanted) > policy.max_locks_per_branch:
        _release_dead(t, now, policy, lambda lock: True)  # make room first: dead locks bind nobody
        if len(t.state.locks) + len(wanted) > policy.max_locks_per_branch:
            return _refuse(t, req, [], now, why=(
                f"branch {t.state.branch} holds {len(t.state.locks)} live lock(s); {len(wanted)} more would pass the "
                f"limit of {policy.max_locks_per_branch} live locks per branch (INDEXGATE_MAX_LOCKS_PER_BRANCH)"),
                           limit="INDEXGATE_MAX_LOCKS_PER_BRANCH")
    ttl_s = min(req.ttl_s or policy.default_ttl_s, policy.max_ttl_s)
    clock = skew.observe(ClockSkew(), req.event_time, now, policy.max_clock_skew_s)
    for resource_type in wanted:
        t.state.fence += 1
        lock = Lock(
            branch=t.state.branch,
            resource_type=resource_type,
            holder=req.holder,
            job_id=req.job_id,
            reason=req.reason,
            kind=req.kind,
            fencing_token=t.state.fence,
            acquired_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
            auto_release=req.auto_release,
            heartbeat_interval_s=req.heartbeat_interval_s or policy.default_heartbeat_interval_s,
            last_heartbeat=now,
            clock=clock,
        )
        t.state.locks.append(lock)
        t.note(_entry(AuditKind.ACQUIRED, now, req.holder, lock, reason=req.reason))
    t.state.jobs.append(
        JobRecord(
            job_id=req.job_id,
            branch=t.state.branch,
            status=JobStatus.ACTIVE,
            holder=req.holder,
            last_event_time=skew.believed_time(req.event_time, now, policy.max_clock_skew_s),
            last_alive_at=skew.alive_at(clock, req.event_time, now, policy.max_clock_skew_s),
            clock=clock,
        )
    )
    return t


def ended_before_start(state: BranchState, req: AcquireRequest, end: EarlyEnd, now: datetime,
                       policy: Policy) -> Transition:
    """A ``started`` whose job's end arrived first: no lock, the job is remembered as ended."""
    t = Transition(_copy(state, now, policy))
    known = t.state.job(req.job_id)
    if known is not None:
        t.note(_ignored(now, req.holder, t.state.branch, req.job_id, f"job is already {known.status}"))
        return t
    t.state.finished[req.job_id] = FinishedJob(status=JobStatus.ENDED, holder=req.holder, ended_at=now,
                                               outcome=f"{end.reason} before started")
    t.touch()
    t.note(_ignored(now, req.holder, t.state.branch, req.job_id,
                    f"started after its own {end.reason} (received {end.at.isoformat()}, event {end.cause}): "
                    "the job is over, no lock taken"))
    return t


def heartbeat(state: BranchState, hb: HeartbeatUpdate, now: datetime, policy: Policy) -> Transition:
    """Refresh the job's live locks; a dead lock is never revived, only released."""
    t = Transition(_copy(state, now, policy))
    job = t.state.job(hb.job_id)
    if job is None or job.status is not JobStatus.ACTIVE:
        status = job.status if job else "unknown"
        t.note(_ignored(now, hb.job_id, t.state.branch, hb.job_id, f"heartbeat for a job that is {status}"))
        return t
    beat = skew.beat(job.clock, hb.event_time, now, policy.max_clock_skew_s, policy.missed_heartbeats)
    job.clock = beat.clock  # kept even from a stale heartbeat: the estimate must move on (indexgate.skew)
    _release_dead(t, now, policy, lambda lock: lock.job_id == hb.job_id)
    stale = skew.stale(beat, job.last_alive_at)
    if stale:
        for lock in _job_locks(t.state, hb.job_id):
            lock.clock = job.clock
        t.touch()
        t.note(_ignored(now, job.holder, t.state.branch, hb.job_id, stale))
        return t
    job.last_event_time, job.last_alive_at = beat.believed_time or job.last_event_time, beat.alive_at
    for lock in _job_locks(t.state, hb.job_id):
        lock.last_heartbeat = max(lock.last_heartbeat, beat.alive_at)
        lock.clock = job.clock
        lock.holder_status = hb.status
        lock.progress_percent = hb.progress_percent if hb.progress_percent is not None else lock.progress_percent
        lock.estimated_remaining_s = hb.estimated_remaining_s
        _extend_for_eta(t, lock, now, policy)
    t.touch()
    _end_job_if_lockless(t.state, hb.job_id, now, "lost: its locks died before this heartbeat")
    return t


def release_job(
    state: BranchState, job_id: str, reason: ReleaseReason, actor: str, now: datetime,
    policy: Policy, detail: dict | None = None,
) -> Transition:
    """End a job (completed / failed / cancelled): its locks go, the job is remembered.

    A lock that had already died when the job's end arrives is released for the reason it
    died (TTL_EXPIRED / HEARTBEAT_MISSED), as a sweep would have: the job lost it before it
    finished, and the audit must not say it bound anyone until now. Live locks (and dead ones
    that opted out of automatic release, which still bind) go with the job's ``reason``.
    """
    t = Transition(_copy(state, now, policy))
    job = t.state.job(job_id)
    if job is None or job.status is not JobStatus.ACTIVE:
        status = job.status if job else "unknown"
        t.note(_ignored(now, actor, t.state.branch, job_id, f"{reason} for a job that is {status}"))
        return t
    for lock in _job_locks(t.state, job_id):
        died = None if in_force(lock, now, policy) else death_reason(lock, now, policy)
        if died is None:
            _remove(t, lock, reason, actor, now, detail or {})
        else:
            _remove(t, lock, died, actor, now, {**(detail or {}), "job_reported": str(reason),
                                                "died_at": _died_at(lock, died, policy).isoformat()})
    _end_job(t.state, job, now, str(reason))
    return t


def force_release(state: BranchState, lock_id: str, operator: str, why: str, now: datetime, policy: Policy) -> Transition:
    t = Transition(_copy(state, now, policy))
    lock = _find(t.state, lock_id)
    _remove(t, lock, ReleaseReason.FORCED, operator, now, {"why": why})
    _end_job_if_lockless(t.state, lock.job_id, now, str(ReleaseReason.FORCED))
    return t


def extend(
    state: BranchState, lock_id: str, by_s: float, operator: str, why: str, now: datetime, policy: Policy
) -> Transition:
    """Push a live lock's TTL out by ``by_s``, never past ``acquired_at + max_ttl_s``."""
    if by_s <= 0:
        raise InvalidRequest(f"extension must be positive seconds, got {by_s}")
    t = Transition(_copy(state, now, policy))
    lock = _find(t.state, lock_id)
    if not in_force(lock, now, policy):
        raise InvalidRequest(
            f"lock {lock_id} is already dead ({death_reason(lock, now, policy)}); "
            "it cannot be extended - the job must start again"
        )
    cap = lock.acquired_at + timedelta(seconds=policy.max_ttl_s)
    new_expiry = min(lock.expires_at + timedelta(seconds=by_s), cap)
    if new_expiry <= lock.expires_at:
        raise InvalidRequest(
            f"lock {lock_id} already expires at the maximum TTL ({policy.max_ttl_s:.0f} s "
            f"after acquisition, {cap.isoformat()}); raise INDEXGATE_MAX_TTL_S to go further"
        )
    _set_expiry(t, lock, new_expiry, operator, why, now)
    return t


def sweep(state: BranchState, now: datetime, policy: Policy, reasons: Iterable[ReleaseReason]) -> Transition:
    """Release dead auto-release locks whose death reason is in ``reasons``."""
    t = Transition(_copy(state, now, policy))
    wanted = set(reasons)
    _release_dead(t, now, policy, lambda lock: death_reason(lock, now, policy) in wanted)
    return t


def refresh_health(state: BranchState, now: datetime, policy: Policy) -> Transition:
    """Record health changes (healthy / warning / critical) so each is announced once."""
    t = Transition(_copy(state, now, policy))
    for lock in t.state.locks:
        current = health(lock, now, policy)
        if current != lock.last_health:
            t.note(_entry(
                AuditKind.HEALTH_CHANGED, now, SWEEPER, lock,
                reason=f"{lock.last_health} -> {current}",
                detail={"from": str(lock.last_health), "to": str(current)},
            ))
            lock.last_health = current
    return t


# --- helpers --------------------------------------------------------------------------


def _normalized(resource_types: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """One lock per distinct type; a branch-wide request (empty or with None) is one lock."""
    if not resource_types or None in resource_types:
        return (None,)
    return tuple(dict.fromkeys(resource_types))


def _copy(state: BranchState, now: datetime, policy: Policy) -> BranchState:
    """A copy the rule may change, with long-finished jobs forgotten. Locks and active jobs
    hold only immutable values, so a shallow copy of each is a full copy; finished jobs are
    frozen and shared."""
    horizon = now - timedelta(seconds=policy.job_retention_s)
    recent = sorted(((done.ended_at, job_id) for job_id, done in state.finished.items() if done.ended_at >= horizon),
                    reverse=True)[: policy.max_finished_jobs]
    return state.model_copy(update={
        "locks": [lock.model_copy() for lock in state.locks],
        "jobs": [job.model_copy() for job in state.jobs],
        "finished": {job_id: state.finished[job_id] for _, job_id in recent},
    })


def _job_locks(state: BranchState, job_id: str) -> list[Lock]:
    return [lock for lock in state.locks if lock.job_id == job_id]


def _find(state: BranchState, lock_id: str) -> Lock:
    for lock in state.locks:
        if lock.lock_id == lock_id:
            return lock
    raise LockNotFound(f"no lock {lock_id} on branch {state.branch}; `indexgate locks list` shows live locks")


def _release_dead(t: Transition, now: datetime, policy: Policy, which) -> None:
    for lock in list(t.state.locks):
        reason = death_reason(lock, now, policy)
        if reason is not None and lock.auto_release and which(lock):
            _remove(t, lock, reason, SWEEPER, now, {"died_at": _died_at(lock, reason, policy).isoformat()})
            _end_job_if_lockless(t.state, lock.job_id, now, f"lost ({reason})")


def _died_at(lock: Lock, reason: ReleaseReason, policy: Policy) -> datetime:
    return lock.expires_at if reason is ReleaseReason.TTL_EXPIRED else heartbeat_deadline(lock, policy)


def _remove(t: Transition, lock: Lock, reason: ReleaseReason, actor: str, now: datetime, detail: dict) -> None:
    t.state.locks = [other for other in t.state.locks if other.lock_id != lock.lock_id]
    t.note(_entry(AuditKind.RELEASED, now, actor, lock, reason=str(reason), detail=detail))


def _end_job(state: BranchState, job: JobRecord, now: datetime, outcome: str) -> None:
    state.jobs = [other for other in state.jobs if other.job_id != job.job_id]
    state.finished[job.job_id] = FinishedJob(status=JobStatus.ENDED, holder=job.holder, ended_at=now, outcome=outcome)


def _end_job_if_lockless(state: BranchState, job_id: str, now: datetime, outcome: str) -> None:
    job = state.job(job_id)
    if job and job.status is JobStatus.ACTIVE and not _job_locks(state, job_id):
        _end_job(state, job, now, outcome)


def _extend_for_eta(t: Transition, lock: Lock, now: datetime, policy: Policy) -> None:
    if lock.estimated_remaining_s is None:
        return
    needed = now + timedelta(seconds=lock.estimated_remaining_s + lock.heartbeat_interval_s)
    cap = lock.acquired_at + timedelta(seconds=policy.max_ttl_s)
    new_expiry = min(needed, cap)
    if new_expiry > lock.expires_at:
        _set_expiry(t, lock, new_expiry, lock.holder, f"ETA {lock.estimated_remaining_s:.0f} s exceeds the remaining TTL", now)


def _set_expiry(t: Transition, lock: Lock, new_expiry: datetime, actor: str, why: str, now: datetime) -> None:
    old = lock.expires_at
    lock.expires_at = new_expiry
    t.note(_entry(AuditKind.EXTENDED, now, actor, lock, reason=why,
                  detail={"from": old.isoformat(), "to": new_expiry.isoformat()}))


def _refuse(t: Transition, req: AcquireRequest, blockers: list[Lock], now: datetime, why: str = "",
            limit: str | None = None) -> Transition:
    t.state.finished[req.job_id] = FinishedJob(status=JobStatus.REFUSED, holder=req.holder, ended_at=now,
                                               outcome="refused")
    t.touch()
    held = [{"lock_id": b.lock_id, "job_id": b.job_id, "holder": b.holder, "resource_type": b.resource_type,
             "expires_at": b.expires_at.isoformat()} for b in blockers]
    t.note(AuditEntry(
        at=now, kind=AuditKind.REFUSED, actor=req.holder, branch=t.state.branch, job_id=req.job_id,
        reason=why or f"conflicts with {len(blockers)} live lock(s) held by {', '.join(sorted({b.holder for b in blockers}))}",
        detail={"requested": list(req.resource_types), "held_by": held} | ({"limit": limit} if limit else {}),
    ))
    return t


def _entry(kind: AuditKind, now: datetime, actor: str, lock: Lock, reason: str | None = None, detail: dict | None = None) -> AuditEntry:
    return AuditEntry(
        at=now, kind=kind, actor=actor, branch=lock.branch, job_id=lock.job_id, lock_id=lock.lock_id,
        resource_type=lock.resource_type, fencing_token=lock.fencing_token, reason=reason,
        detail={**(detail or {}), "holder": lock.holder, "expires_at": lock.expires_at.isoformat()},
    )


def _ignored(now: datetime, actor: str, branch: str, job_id: str, why: str) -> AuditEntry:
    return AuditEntry(at=now, kind=AuditKind.IGNORED, actor=actor, branch=branch, job_id=job_id, reason=why)
