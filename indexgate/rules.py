"""What every pure rule shares: the numbers it depends on and the shape of its result.

``indexgate.locks`` and ``indexgate.shadows`` both return a ``Transition``: the new
aggregate plus the audit entries describing what changed. The service saves it with one
compare-and-swap, or only records the entries when nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from indexgate.schemas.records import AuditEntry, AuditKind


@dataclass(frozen=True)
class Policy:
    """The numbers the rules depend on (from ``Settings``)."""

    default_ttl_s: float = 14_400
    max_ttl_s: float = 86_400
    default_heartbeat_interval_s: float = 120
    missed_heartbeats: int = 3
    job_retention_s: float = 7 * 86_400
    max_finished_jobs: int = 50
    max_locks_per_branch: int = 256  # live locks one branch may hold; an acquire beyond is refused
    max_builds_per_index: int = 20  # builds one (branch, index_type) keeps; the oldest finished go first
    build_retention_s: float = 7 * 86_400  # finished builds (FAILED, CANCELLED, CLEANUP but not a backup) are forgotten after this
    max_early_ends: int = 1000  # ends that arrived before their job's started, kept store-wide
    max_clock_skew_s: float = 600  # a funnel clock off by up to this either way is corrected (indexgate.skew)


@dataclass
class Transition:
    """The result of one rule: the new state and what it did."""

    state: Any  # BranchState here, IndexState in indexgate.shadows
    audit: list[AuditEntry] = field(default_factory=list)

    _touched: bool = False

    @property
    def changed(self) -> bool:
        """True when the state must be saved (not for ignored or unknown-job events)."""
        return self._touched or any(entry.kind not in _NO_CHANGE for entry in self.audit)

    def note(self, entry: AuditEntry) -> None:
        self.audit.append(entry)

    def touch(self) -> None:
        """Mark a change that is worth saving but not worth an audit entry (heartbeat)."""
        self._touched = True


_NO_CHANGE = frozenset({AuditKind.IGNORED, AuditKind.UNKNOWN_JOB, AuditKind.REFUSED, AuditKind.SHADOW_REFUSED})


