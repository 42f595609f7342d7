"""The permission check: may this action on this resource type of this branch proceed now?

Pure, like the rest of the domain: it reads the branch aggregate and ``now``. Dead locks
never bind (their expiry is computed at this instant), ``read`` and ``draft`` are always
allowed, and a denial says who holds the lock, its progress and ETA, when it frees at the
latest and that other resource types stay editable.

The ``Decision`` is the one shape every way of asking answers with: ``indexgate check
--json``, ``GET /v1/check`` and ``indexgate.client.Gate.check``. Besides the verdict it
says when a denial is expected to end (``retry_after_s``: a switch blackout ends in
milliseconds, an indexing job at its reported ETA; unknown otherwise) and which version of
the branch aggregate it was decided on. This module needs pydantic only, so the OMS's client
can parse answers into the same model without the worker's dependencies.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

from indexgate.errors import InvalidRequest
from indexgate.locks import LockView, conflicts, in_force, view
from indexgate.rules import Policy
from indexgate.schemas.records import BranchState, Health, Lock, LockKind, ReleaseReason

ALWAYS_ALLOWED_ACTIONS = frozenset({"read", "draft"})
WHOLE_BRANCH_ALIASES = frozenset({"*", "-"})  # what the CLI and the API also accept for "no resource type"
SWITCH_RETRY_AFTER_S = 0.05  # a switch blackout lasts milliseconds (bench: p99 ~17 ms); ask again this soon


class LockStatus(Lock):
    """A lock's fields and its liveness at one instant: the flat shape of every lock in
    ``--json`` output and in the HTTP API."""

    health: Health
    in_force: bool
    death_reason: ReleaseReason | None
    heartbeat_deadline: datetime
    seconds_since_heartbeat: float
    clock_skew_s: float  # the holder's estimated clock skew, corrected (indexgate.skew)
    clock_skew_beyond_bound: bool

    @classmethod
    def of(cls, v: LockView) -> "LockStatus":
        return cls(**dict(v.lock), **v.model_dump(exclude={"lock"}))


class Decision(BaseModel):
    """The permission check's answer."""

    allowed: bool
    branch: str
    resource_type: str | None
    action: str
    message: str
    blocking_lock: LockStatus | None = None
    retry_after_s: float | None = None  # when the denial is expected to end; None: allowed, or unknown
    version: int = 0  # the branch aggregate's version this was decided on (0: the branch never had a lock)


def whole_branch(resource_type: str | None) -> str | None:
    """``None`` for the whole branch (also spelled ``*`` or ``-``), else the resource type."""
    return None if resource_type is None or resource_type in WHOLE_BRANCH_ALIASES else resource_type


def check(state: BranchState | None, branch: str, resource_type: str | None, action: str, now: datetime, policy: Policy) -> Decision:
    """May ``action`` on ``resource_type`` of ``branch`` proceed now? Dead locks never bind.

    A blank name is refused (``InvalidRequest``), never answered: ``""`` is no branch, no
    resource type (the whole branch is ``None``, or ``*`` / ``-`` through ``whole_branch``)
    and no action, and "allowed" about it would be an answer about nothing."""
    _require_name("branch", branch)
    _require_name("resource type", resource_type, "; for the whole branch ask with `*`")
    _require_name("action", action)
    base = {"branch": branch, "resource_type": resource_type, "action": action, "version": state.version if state else 0}
    if action in ALWAYS_ALLOWED_ACTIONS:
        return Decision(allowed=True, message=f"{action} is always allowed", **base)
    blocking = [
        lock for lock in (state.locks if state else [])
        if conflicts(lock.resource_type, resource_type) and in_force(lock, now, policy)
    ]
    if not blocking:
        return Decision(allowed=True, message=f"{action} on {resource_type or 'the branch'} of {branch} is allowed", **base)
    lock_view = view(min(blocking, key=lambda candidate: candidate.fencing_token), now, policy)
    return Decision(allowed=False, message=denial_message(lock_view, action, resource_type),
                    blocking_lock=LockStatus.of(lock_view), retry_after_s=retry_after_s(blocking, now), **base)


def _require_name(what: str, name: str | None, hint: str = "") -> None:
    if name is not None and not name.strip():
        raise InvalidRequest(f"the {what} must not be empty (got {name!r}){hint}")


def retry_after_s(blocking: list[Lock], now: datetime) -> float | None:
    """When every blocking lock is expected to be gone: the latest of their expected ends,
    or None if any one's end is unknown (no ETA reported, or its ETA already passed)."""
    ends = [_expected_end(lock, now) for lock in blocking]
    if any(end is None for end in ends):
        return None
    return round(max((end - now).total_seconds() for end in ends if end is not None), 3)


def _expected_end(lock: Lock, now: datetime) -> datetime | None:
    """A switch lock ends in milliseconds; an indexing job at its last reported ETA (never
    after its TTL); a job with no ETA, or past it, has no expected end."""
    if lock.kind is LockKind.SWITCH:
        return min(now + timedelta(seconds=SWITCH_RETRY_AFTER_S), max(now, lock.expires_at))
    if lock.estimated_remaining_s is None:
        return None
    eta = lock.last_heartbeat + timedelta(seconds=lock.estimated_remaining_s)
    return min(eta, lock.expires_at) if eta > now else None


def denial_message(v: LockView, action: str, resource_type: str | None) -> str:
    lock = v.lock
    scope = f"{lock.resource_type} on branch {lock.branch}" if lock.resource_type else f"the whole branch {lock.branch}"
    parts = [f"{action} denied: {scope} is locked by {lock.holder} (job {lock.job_id}, lock {lock.lock_id}, {lock.kind.lower()})"]
    if lock.reason:
        parts.append(f"reason: {lock.reason}")
    if lock.progress_percent is not None:
        parts.append(f"progress {lock.progress_percent:.0f}%")
    if lock.estimated_remaining_s is not None:
        parts.append(f"ETA {lock.estimated_remaining_s:.0f} s")
    free_at = min(lock.expires_at, v.heartbeat_deadline)
    parts.append(f"expires at {lock.expires_at.isoformat()} (free by {free_at.isoformat()} at the latest if its heartbeats stop)")
    if lock.resource_type:
        parts.append(f"other resource types of {lock.branch} stay editable, and draft edits are allowed")
    else:
        parts.append("draft edits are allowed")
    return "; ".join(parts)
