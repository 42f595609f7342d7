"""The store protocol: a few atomic verbs, each one round trip.

The unit of consistency is the per-branch aggregate (``BranchState``). ``save`` is a
compare-and-swap on its ``version``: it writes the new state, the transition's audit
entries (which double as the outbox of outgoing events) and the idempotency key of the
event that caused it, all or nothing where the backend allows (SQLite: one transaction;
MongoDB: see ``mongo.py``). Mutual exclusion and monotonic fencing tokens then hold on any
adapter that can do one conditional write.

Adapters turn backend failures into ``StoreUnavailable`` and lost races into
``VersionConflict`` right after the call, so nothing above sees a driver exception.

A store is *initialized* once, by ``indexgate setup`` or a worker's start
(``initialize``). Every other verb refuses a store that was never initialized with
``StoreNotInitialized`` and creates nothing: a check against a mistyped path or database
must answer "unknown", never "allowed" from a fresh, empty store.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol, Sequence

from indexgate.schemas.records import AuditEntry, BranchState, DeadLetter, EarlyEnd, Lease
from indexgate.schemas.shadows import IndexState


def job_refs(state: BranchState, audit: Sequence[AuditEntry]) -> list[str]:
    """The job ids a branch save must index for ``branch_of_job``: its active jobs and the
    jobs its audit entries name (a refused job is never active, yet its late events must
    still find the branch). Finished jobs were indexed when they started."""
    return sorted({job.job_id for job in state.jobs} | {e.job_id for e in audit if e.job_id and e.branch == state.branch})


SCHEMA_VERSION = 1  # what ``initialize`` records; a store without it was never set up
MAX_READ_LIMIT = 1000  # the most audit entries or dead letters one read asks for (HTTP API and CLI)


def due_us(at: datetime | None) -> int | None:
    """A due time as integer microseconds since the epoch (what SQLite indexes), exactly."""
    if at is None:
        return None
    delta = at - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Store(Protocol):
    def initialize(self) -> None:
        """Create what the store needs (tables, indexes) and mark it initialized; idempotent."""

    def load(self, branch: str) -> BranchState | None:
        """The branch's aggregate, or None if the branch never had a lock."""

    def save(
        self, state: BranchState, audit: Sequence[AuditEntry], inbox_key: str | None = None
    ) -> int:
        """Write ``state`` if the stored version is still ``state.version``; return the new
        version. Raises ``VersionConflict`` when another writer got there first."""

    def load_index(self, key: str) -> IndexState | None:
        """The ``(branch, index_type)`` aggregate (shadow builds + active pointer), or None."""

    def save_index(
        self, state: IndexState, audit: Sequence[AuditEntry], inbox_key: str | None = None
    ) -> int:
        """Compare-and-swap of an index aggregate, like ``save``; also indexes each build's
        job id and shadow id for ``index_of``."""

    def index_of(self, ref: str) -> str | None:
        """The index key (``branch|index_type``) of a build's job id or shadow id."""

    def indexes(self) -> list[IndexState]:
        """Every index aggregate (listings, sweeps)."""

    def record(self, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> None:
        """Append audit entries (and mark an event seen) without changing any aggregate.
        Raises ``DuplicateEvent`` if the key was already seen (nothing is written); ``save``
        does the same on SQLite, in the same transaction as the effect."""

    def seen(self, inbox_key: str) -> bool:
        """Whether the event with this ``source|id`` key was already applied."""

    def branch_of_job(self, job_id: str) -> str | None:
        """Which branch a job ever asked for, or None for a job never seen."""

    def remember_end(self, end: EarlyEnd, audit: Sequence[AuditEntry], inbox_key: str | None, keep: int,
                     since: datetime) -> None:
        """Keep a job end that arrived before its job's started (the first one per job wins),
        with its audit entries and inbox key (``DuplicateEvent`` like ``record``); forget
        those that arrived before ``since`` and all but the newest ``keep``."""

    def early_end(self, job_id: str, since: datetime) -> EarlyEnd | None:
        """The remembered early end of ``job_id`` if it arrived at or after ``since``."""

    def branches_with_locks(self) -> list[BranchState]:
        """Every aggregate that holds at least one lock (listings)."""

    def branches_due(self, now: datetime) -> list[str]:
        """The branches whose ``due_at`` is not after ``now``, soonest first: what a sweep
        must look at. An index read: its cost follows the branches due, not the locked ones."""

    def indexes_due(self, now: datetime) -> list[str]:
        """The index keys whose ``due_at`` is not after ``now`` (the shadow sweep's work)."""

    def audit(self, limit: int = 100, branch: str | None = None) -> list[AuditEntry]:
        """The newest audit entries, newest first."""

    def unpublished(self, limit: int = 500) -> list[AuditEntry]:
        """Audit entries whose outgoing event has not been confirmed published, oldest first."""

    def mark_published(self, entry_ids: Sequence[str]) -> None:
        """Confirm that these entries' outgoing events reached the broker."""

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep an unusable message with its reason."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        """One dead letter by id, or None."""

    def mark_replayed(self, letter_id: str, at: datetime, by: str) -> None:
        """Record that the letter was sent back through the intake (``replayed_at``,
        ``replayed_by``, ``replays`` + 1); a missing letter is left alone."""

    # --- retention (``indexgate.retention``): each prunes what is older than ``before``

    def prune_inbox(self, before: datetime) -> int:
        """Forget inbox keys written before ``before``; returns how many."""

    def prune_audit(self, before: datetime) -> int:
        """Delete *published* audit entries older than ``before``; the unpublished ones (the
        outbox) stay whatever their age. Returns how many."""

    def prune_dead_letters(self, before: datetime) -> int:
        """Delete dead letters older than ``before``; returns how many."""

    def reclaim_space(self) -> None:
        """Give the space pruned rows left back (SQLite: incremental vacuum; MongoDB: nothing,
        WiredTiger reuses it)."""

    def marker(self, name: str) -> datetime | None:
        """A named instant the store keeps for indexgate itself (the last retention run)."""

    def set_marker(self, name: str, at: datetime) -> None:
        """Keep ``at`` under ``name``."""

    def lease(self, name: str) -> Lease | None:
        """The lease ``name`` as stored (alive or not), or None if it was never taken."""

    def swap_lease(self, current: Lease | None, new: Lease) -> bool:
        """Write ``new`` if the stored lease is still ``current`` (None: there is none yet);
        False when another taker changed it first. The rules live in ``indexgate.leases``."""

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers (``StoreNotInitialized`` if it
        answers but was never initialized)."""

    def close(self) -> None:
        """Release connections (the store may be reopened lazily)."""
