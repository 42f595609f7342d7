"""A job's end (completed / failed / cancelled) arriving after its lock already died.

The lock is recorded as released for the reason it died, exactly as a sweep would have
released it, not for the job's reason: the job lost it before it finished. Pure rules
first (``indexgate.locks.release_job``), then the same through the catalog and a service.
"""

from __future__ import annotations

import pytest

from indexgate.events import catalog
from indexgate import locks
from indexgate.schemas.records import AuditKind, JobStatus, ReleaseReason
from tests.test_locks import HB_DEADLINE_S, MS, POLICY, at, held, req
from tests.test_service import BRANCH, COMPLETED, event, start

ENDS = [ReleaseReason.COMPLETED, ReleaseReason.FAILED, ReleaseReason.CANCELLED]
ALL_DEATHS = (ReleaseReason.TTL_EXPIRED, ReleaseReason.HEARTBEAT_MISSED)


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize(("ttl_s", "now_s", "died"), [
    (None, HB_DEADLINE_S, ReleaseReason.HEARTBEAT_MISSED),
    (100, 100, ReleaseReason.TTL_EXPIRED),
    (100, 150, ReleaseReason.TTL_EXPIRED),
])
def test_a_lock_dead_before_the_end_is_released_for_its_death(end, ttl_s, now_s, died):
    state = held(req("job-1", "object_type", "link_type", ttl_s=ttl_s))
    t = locks.release_job(state, "job-1", end, "funnel", at(now_s), POLICY, {"result": {"n": 1}})
    assert [e.kind for e in t.audit] == [AuditKind.RELEASED] * 2 and t.state.locks == []
    for entry in t.audit:
        assert entry.reason == str(died) and entry.actor == "funnel"
        assert entry.detail["died_at"] == at(ttl_s or HB_DEADLINE_S).isoformat()
        assert entry.detail["job_reported"] == str(end) and entry.detail["result"] == {"n": 1}
    job = t.state.job("job-1")
    assert job.status is JobStatus.ENDED and job.outcome == str(end)


@pytest.mark.parametrize("now_s", [HB_DEADLINE_S, 100])
def test_the_reason_is_the_one_a_sweep_would_have_given(now_s):
    state = held(req("job-1", "object_type", ttl_s=100, heartbeat_interval_s=30))
    swept = locks.sweep(state, at(now_s), POLICY, ALL_DEATHS).audit
    ended = locks.release_job(state, "job-1", ReleaseReason.COMPLETED, "funnel", at(now_s), POLICY).audit
    assert [e.reason for e in ended] == [e.reason for e in swept] and len(swept) == 1


@pytest.mark.parametrize("end", ENDS)
def test_a_live_lock_keeps_the_jobs_reason_up_to_the_last_instant(end):
    state = held(req("job-1", "object_type"))
    (entry,) = locks.release_job(state, "job-1", end, "funnel", at(HB_DEADLINE_S) - MS, POLICY).audit
    assert entry.reason == str(end) and "died_at" not in entry.detail and "job_reported" not in entry.detail


def test_a_lock_that_opted_out_of_auto_release_still_binds_so_keeps_the_jobs_reason():
    state = held(req("job-1", "object_type", auto_release=False, ttl_s=100))
    (entry,) = locks.release_job(state, "job-1", ReleaseReason.FAILED, "funnel", at(10_000), POLICY).audit
    assert entry.reason == str(ReleaseReason.FAILED)


# --- through the catalog and a service ------------------------------------------------




def test_completed_after_the_heartbeat_deadline_is_recorded_as_heartbeat_missed(service, clock):
    start(service, "job-1", "object_type", heartbeat_interval_s=30)
    start(service, "job-2", "link_type")
    clock.advance(100)  # job-1 missed 3 x 30 s; job-2 (60 s interval) is still alive
    for job in ("job-1", "job-2"):
        outcome = catalog.apply(service, event(COMPLETED, {"job_id": job, "record_count": 7}))
        assert outcome.status == "applied", outcome
    released = {e.job_id: e for e in service.store.audit(100) if e.kind is AuditKind.RELEASED}
    assert released["job-1"].reason == str(ReleaseReason.HEARTBEAT_MISSED)
    assert released["job-1"].detail["result"] == {"record_count": 7}
    assert released["job-2"].reason == str(ReleaseReason.COMPLETED)
    assert service.list_locks() == [] and service.store.load(BRANCH).job("job-1").outcome == "completed"
