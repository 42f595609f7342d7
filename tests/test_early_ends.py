"""Order-proof jobs: an end that arrives before its job's ``started`` is remembered.

Service-level over a real SQLite store on a test clock, through the event catalog; the
last test runs a real worker on each real broker with the completion published first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from indexgate import early_ends
from indexgate.events import catalog
from indexgate.errors import StoreUnavailable
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.locks import Policy
from indexgate.outcomes import Origin
from indexgate.schemas.records import AuditKind, ReleaseReason
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store.sqlite import SqliteStore
from tests.conftest import running_worker
from tests.service_kit import POLICY, T0
from tests.test_events_broker import eventually
from tests.test_service import BRANCH, COMPLETED, STARTED, beat, event, start

ENDS = {"completed": COMPLETED, "failed": "com.oms.indexing.failed", "cancelled": "com.oms.indexing.cancelled"}


def end(service: Service, job: str = "job-1", kind: str = "completed", **data):
    return catalog.apply(service, event(ENDS[kind], {"job_id": job, **data}))


def shadow_start(service: Service, job: str = "job-s", **data):
    return start(service, job, "object_type", indexing_mode="shadow", index_type="SEARCH_INDEX", **data)


def reasons(service: Service, kind: AuditKind) -> list[str]:
    return [e.reason or "" for e in service.store.audit(100) if e.kind is kind]


@pytest.mark.parametrize("kind", list(ENDS))
def test_an_end_before_its_start_leaves_no_lock(service: Service, kind: str) -> None:
    early = end(service, "job-1", kind)
    assert early.status == "unknown_job" and "arrived before its started: remembered" in early.detail
    late = start(service, "job-1", "object_type")
    assert late.status == "ignored" and f"started after its own {kind}" in late.detail and "no lock" in late.detail
    assert service.list_locks() == [] and service.check(BRANCH, "object_type").allowed
    assert not [e for e in service.store.audit(100) if e.kind is AuditKind.ACQUIRED]
    # the job is over on its branch: its late heartbeats and a re-sent start change nothing
    assert beat(service, "job-1").status == "ignored"
    assert start(service, "job-1", "object_type").status == "ignored" and service.list_locks() == []


def test_a_heartbeat_before_the_start_changes_nothing_and_says_so(service: Service) -> None:
    early = beat(service, "job-1", progress_percent=10)
    assert early.status == "unknown_job" and "has not started here" in early.detail
    assert "nothing changed" in early.detail
    assert start(service, "job-1", "object_type").status == "applied"  # a heartbeat is not an end
    assert [v.lock.job_id for v in service.list_locks()] == ["job-1"]


def test_an_end_naming_its_branch_is_kept_the_same_way(service: Service) -> None:
    assert end(service, "job-1", branch=BRANCH).status == "unknown_job"
    assert start(service, "job-1").status == "ignored" and service.check(BRANCH, None).allowed
    [entry] = [e for e in service.store.audit(10, BRANCH) if e.kind is AuditKind.UNKNOWN_JOB]
    assert entry.job_id == "job-1"


def test_a_duplicate_early_end_is_a_duplicate(service: Service) -> None:
    first = event(COMPLETED, {"job_id": "job-1"}, event_id="end-1")
    assert catalog.apply(service, first).status == "unknown_job"
    assert catalog.apply(service, first).status == "duplicate"


def test_a_shadow_build_whose_completion_came_first_is_registered_built(service: Service) -> None:
    end(service, "job-s", record_count=40, index_size_bytes=400, location="products-v2")
    outcome = shadow_start(service, "job-s")
    assert outcome.status == "applied"
    status = service.shadows.status("job-s")
    assert (status["state"], status["record_count"], status["location"]) == ("BUILT", 40, "products-v2")
    assert service.shadows.switch("job-s", checks=["RECORD_COUNT_VALIDATION"]).status == "switched"


def test_the_seed_shadow_completion_naming_only_the_shadow_id_counts(service: Service) -> None:
    catalog.apply(service, event("com.oms.shadow.indexing.completed", {"shadow_index_id": "shadow-abc", "records_indexed": 9}))
    shadow_start(service, "job-seed", shadow_index_id="shadow-abc")
    assert service.shadows.status("shadow-abc")["state"] == "BUILT"


def test_a_failed_shadow_build_reported_before_its_start_is_failed(service: Service) -> None:
    end(service, "job-s", "failed", error="disk full")
    shadow_start(service, "job-s")
    status = service.shadows.status("job-s")
    assert status["state"] == "FAILED" and status["failure_reason"] == "disk full"
    assert shadow_start(service, "job-t").status == "applied"  # the index is not held by a ghost build


def test_early_ends_are_forgotten_past_the_count_bound(store: SqliteStore, clock) -> None:
    service = Service(store, Policy(**{**POLICY.__dict__, "max_early_ends": 2}), clock=clock)
    for n in range(3):
        end(service, f"job-{n}")
        clock.advance(1)
    assert start(service, "job-0", "t0").status == "applied"  # the oldest was forgotten: it locks
    assert start(service, "job-1", "t1").status == "ignored" and start(service, "job-2", "t2").status == "ignored"


def test_early_ends_are_forgotten_past_the_retention(service: Service, clock) -> None:
    end(service, "job-1")
    clock.advance(POLICY.job_retention_s + 1)
    assert start(service, "job-1", "object_type", time=clock.now).status == "applied"


def test_an_end_remembered_while_its_start_was_applied_releases_the_lock(service: Service, monkeypatch) -> None:
    """The start looked before the end was remembered, and took its locks: it looks again."""
    acquire = service.acquire

    def end_arrives_meanwhile(branch, request, origin):
        early_ends.remember(service.store, request.job_id, catalog.ROUTES[COMPLETED].model.model_validate(
            {"job_id": request.job_id}), ReleaseReason.COMPLETED, Origin(actor="funnel"), T0, POLICY)
        return acquire(branch, request, origin)

    monkeypatch.setattr(service, "acquire", end_arrives_meanwhile)
    assert start(service, "job-1", "object_type").status == "applied"
    assert service.list_locks() == [] and service.check(BRANCH, "object_type").allowed
    [released] = [e for e in service.store.audit(20) if e.kind is AuditKind.RELEASED]
    assert released.reason == "completed" and released.detail["arrived_before_started"] is True


def test_a_start_applied_while_its_end_was_remembered_is_ended_by_the_end(service: Service, store, monkeypatch) -> None:
    """The end looked before the start committed, and the start missed the end: the end
    looks again after remembering itself, and ends the job."""
    remember_end = store.remember_end

    def start_commits_meanwhile(*args, **kwargs):
        assert start(service, "job-1", "object_type").status == "applied"  # sees no end yet: locks
        return remember_end(*args, **kwargs)

    monkeypatch.setattr(store, "remember_end", start_commits_meanwhile)
    outcome = end(service, "job-1")
    assert outcome.status == "applied" and service.list_locks() == []
    assert service.check(BRANCH, "object_type").allowed


def test_a_real_worker_applies_a_completion_published_before_its_start(broker_settings: Settings, tmp_path: Path) -> None:
    service = Service.from_settings(broker_settings)
    publisher = Publisher(broker_settings)
    data = {"job_id": "job-late", "branch": BRANCH, "resource_types": ["object_type"], "service_name": "funnel-a"}
    with running_worker(broker_settings):
        publisher.publish_funnel(funnel_event(COMPLETED, {"job_id": "job-late", "record_count": 3}, source="funnel-a"))
        eventually(lambda: [r for r in reasons(service, AuditKind.UNKNOWN_JOB) if "arrived before its started" in r])
        publisher.publish_funnel(funnel_event(STARTED, data, source="funnel-a"))
        [why] = eventually(lambda: [r for r in reasons(service, AuditKind.IGNORED) if "started after its own" in r])
    publisher.close()
    assert "completed" in why and "no lock taken" in why
    assert service.list_locks(BRANCH) == [] and service.check(BRANCH, "object_type").allowed
    assert not [e for e in service.store.audit(50) if e.kind is AuditKind.ACQUIRED]


# --- the race closer survives a store failure between the two writes -----------------------


class FailsOnce:
    """Wrap a store call: after ``armed()`` is true, its next call raises StoreUnavailable once."""

    def __init__(self, real, armed) -> None:
        self.real, self.armed, self.failed = real, armed, False

    def __call__(self, *args, **kwargs):
        if not self.failed and self.armed():
            self.failed = True
            raise StoreUnavailable("store down for a moment (test)")
        return self.real(*args, **kwargs)


def held_by(service: Service, job: str, shadow: bool) -> bool:
    if shadow:
        return service.shadows.status(job)["state"] in ("PREPARING", "BUILDING")
    return bool(service.list_locks(BRANCH)) and not service.check(BRANCH, "object_type").allowed


@pytest.mark.parametrize("shadow", [False, True], ids=["traditional", "shadow"])
def test_a_started_retried_after_the_store_failed_past_its_acquire_still_meets_its_end(
        service: Service, store, monkeypatch, shadow: bool) -> None:
    """The end is remembered while the start takes its lock; the store fails before the start
    looks for it again; the task retries the start, which is a duplicate by then."""
    real_lookup = early_ends.lookup
    calls = []

    def end_arrives_after_the_first_lookup(store, refs, now, policy):
        calls.append(refs)
        found = real_lookup(store, refs, now, policy)
        if len(calls) == 1:  # the end event is applied now: remembered, since the job is unknown yet
            early_ends.remember(store, "job-1", catalog.ROUTES[COMPLETED].model.model_validate(
                {"job_id": "job-1", "record_count": 5}), ReleaseReason.COMPLETED, Origin(actor="funnel"), T0, POLICY)
        return found

    monkeypatch.setattr(early_ends, "lookup", FailsOnce(end_arrives_after_the_first_lookup, lambda: len(calls) >= 1))
    started = event(STARTED, {"job_id": "job-1", "branch": BRANCH, "resource_types": ["object_type"]}
                    | ({"indexing_mode": "shadow", "index_type": "SEARCH_INDEX"} if shadow else {}))
    with pytest.raises(StoreUnavailable):
        catalog.apply(service, started)
    assert held_by(service, "job-1", shadow)  # the lock (build) was committed with the start's inbox key
    assert catalog.apply(service, started).status == "duplicate"  # the retry
    assert not held_by(service, "job-1", shadow)
    if shadow:
        assert service.shadows.status("job-1")["state"] == "BUILT"
    else:
        [released] = [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED]
        assert released.reason == "completed" and released.detail["arrived_before_started"] is True
    assert catalog.apply(service, started).status == "duplicate"  # and again: nothing more happens


@pytest.mark.parametrize("shadow", [False, True], ids=["traditional", "shadow"])
def test_an_end_retried_after_the_store_failed_past_remembering_it_still_ends_its_job(
        service: Service, store, monkeypatch, shadow: bool) -> None:
    """The start commits while the end is being remembered; the store fails before the end
    looks for the job again; the task retries the end, which is a duplicate by then."""
    real_remember = store.remember_end
    remembered = []

    def start_commits_meanwhile(*args, **kwargs):
        data = {"indexing_mode": "shadow", "index_type": "SEARCH_INDEX"} if shadow else {}
        assert start(service, "job-1", "object_type", **data).status == "applied"
        real_remember(*args, **kwargs)
        remembered.append(True)

    monkeypatch.setattr(store, "remember_end", start_commits_meanwhile)
    monkeypatch.setattr(store, "branch_of_job", FailsOnce(store.branch_of_job, lambda: bool(remembered)))
    ended = event(COMPLETED, {"job_id": "job-1", "record_count": 5})
    with pytest.raises(StoreUnavailable):
        catalog.apply(service, ended)
    assert held_by(service, "job-1", shadow)
    assert catalog.apply(service, ended).status == "duplicate"  # the retry
    assert not held_by(service, "job-1", shadow)
    if shadow:
        assert service.shadows.status("job-1")["state"] == "BUILT"
    writes = len(service.store.audit(1000))
    assert catalog.apply(service, ended).status == "duplicate" and len(service.store.audit(1000)) == writes
