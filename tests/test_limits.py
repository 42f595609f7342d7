"""Limits (seed 003): each one exceeded gives a reason that names the limit and its setting,
and nothing crashes. Resource types per event: dead-lettered. Live locks per branch and
builds per index: refused (announced). Finished jobs per branch and finished builds per
index: the oldest are forgotten, so the aggregates every event rewrites stay bounded."""

from __future__ import annotations

import pytest

from indexgate.events.decode import RawMessage
from indexgate.events.intake import ingest
from indexgate.events.publisher import encode, funnel_event
from indexgate.testing.indexes import write_index
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin, Status
from indexgate.rules import Policy
from indexgate.schemas.records import AuditKind, ReleaseReason
from indexgate.service import Service
from indexgate.settings import Settings
from tests.service_kit import POLICY

LIMITED = Policy(default_ttl_s=3600, max_ttl_s=7200, default_heartbeat_interval_s=60, missed_heartbeats=3,
                 max_locks_per_branch=3, max_builds_per_index=3, max_finished_jobs=5)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def limited(store, clock, outbox) -> Service:
    return Service(store, LIMITED, clock=clock, notify=outbox, max_resource_types_per_event=4)


def raw(type_: str, data: dict) -> RawMessage:
    message = encode(funnel_event(type_, data, source="funnel"))
    return RawMessage.build(message.headers, message.content_type, message.body)


def started(job: str, branch: str = "b", types: list[str] | None = None, **data) -> RawMessage:
    return raw("com.oms.indexing.started", {"job_id": job, "branch": branch, "resource_types": types or [], **data})


def test_too_many_resource_types_in_one_event_are_dead_lettered_naming_the_limit(limited, settings, store):
    outcome = ingest(limited, settings, started("j", types=[f"t{n}" for n in range(5)]))
    assert outcome.status is Status.DEAD_LETTERED
    assert "5 types" in outcome.detail and "the limit is 4" in outcome.detail
    assert "INDEXGATE_MAX_RESOURCE_TYPES_PER_EVENT" in store.dead_letters()[0].reason
    assert ingest(limited, settings, started("k", types=["a", "b", "c"])).status is Status.APPLIED


def test_the_default_limit_is_the_setting_not_the_schema(store, clock, outbox, settings):
    service = Service.from_settings(settings.model_copy(update={"store_url": f"sqlite:///{store.path}"}))
    assert service.max_resource_types_per_event == 256
    too_many = started("j", types=[f"t{n}" for n in range(257)])
    assert "INDEXGATE_MAX_RESOURCE_TYPES_PER_EVENT" in ingest(service, settings, too_many).detail
    assert ingest(service, settings, started("k", types=[f"t{n}" for n in range(256)])).status is Status.APPLIED
    service.store.close()


def test_more_live_locks_than_a_branch_may_hold_are_refused_naming_the_limit(limited, settings, store, outbox):
    assert ingest(limited, settings, started("j1", types=["a", "b"])).status is Status.APPLIED
    refused = ingest(limited, settings, started("j2", types=["c", "d"]))
    assert refused.status is Status.REFUSED
    assert "limit of 3 live locks per branch (INDEXGATE_MAX_LOCKS_PER_BRANCH)" in refused.detail
    entry = next(e for e in outbox.sent if e.kind is AuditKind.REFUSED)  # announced as lock.refused
    assert entry.detail["limit"] == "INDEXGATE_MAX_LOCKS_PER_BRANCH" and entry.job_id == "j2"
    assert ingest(limited, settings, started("j3", types=["c"])).status is Status.APPLIED  # up to the limit
    assert len(store.load("b").locks) == 3


def test_dead_locks_make_room_under_the_lock_limit(limited, settings, store, clock):
    ingest(limited, settings, started("j1", types=["a", "b", "c"], heartbeat_interval_s=10))
    clock.advance(31)  # j1's locks are dead (3 x 10 s), no sweep ran
    assert ingest(limited, settings, started("j2", types=["x", "y"])).status is Status.APPLIED
    assert {lock.job_id for lock in store.load("b").locks} == {"j2"}


def test_finished_jobs_beyond_the_limit_are_forgotten_oldest_first(limited, store, clock):
    for n in range(9):
        request = AcquireRequest(job_id=f"j{n}", holder="f", resource_types=("a",), reason="r")
        limited.acquire("b", request, Origin(actor="f"))
        clock.advance(1)
        limited.release("b", f"j{n}", ReleaseReason.COMPLETED, Origin(actor="f"))
    remembered = set(store.load("b").finished)  # the newest 5, and the one the last write ended
    assert {"j4", "j5", "j6", "j7", "j8"} <= remembered and len(remembered) <= 6 and "j0" not in remembered


def shadow(job: str, branch: str = "b") -> RawMessage:
    return started(job, branch, ["a"], indexing_mode="shadow", shadow_index_id=f"s-{job}")


def test_finished_builds_beyond_the_limit_are_forgotten_to_make_room(limited, settings, store):
    for n in range(6):  # each build fails, the next one registers
        assert ingest(limited, settings, shadow(f"j{n}")).status is Status.APPLIED
        ingest(limited, settings, raw("com.oms.indexing.failed", {"job_id": f"j{n}", "error": "boom"}))
    builds = store.load_index("b|SEARCH_INDEX").builds
    assert [b.shadow_index_id for b in builds] == ["s-j3", "s-j4", "s-j5"]
    assert store.index_of("s-j0") is None  # a forgotten build's late event is recorded, nothing crashes
    late = ingest(limited, settings, raw("com.oms.indexing.heartbeat", {"job_id": "j0"}))
    assert late.status is Status.UNKNOWN_JOB


def test_a_build_with_nothing_to_forget_is_refused_naming_the_limit(store, clock, outbox, settings, tmp_path):
    service = Service(store, LIMITED, clock=clock, notify=outbox)
    for n in range(3):  # switched in one after the other: one ACTIVE, two kept as backups
        _switched_build(service, settings, tmp_path, f"j{n}")
    refused = ingest(service, settings, shadow("j9"))
    assert refused.status is Status.REFUSED
    assert "limit is 3 builds per index (INDEXGATE_MAX_BUILDS_PER_INDEX)" in refused.detail
    assert next(e for e in outbox.sent if e.kind is AuditKind.SHADOW_REFUSED).detail["limit"] == \
        "INDEXGATE_MAX_BUILDS_PER_INDEX"
    assert len(store.load_index("b|SEARCH_INDEX").builds) == 3


def _switched_build(service: Service, settings: Settings, tmp_path, job: str) -> None:
    location = write_index(tmp_path / job, records=10)
    assert ingest(service, settings, shadow(job)).status is Status.APPLIED
    done = raw("com.oms.indexing.completed", {"job_id": job, "record_count": 10, "index_size_bytes": 100,
                                                "location": location})
    assert ingest(service, settings, done).status is Status.APPLIED
    assert service.shadows.switch(f"s-{job}").status is Status.SWITCHED


def test_limits_have_sane_defaults():
    s = Settings()
    assert (s.max_resource_types_per_event, s.max_locks_per_branch, s.max_builds_per_index, s.max_finished_jobs) == \
        (256, 256, 20, 50)
    assert POLICY.max_locks_per_branch == 256
