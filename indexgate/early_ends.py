"""Job ends that overtake their job's ``started``: remembered, so the late start takes no lock.

Events of one job may be applied in parallel, or a funnel may send its ``completed`` before
the ``started`` was applied. Such an end names a job the store has not seen, and its branch
may be unknown (``branch`` is optional in end events), so it is kept by job id in the store
(``Store.remember_end``), bounded like finished jobs: at most ``max_early_ends`` entries,
each for at most ``job_retention_s``. A later ``started`` of that job finds it and takes no
lock (traditional) or registers the build already ended (shadow); the audit says why.

The race of the two arriving at once is closed from both sides, each writing first and
reading the other's write after: the end is remembered, then the job is looked up again
(and ended normally if its start committed meanwhile); a start that took locks looks for
a remembered end afterwards (and releases them if one arrived meanwhile). With a store
that orders writes before later reads (both adapters), at least one side sees the other.
The second look (``Service.settle``) is idempotent and is taken again whenever a
``started`` or an end turns out to be a duplicate: the first delivery may have committed
its write and then failed on the store before looking, and its retry is a duplicate.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from indexgate.errors import DuplicateEvent
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.rules import Policy
from indexgate.schemas.payloads import CancelledData, CompletedData, FailedData, JobEnd
from indexgate.schemas.records import AuditEntry, AuditKind, EarlyEnd, ReleaseReason
from indexgate.store import Store

END_MODELS: dict[ReleaseReason, type[JobEnd]] = {
    ReleaseReason.COMPLETED: CompletedData, ReleaseReason.FAILED: FailedData, ReleaseReason.CANCELLED: CancelledData,
}


def horizon(now: datetime, policy: Policy) -> datetime:
    """Ends that arrived before this instant are forgotten."""
    return now - timedelta(seconds=policy.job_retention_s)


def lookup(store: Store, refs: Iterable[str], now: datetime, policy: Policy) -> EarlyEnd | None:
    """The remembered end of the job known by any of ``refs`` (job id, shadow id), if any."""
    since = horizon(now, policy)
    for ref in dict.fromkeys(refs):
        end = store.early_end(ref, since)
        if end is not None:
            return end
    return None


def remember(store: Store, job_id: str, data: JobEnd, reason: ReleaseReason, origin: Origin, now: datetime,
             policy: Policy) -> Outcome:
    """Keep the end (with the event's inbox key and an audit entry saying why), in one write."""
    why = (f"{reason} for job {job_id} arrived before its started: remembered, so a later started of this job "
           "takes no lock")
    entry = AuditEntry(at=now, kind=AuditKind.UNKNOWN_JOB, actor=origin.actor, branch=data.branch, job_id=job_id,
                       reason=why, published=True, cause=origin.key)
    end = EarlyEnd(job_id=job_id, reason=reason, at=now, actor=origin.actor, branch=data.branch, cause=origin.key,
                   data=data.model_dump(mode="json", exclude_none=True))
    try:
        store.remember_end(end, [entry], origin.key, policy.max_early_ends, horizon(now, policy))
    except DuplicateEvent as exc:  # a concurrent delivery of this event got there first
        return Outcome(status=Status.DUPLICATE, detail=str(exc))
    return Outcome(status=Status.UNKNOWN_JOB, detail=why, audit=[entry])


def payload(end: EarlyEnd) -> JobEnd:
    """The end event's data, as its catalog model (a shadow build that starts late replays it)."""
    return END_MODELS[end.reason].model_validate(end.data)


def origin_of(end: EarlyEnd) -> Origin:
    """Who ended the job; no inbox key: the end event's key was written when it was remembered."""
    return Origin(actor=end.actor)
