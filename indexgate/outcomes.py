"""What a use case reports back: who caused a change (``Origin``) and what it did (``Outcome``).

Statuses are enums, so callers (the tasks, the CLI, the HTTP API, metrics) decide on a
type, never on a string someone may spell differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from indexgate.schemas.records import AuditEntry


class Status(StrEnum):
    """The outcome of applying one event or operator action."""

    APPLIED = "applied"  # the state changed
    REFUSED = "refused"  # a conflicting lock or build: the job was refused (recorded)
    IGNORED = "ignored"  # nothing to do: stale, finished or repeated (recorded)
    DUPLICATE = "duplicate"  # this event (source + id) was already applied
    UNKNOWN_JOB = "unknown_job"  # the event names a job this store never saw (recorded)
    DEAD_LETTERED = "dead_lettered"  # the message could not be used; kept with its reason
    SWITCHED = "switched"
    VALIDATION_FAILED = "validation_failed"
    BRANCH_BUSY = "branch_busy"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class Origin:
    """Who caused a change: the event's source (or an operator), its key and time."""

    actor: str
    key: str | None = None
    time: datetime | None = None


@dataclass
class Outcome:
    """What applying one event or action did, for logs, task results and the CLI."""

    status: Status
    detail: str = ""
    audit: list[AuditEntry] = field(default_factory=list)
    ref: str | None = None  # what it made that is not in the audit: a dead letter's letter_id

    def as_dict(self) -> dict:
        return {"status": str(self.status), "detail": self.detail, "entries": [e.entry_id for e in self.audit]}
