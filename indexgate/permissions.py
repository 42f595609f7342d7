"""The permission check: may this action on this resource type of this branch proceed now?

Pure, like the rest of the domain: it reads the branch aggregate and ``now``. Dead locks
never bind (their expiry is computed at this instant), ``read`` and ``draft`` are always
allowed, and a denial says who holds the lock, its progress and ETA, when it frees at the
latest and that other resource types stay editable.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from indexgate.locks import LockView, conflicts, in_force, view
from indexgate.rules import Policy
from indexgate.schemas.records import BranchState

ALWAYS_ALLOWED_ACTIONS = frozenset({"read", "draft"})


class Decision(BaseModel):
    """The permission check's answer."""

    allowed: bool
    branch: str
    resource_type: str | None
    action: str
    message: str
    blocking: LockView | None = None


def check(state: BranchState | None, branch: str, resource_type: str | None, action: str, now: datetime, policy: Policy) -> Decision:
    """May ``action`` on ``resource_type`` of ``branch`` proceed now? Dead locks never bind."""
    base = {"branch": branch, "resource_type": resource_type, "action": action}
    if action in ALWAYS_ALLOWED_ACTIONS:
        return Decision(allowed=True, message=f"{action} is always allowed", **base)
    blocking = [
        lock for lock in (state.locks if state else [])
        if conflicts(lock.resource_type, resource_type) and in_force(lock, now, policy)
    ]
    if not blocking:
        return Decision(allowed=True, message=f"{action} on {resource_type or 'the branch'} of {branch} is allowed", **base)
    lock = min(blocking, key=lambda candidate: candidate.fencing_token)
    lock_view = view(lock, now, policy)
    return Decision(allowed=False, message=denial_message(lock_view, action, resource_type), blocking=lock_view, **base)


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
