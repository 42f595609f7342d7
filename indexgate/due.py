"""Due times, pure: when a sweep next has something to do on an aggregate.

Every save stamps the aggregate with its next due time (``BranchState.due_at``,
``IndexState.due_at``) and the store indexes it, so a sweep reads only the aggregates that
are due (``Store.branches_due`` / ``indexes_due``), not every locked branch. The time is
not a second copy of the liveness rules: it is found by asking those rules themselves
(``locks.death_reason`` / ``locks.health``, ``shadows.effective_state`` / ``forget_at``) at
the only instants where their answer can change, from ``now`` on. If a rule changes, its
due time follows as long as its boundaries are among those instants (``tests/test_due.py``
checks the answers against the rules at many instants).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from indexgate import locks, shadows
from indexgate.rules import Policy
from indexgate.schemas.records import BranchState, Lock
from indexgate.schemas.shadows import IndexState

# A lock turns WARNING *after* one interval without a heartbeat: the instant on the interval
# (rounded to a microsecond) and the one after it, whichever the rule says first.
_TICK = timedelta(microseconds=1)


def _moments(lock: Lock, now: datetime, policy: Policy) -> list[datetime]:
    warning = lock.last_heartbeat + timedelta(seconds=lock.heartbeat_interval_s)
    edges = {now, warning, warning + _TICK, lock.expires_at, locks.heartbeat_deadline(lock, policy)}
    return sorted(t for t in edges if t >= now)


def lock_due(lock: Lock, now: datetime, policy: Policy) -> datetime | None:
    """The first instant from ``now`` on at which a sweep has something to do for this lock:
    it dies (and releases automatically) or its health differs from the one last recorded."""
    for moment in _moments(lock, now, policy):
        if (lock.auto_release and locks.death_reason(lock, moment, policy) is not None) \
                or locks.health(lock, moment, policy) != lock.last_health:
            return moment
    return None


def branch_due(state: BranchState, now: datetime, policy: Policy) -> datetime | None:
    """When the branch next needs a sweep (``now`` if it does already), or None."""
    return min(filter(None, (lock_due(lock, now, policy) for lock in state.locks)), default=None)


def index_due(state: IndexState, now: datetime, policy: Policy) -> datetime | None:
    """When the shadow sweep next has something to do on this index (``now`` if it does
    already): a build's ``effective_state`` changes, or a finished build's retention ends."""
    times = []
    for build in state.builds:
        moments = {now, shadows.heartbeat_deadline(build, policy), build.switch_claim_expires_at}
        changes = [t for t in sorted(m for m in moments if m and m >= now)
                   if shadows.effective_state(build, t, policy) is not build.state]
        forget = shadows.forget_at(state, build, policy)
        times += changes[:1] + ([max(forget, now)] if forget else [])
    return min(times, default=None)
