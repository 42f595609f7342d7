"""Sweeps read only what is due: a branch's (and an index's) next due time is kept at every
save and indexed, so with nothing due a sweep loads no aggregate at all, and each due one
is loaded once. Over SQLite with a test clock, like ``test_service``."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin, Status
from indexgate.rules import Policy
from indexgate.schemas.records import AuditKind, Health, ReleaseReason
from indexgate.schemas.shadows import ShadowState
from indexgate.service import Service
from tests.service_kit import T0
from tests.test_service import event

POLICY = Policy(default_ttl_s=3600, max_ttl_s=7200, default_heartbeat_interval_s=60, missed_heartbeats=3,
                build_retention_s=600)
HB, TTL = [ReleaseReason.HEARTBEAT_MISSED], [ReleaseReason.TTL_EXPIRED]


class CountingStore:
    """The real store, counting the calls of each verb."""

    def __init__(self, inner) -> None:
        self._inner, self.calls = inner, Counter()

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return value(*args, **kwargs)

        return counted


@pytest.fixture
def counted(store) -> CountingStore:
    return CountingStore(store)


@pytest.fixture
def service(counted, clock, outbox) -> Service:
    return Service(counted, POLICY, clock=clock, notify=outbox)


def lock(service: Service, branch: str, job: str = "job", ttl_s: float | None = None, auto_release: bool = True):
    request = AcquireRequest(job_id=job, holder="funnel", resource_types=("docs",), reason="indexing", ttl_s=ttl_s,
                             auto_release=auto_release)
    assert service.acquire(branch, request, Origin(actor="funnel")).status is Status.APPLIED


def test_with_nothing_due_a_sweep_loads_no_branch(service, counted, clock):
    for n in range(40):
        lock(service, f"b{n}", f"job-{n}")
    clock.advance(30)  # every lock healthy, far from its deadlines
    counted.calls.clear()
    assert service.sweep(HB) == [] and service.sweep(TTL) == [] and service.refresh_health() == []
    assert counted.calls["load"] == 0 and counted.calls["branches_with_locks"] == 0
    assert counted.calls["branches_due"] == 3


def test_a_sweep_loads_each_due_branch_once_and_releases_it(service, counted, clock, outbox):
    for n in range(20):
        lock(service, f"b{n}", f"job-{n}")
    for _ in range(4):  # t = 45, 90, 135, 180: all but three keep heartbeating
        clock.advance(45)
        for n in range(17):
            assert service.heartbeat(_hb(f"job-{n}"), Origin(actor="funnel")).status is Status.APPLIED
    clock.advance(10)  # t = 190: the three silent ones passed 3 x 60 s, the others are healthy
    counted.calls.clear()
    released = service.sweep(HB)
    assert sorted(e.branch for e in released) == ["b17", "b18", "b19"]
    assert counted.calls["load"] == 3 and counted.calls["save"] == 3
    assert {e.reason for e in released} == {ReleaseReason.HEARTBEAT_MISSED}
    counted.calls.clear()
    assert service.sweep(HB) == [] and counted.calls["load"] == 0


def test_health_changes_are_due_times_too(service, clock, outbox):
    lock(service, "b", auto_release=False)  # stays in force past its deadline: only health moves
    clock.advance(30)
    assert service.refresh_health() == []
    clock.advance(31)  # 61 s without a heartbeat: warning
    assert [e.detail["to"] for e in service.refresh_health()] == [Health.WARNING]
    clock.advance(120)  # 181 s: critical (dead, but it does not release itself)
    assert [e.detail["to"] for e in service.refresh_health()] == [Health.CRITICAL]
    assert service.store.load("b").due_at is None  # nothing more will happen until someone acts
    assert service.sweep(HB) == [] and service.list_locks()[0].health is Health.CRITICAL


def test_a_branch_due_for_another_sweep_is_read_but_not_rewritten(service, counted, clock):
    lock(service, "b", ttl_s=100)
    for _ in range(2):  # healthy (t = 40, 80) ...
        clock.advance(40)
        service.heartbeat(_hb("job"), Origin(actor="funnel"))
    clock.advance(21)  # ... and past its TTL at t = 101: due for the TTL sweep only
    counted.calls.clear()
    assert service.sweep(HB) == []
    assert counted.calls["load"] == 1 and counted.calls["save"] == 0
    assert [e.reason for e in service.sweep(TTL)] == [ReleaseReason.TTL_EXPIRED]


def test_a_stale_due_time_is_corrected_once(service, store, counted, clock):
    lock(service, "b")
    state = store.load("b")
    store.save(state.model_copy(update={"due_at": T0}), [])  # e.g. a store from before due times
    clock.advance(10)
    counted.calls.clear()
    assert service.sweep(HB) == [] and counted.calls["save"] == 1  # rescheduled: nothing is due yet
    assert store.load("b").due_at == T0 + timedelta(seconds=60, microseconds=1)
    counted.calls.clear()
    assert service.sweep(HB) == [] and counted.calls["load"] == 0


def test_the_check_stays_one_aggregate_read(service, counted):
    lock(service, "b")
    counted.calls.clear()
    assert not service.check("b", "docs").allowed
    assert sum(counted.calls.values()) == 1 and counted.calls["load"] == 1


# --- shadow builds -----------------------------------------------------------------------


def test_the_shadow_sweep_reads_only_due_indexes_and_forgets_finished_builds(service, counted, clock, outbox):
    for n in range(5):
        data = {"job_id": f"sj-{n}", "branch": f"b{n}", "indexing_mode": "shadow", "heartbeat_interval_s": 10}
        assert service.start(_started(data), Origin(actor="funnel")).status is Status.APPLIED
    clock.advance(5)
    counted.calls.clear()
    assert service.shadows.sweep() == [] and counted.calls["load_index"] == 0
    for n in range(1, 5):
        service.heartbeat(_hb(f"sj-{n}"), Origin(actor="funnel"))
    clock.advance(26)  # sj-0 silent for 31 s > 3 x 10 s
    counted.calls.clear()
    failed = service.shadows.sweep()
    assert [(e.job_id, e.detail["to"]) for e in failed] == [("sj-0", ShadowState.FAILED)]
    assert counted.calls["load_index"] == 1
    assert service.store.index_of("sj-0") == "b0|SEARCH_INDEX"
    clock.advance(600)  # its retention: forgotten, and its references with it
    for n in range(1, 5):
        service.heartbeat(_hb(f"sj-{n}"), Origin(actor="funnel"))
    counted.calls.clear()
    service.shadows.sweep()
    assert counted.calls["load_index"] == 1
    assert service.store.load_index("b0|SEARCH_INDEX").builds == [] and service.store.index_of("sj-0") is None
    late = service.heartbeat(_hb("sj-0"), Origin(actor="funnel", key="late"))
    assert late.status is Status.UNKNOWN_JOB  # recorded, nothing crashes
    assert AuditKind.SHADOW_STATE in outbox.kinds()


def _hb(job: str):
    from indexgate.schemas.payloads import HeartbeatData

    return HeartbeatData(job_id=job)


def _started(data: dict):
    from indexgate.schemas.payloads import StartedData

    return StartedData.model_validate(data)


def test_events_through_the_catalog_keep_due_times(service, store, clock):
    from indexgate.events import catalog

    catalog.apply(service, event("com.oms.indexing.started", {"job_id": "j", "branch": "b", "resource_types": ["x"],
                                                               "heartbeat_interval_s": 20}, time=clock.now))
    assert store.branches_due(T0 + timedelta(seconds=20)) == []
    assert store.branches_due(T0 + timedelta(seconds=20, microseconds=1)) == ["b"]  # warning after one interval
