"""Records the store keeps: locks, jobs, the per-branch aggregate, audit, dead letters.

All datetimes are aware UTC. These are plain data; the rules over them live in
``indexgate.locks``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def new_id() -> str:
    """A random identifier for locks, audit entries and dead letters."""
    return uuid.uuid4().hex


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LockKind(StrEnum):
    INDEXING = "INDEXING"  # a traditional indexing job holds it for the whole build
    SWITCH = "SWITCH"  # a shadow switch holds it for the milliseconds of the swap


class Health(StrEnum):
    HEALTHY = "healthy"  # heartbeat within one interval
    WARNING = "warning"  # up to `missed_heartbeats` intervals late
    CRITICAL = "critical"  # beyond that, or past its TTL: the lock is dead


class ReleaseReason(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TTL_EXPIRED = "TTL_EXPIRED"
    HEARTBEAT_MISSED = "HEARTBEAT_MISSED"
    FORCED = "FORCED"


class AuditKind(StrEnum):
    ACQUIRED = "acquired"
    REFUSED = "refused"
    RELEASED = "released"
    EXTENDED = "extended"
    HEALTH_CHANGED = "health_changed"
    UNKNOWN_JOB = "unknown_job"  # an event named a job this store never saw
    IGNORED = "ignored"  # a duplicate, stale or already-finished job's event
    SHADOW_STATE = "shadow_state"  # a shadow build changed state (detail: from, to)
    SHADOW_REFUSED = "shadow_refused"  # a second build for an index while one is in flight
    SWITCHED = "switched"  # the active pointer moved to a new index (detail: durations)
    SWITCH_FAILED = "switch_failed"  # validation, a busy branch or verification stopped it
    ROLLED_BACK = "rolled_back"  # the previous index is active again


class ClockSkew(_Record):
    """What a job's events told about its funnel's clock (``indexgate.skew`` has the rule).

    ``recent_offsets_s`` are the believed ``time - received`` of the job's latest events (at
    most ``skew.window`` of them, oldest first); ``offset_s`` is their largest (its clock's
    skew minus the least transit among them), ``last_offset_s`` the latest event's, believed
    or not.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    offset_s: float | None = None
    last_offset_s: float | None = None
    observations: int = 0
    recent_offsets_s: tuple[float, ...] = ()


class Lock(_Record):
    """One granted lock on ``(branch, resource_type)``; ``resource_type=None`` = branch-wide."""

    lock_id: str = Field(default_factory=new_id)
    branch: str
    resource_type: str | None
    holder: str
    job_id: str
    reason: str = ""
    kind: LockKind = LockKind.INDEXING
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime
    auto_release: bool = True
    heartbeat_interval_s: float
    last_heartbeat: datetime
    progress_percent: float | None = None
    estimated_remaining_s: float | None = None
    holder_status: str | None = None
    last_health: Health = Health.HEALTHY
    clock: ClockSkew = Field(default_factory=ClockSkew)  # the job's, as of its latest event


class JobStatus(StrEnum):
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"
    REFUSED = "REFUSED"


class JobRecord(_Record):
    """What the store remembers of a job, so late or repeated events change nothing."""

    job_id: str
    branch: str
    status: JobStatus
    holder: str
    last_event_time: datetime | None = None  # the newest believed ``time`` of its events (indexgate.skew)
    last_alive_at: datetime | None = None  # when its newest applied event counts, on our clock: heartbeats are ordered by it
    ended_at: datetime | None = None
    outcome: str | None = None
    clock: ClockSkew = Field(default_factory=ClockSkew)


class EarlyEnd(_Record):
    """A job's end (completed / failed / cancelled) that arrived before its ``started``.

    Kept by job id (the branch may be unknown: ``branch`` is optional in end events) for at
    most ``job_retention_s`` and ``max_early_ends`` entries, so the late ``started`` takes no
    lock. ``data`` is the end's payload, replayed on a shadow build that starts late.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    reason: ReleaseReason
    at: datetime  # when the end arrived
    actor: str
    branch: str | None = None
    cause: str | None = None  # the ``source|id`` of the end event
    data: dict[str, Any] = Field(default_factory=dict)


class FinishedJob(_Record):
    """What is kept of an ended or refused job: enough to ignore its late events."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: JobStatus
    holder: str = ""
    ended_at: datetime
    outcome: str | None = None


class BranchState(_Record):
    """The aggregate: everything one compare-and-swap on a branch changes together.

    ``version`` guards the swap; ``fence`` is the last fencing token issued on the branch.
    Active jobs are full records; finished ones are small frozen entries (never mutated, so
    a rule need not copy them), kept for ``job_retention_s`` as the duplicate guard.
    """

    branch: str
    version: int = 0
    fence: int = 0
    locks: list[Lock] = Field(default_factory=list)
    jobs: list[JobRecord] = Field(default_factory=list)  # active
    finished: dict[str, FinishedJob] = Field(default_factory=dict)
    # the earliest instant a sweep has something to do here (a lock dies, its health
    # changes); None = nothing. Set at every save by ``due.branch_due``; the store indexes
    # it so sweeps read only what is due (``Store.branches_due``)
    due_at: datetime | None = None

    def job(self, job_id: str) -> JobRecord | None:
        """The active job's record, or a read-only view of a finished one, or None."""
        active = next((job for job in self.jobs if job.job_id == job_id), None)
        if active is not None or job_id not in self.finished:
            return active
        done = self.finished[job_id]
        return JobRecord(job_id=job_id, branch=self.branch, status=done.status, holder=done.holder,
                         ended_at=done.ended_at, outcome=done.outcome)


class AuditEntry(_Record):
    """One transition: who did what to which lock, why and when.

    The entry id is also the id of the outgoing CloudEvent announcing it, so consumers can
    deduplicate the at-least-once outgoing stream.
    """

    entry_id: str = Field(default_factory=new_id)
    at: datetime
    kind: AuditKind
    actor: str
    branch: str | None = None
    job_id: str | None = None
    lock_id: str | None = None
    resource_type: str | None = None
    fencing_token: int | None = None
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    cause: str | None = None  # the ``source|id`` of the event that caused it, if any
    published: bool = False


class DeadLetter(_Record):
    """A message the worker could not use, kept with the reason.

    The body is kept whole up to 64 KiB (``events.intake.DEAD_LETTER_BODY_LIMIT``) and cut
    beyond, so a funnel sending huge messages cannot fill the store; the full body's size and
    sha256 are kept to identify it. Letters stored before these fields existed read as None.
    A letter sent back through the intake (``indexgate deadletters replay``) is marked with
    when, by whom and how often; a cut body cannot be replayed.
    """

    letter_id: str = Field(default_factory=new_id)
    at: datetime
    reason: str
    routing_key: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: str
    body_encoding: str = "utf-8"  # or "base64" when the body was not text
    body_bytes: int | None = None  # size of the full body as received
    body_sha256: str | None = None  # hex sha256 of the full body as received
    body_truncated: bool = False  # True when ``body`` holds only its first bytes
    replayed_at: datetime | None = None  # ``indexgate deadletters replay``: when it was last sent back
    replayed_by: str | None = None  # ... and by whom (user@host, or --operator)
    replays: int = 0  # how many times it was sent back


class Lease(_Record):
    """A singleton role's lease (beat): who holds it, its fencing token, until when. The
    rules over it live in ``indexgate.leases``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    holder: str
    token: int  # raised by one each time the lease changes hands (or is retaken after expiring)
    expires_at: datetime
    renewed_at: datetime

    def alive(self, now: datetime) -> bool:
        return now < self.expires_at
