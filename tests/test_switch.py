"""Shadow builds and the switch through the Service over a real SQLite store.

Events go through ``events.catalog.apply``; index locations are real directories made by
``indexgate.testing.indexes.write_index``; time is a fixed, injected clock (no sleeps).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from indexgate.events.catalog import apply
from indexgate.events.decode import IncomingEvent
from indexgate import locations
from indexgate.errors import SwitchInProgress
from indexgate.locks import Policy
from indexgate.service import Outcome, Service
from indexgate.switch_policy import SwitchPolicy
from indexgate.store.sqlite import SqliteStore
from indexgate.testing.indexes import write_index
from indexgate.schemas.records import AuditEntry, AuditKind
from indexgate.verifiers import Verifiers
from tests.conftest import FIXTURES

BRANCH = "feature/user-schema"
INDEX = "SEARCH_INDEX"
TYPES = ["object_type", "link_type"]
T0 = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
STATUS_FIELDS = {"shadow_index_id", "branch_name", "index_type", "state", "build_progress_percent", "switch_ready",
                 "record_count", "index_size_bytes", "created_at", "completed_at", "switch_duration_ms", "blackout_ms"}


def make_service(tmp_path: Path, **switch) -> Service:
    store = SqliteStore(tmp_path / "store.db")
    store.initialize()
    return Service(store, Policy(), clock=lambda: T0, switch=SwitchPolicy(**switch))


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path)


def send(service: Service, type_: str, data: dict, event_id: str | None = None) -> Outcome:
    event = IncomingEvent(id=event_id or uuid.uuid4().hex, source="funnel-service", type=type_, time=None, data=data)
    return apply(service, event)


def start(service: Service, job: str, **extra) -> Outcome:
    return send(service, "com.oms.indexing.started", {"job_id": job, "branch": BRANCH, "resource_types": TYPES,
                                                      "indexing_mode": "shadow", "index_type": INDEX} | extra)


def complete(service: Service, job: str, location: str, records: int, size: int) -> Outcome:
    return send(service, "com.oms.indexing.completed", {"job_id": job, "record_count": records,
                                                        "index_size_bytes": size, "location": location})


def built(service: Service, tmp_path: Path, job: str, records: int = 100, size: int | None = None) -> str:
    """A BUILT shadow of ``records`` records in a real index directory; returns its shadow id."""
    assert start(service, job).status == "applied"
    location = write_index(tmp_path / "idx" / job, records)
    assert complete(service, job, location, records, records * 10 if size is None else size).status == "applied"
    return f"shadow-{job}"


def active(service: Service, tmp_path: Path, job: str, records: int = 100) -> str:
    ref = built(service, tmp_path, job, records)
    assert service.shadows.switch(ref).status == "switched"
    return ref


def current_id(service: Service) -> str | None:
    pointer = service.shadows.current(BRANCH, INDEX)
    return pointer.shadow_index_id if pointer else None


def entries(service: Service, kind: AuditKind, ref: str | None = None) -> list[AuditEntry]:
    return [e for e in service.store.audit(500, BRANCH)
            if e.kind is kind and (ref is None or e.detail.get("shadow_index_id") == ref)]


# --- builds ---------------------------------------------------------------------------


def test_second_build_is_refused_while_one_is_in_flight(service: Service) -> None:
    start(service, "job-1")
    start(service, "job-2")
    [refusal] = entries(service, AuditKind.SHADOW_REFUSED)
    assert refusal.job_id == "job-2" and refusal.detail["in_flight"] == "shadow-job-1"
    assert service.store.index_of("job-2") is None
    assert service.shadows.status("job-1")["state"] == "PREPARING"


def test_refused_build_outcome_says_refused(service: Service) -> None:
    start(service, "job-1")
    assert start(service, "job-2").status == "refused"


def test_progress_updates_status(service: Service) -> None:
    start(service, "job-1")
    send(service, "com.oms.indexing.heartbeat",
         {"job_id": "job-1", "progress_info": {"indexing_progress": 75}, "records_indexed": 7500})
    status = service.shadows.status("shadow-job-1")
    assert STATUS_FIELDS <= status.keys()
    assert json.loads(json.dumps(status)) == status  # JSON-safe as it is
    assert (status["shadow_index_id"], status["branch_name"], status["index_type"]) == ("shadow-job-1", BRANCH, INDEX)
    assert (status["state"], status["build_progress_percent"], status["record_count"]) == ("BUILDING", 75, 7500)
    assert status["switch_ready"] is False and status["completed_at"] is None
    assert status["created_at"] == T0.isoformat()


def test_completion_makes_status_switch_ready(service: Service, tmp_path: Path) -> None:
    ref = built(service, tmp_path, "job-1", records=250, size=2500)
    status = service.shadows.status(ref)
    assert status["state"] == "BUILT" and status["switch_ready"] is True
    assert (status["record_count"], status["index_size_bytes"], status["build_progress_percent"]) == (250, 2500, 100)
    assert status["completed_at"] == T0.isoformat() and status["switch_duration_ms"] is None


def test_seed_completion_event_builds_the_named_shadow(service: Service) -> None:
    start(service, "job-seed", shadow_index_id="shadow-abc-123")
    seed = json.loads((FIXTURES / "seed-shadow-indexing-completed.json").read_text())
    assert seed["type"] == "com.oms.shadow.indexing.completed"
    outcome = send(service, seed["type"], seed["data"], seed["id"])
    assert outcome.status == "applied"
    status = service.shadows.status("shadow-abc-123")
    assert status["state"] == "BUILT" and status["record_count"] == 10000 and status["branch_name"] == BRANCH
    assert status["index_size_bytes"] == 52428800 and status["job_id"] == "job-seed"


@pytest.mark.parametrize("how", ["event", "command"])
def test_cancel_a_building_build(service: Service, how: str) -> None:
    start(service, "job-1")
    send(service, "com.oms.indexing.heartbeat", {"job_id": "job-1", "progress_percent": 10})
    assert service.shadows.status("job-1")["state"] == "BUILDING"
    if how == "event":
        send(service, "com.oms.indexing.cancelled", {"job_id": "job-1", "reason": "schema changed again"})
    else:
        service.shadows.cancel("shadow-job-1", "ops", "schema changed again")
    status = service.shadows.status("job-1")
    assert status["state"] == "CANCELLED" and status["failure_reason"] == "schema changed again"
    assert start(service, "job-2").status == "applied"  # the index is free for a new build


# --- validation blocks the switch -------------------------------------------------------


def gone(location: str) -> tuple[bool, str]:
    """A deployment's verifier for directories that finds the index gone."""
    return False, f"{location} cannot be opened"


def _corrupt(tmp_path: Path, job: str) -> None:
    (tmp_path / "idx" / job / "records.jsonl").write_text('{"id": "tampered"}\n')


@pytest.mark.parametrize(("how", "failing"), [
    ("zero_records", "RECORD_COUNT_VALIDATION"), ("corrupted", "INTEGRITY_CHECK"), ("shrink", "SIZE_COMPARISON")])
def test_validation_failure_blocks_switch_and_old_index_stays(service: Service, tmp_path: Path, how: str,
                                                               failing: str) -> None:
    old = active(service, tmp_path, "job-old", records=100)  # 1000 bytes
    records, size = {"zero_records": (0, 1000), "corrupted": (100, 1000), "shrink": (100, 400)}[how]
    new = built(service, tmp_path, "job-new", records=records, size=size)
    if how == "corrupted":
        _corrupt(tmp_path, "job-new")
    result = service.shadows.switch(new)
    assert result.status == "validation_failed" and failing in result.detail
    assert [c.check for c in result.checks if not c.passed] == [failing]
    assert current_id(service) == old
    assert service.shadows.status(new)["state"] == "BUILT" and service.shadows.status(old)["state"] == "ACTIVE"
    assert entries(service, AuditKind.SWITCH_FAILED, new) and not entries(service, AuditKind.SWITCHED, new)
    assert service.check(BRANCH, "object_type", "write").allowed


def test_force_bypasses_validation(service: Service, tmp_path: Path) -> None:
    active(service, tmp_path, "job-old")
    new = built(service, tmp_path, "job-new", records=0)
    result = service.shadows.switch(new, force=True)
    assert result.status == "switched" and result.checks == []
    assert current_id(service) == new and service.shadows.status(new)["state"] == "ACTIVE"


# --- the switch itself ------------------------------------------------------------------


def test_verification_failure_rolls_back_automatically(service: Service, tmp_path: Path) -> None:
    old = active(service, tmp_path, "job-old")
    old_token = service.shadows.current(BRANCH, INDEX).fencing_token
    new = built(service, tmp_path, "job-new")
    service.shadows.verifiers = Verifiers(custom={"file": gone})
    result = service.shadows.switch(new)
    assert result.status == "rolled_back"
    pointer = service.shadows.current(BRANCH, INDEX)
    assert pointer.shadow_index_id == old and pointer.fencing_token == old_token
    assert service.shadows.status(new)["state"] == "FAILED" and service.shadows.status(old)["state"] == "ACTIVE"
    assert entries(service, AuditKind.ROLLED_BACK, new) and not entries(service, AuditKind.SWITCHED, new)
    assert service.check(BRANCH, "object_type", "write").allowed


def test_verification_failure_without_backup_keeps_old_index(service: Service, tmp_path: Path) -> None:
    old = active(service, tmp_path, "job-old")
    new = built(service, tmp_path, "job-new")
    service.shadows.verifiers = Verifiers(custom={"file": gone})
    assert service.shadows.switch(new, backup=False).status == "rolled_back"
    assert current_id(service) == old


def test_rollback_command_restores_previous_index_with_higher_token(service: Service, tmp_path: Path) -> None:
    old = active(service, tmp_path, "job-old")
    new = active(service, tmp_path, "job-new")
    new_token = service.shadows.current(BRANCH, INDEX).fencing_token
    result = service.shadows.rollback(BRANCH, INDEX, "ops", "bad search results")
    assert result.status == "rolled_back" and result.shadow_index_id == old
    pointer = service.shadows.current(BRANCH, INDEX)
    assert pointer.shadow_index_id == old and pointer.fencing_token == result.fencing_token > new_token
    assert service.shadows.status(old)["state"] == "ACTIVE" and service.shadows.status(new)["state"] == "CLEANUP"
    assert [e.actor for e in entries(service, AuditKind.ROLLED_BACK)] == ["ops"]
    assert service.check(BRANCH, "object_type", "write").allowed


def test_writes_denied_only_inside_the_switch(service: Service, tmp_path: Path) -> None:
    assert start(service, "job-1").status == "applied"
    assert all(service.check(BRANCH, rt, "write").allowed for rt in TYPES)  # BUILDING: no lock
    location = write_index(tmp_path / "idx" / "job-1", 50)
    complete(service, "job-1", location, 50, 500)
    assert all(service.check(BRANCH, rt, "write").allowed for rt in TYPES)  # BUILT: no lock
    seen: dict[str, dict[str, bool]] = {}
    service.shadows.on_step = lambda step: seen.__setitem__(
        step, {rt: service.check(BRANCH, rt, "write").allowed for rt in [*TYPES, "action_type"]})
    assert service.shadows.switch("shadow-job-1").status == "switched"
    assert list(seen) == ["validated", "claimed", "locked", "swapped", "verified", "unlocked"]
    for step, allowed in seen.items():
        blocked = step in {"locked", "swapped", "verified"}
        assert allowed == {"object_type": not blocked, "link_type": not blocked, "action_type": True}, step
    assert service.check(BRANCH, "object_type", "read").allowed


def test_switch_refused_while_an_indexing_lock_holds_the_type(service: Service, tmp_path: Path) -> None:
    old = active(service, tmp_path, "job-old")
    new = built(service, tmp_path, "job-new")
    send(service, "com.oms.indexing.started", {"job_id": "trad-1", "branch": BRANCH, "resource_types": ["link_type"]})
    result = service.shadows.switch(new)
    assert result.status == "branch_busy"
    assert service.shadows.status(new)["state"] == "BUILT" and current_id(service) == old
    assert entries(service, AuditKind.SWITCH_FAILED, new)
    assert not service.check(BRANCH, "link_type", "write").allowed  # the indexing job still holds it
    assert service.check(BRANCH, "object_type", "write").allowed  # no switch lock was left behind
    send(service, "com.oms.indexing.completed", {"job_id": "trad-1"})
    assert service.shadows.switch(new).status == "switched" and current_id(service) == new


@pytest.mark.parametrize("field", ["shadow_index_id", "job_id"])
def test_switch_requested_event_switches(service: Service, tmp_path: Path, field: str) -> None:
    old = active(service, tmp_path, "job-old")
    new = built(service, tmp_path, "job-new")
    ref = new if field == "shadow_index_id" else "job-new"
    outcome = send(service, "com.oms.shadow.switch.requested", {field: ref}, "switch-1")
    assert outcome.status == "switched"
    assert current_id(service) == new and service.shadows.status(old)["state"] == "CLEANUP"
    assert send(service, "com.oms.shadow.switch.requested", {field: ref}, "switch-1").status == "duplicate"


def test_filesystem_strategy_points_current_and_previous_links(tmp_path: Path) -> None:
    links = tmp_path / "links"
    service = make_service(tmp_path, strategy="filesystem", links_dir=links)
    steps: list[str] = []
    service.shadows.on_step = steps.append
    folder = locations.link_dir(links, BRANCH, INDEX)
    old = active(service, tmp_path, "job-old")
    assert (folder / "current").resolve() == (tmp_path / "idx" / "job-old").resolve()
    assert not (folder / "previous").exists() and "linked" in steps
    new = active(service, tmp_path, "job-new")
    assert os.path.realpath(folder / "current") == os.path.realpath(tmp_path / "idx" / "job-new")
    assert os.path.realpath(folder / "previous") == os.path.realpath(tmp_path / "idx" / "job-old")
    assert current_id(service) == new
    service.shadows.rollback(BRANCH, INDEX, "ops", "back")
    assert os.path.realpath(folder / "current") == os.path.realpath(tmp_path / "idx" / "job-old")
    assert os.path.realpath(folder / "previous") == os.path.realpath(tmp_path / "idx" / "job-new")
    assert current_id(service) == old


def test_auto_switch_on_completion(tmp_path: Path) -> None:
    service = make_service(tmp_path, auto_switch=True)
    ref = built(service, tmp_path, "job-1")
    assert current_id(service) == ref and service.shadows.status(ref)["state"] == "ACTIVE"
    [switched] = entries(service, AuditKind.SWITCHED, ref)
    assert switched.actor == "indexgate-switch"


def test_durations_recorded_on_build_and_in_switched_entry(service: Service, tmp_path: Path) -> None:
    ref = built(service, tmp_path, "job-1")
    result = service.shadows.switch(ref)
    status = service.shadows.status(ref)
    [switched] = entries(service, AuditKind.SWITCHED, ref)
    for name in ("switch_duration_ms", "blackout_ms"):
        for value in (status[name], switched.detail[name], getattr(result, name)):
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, name
        assert status[name] == switched.detail[name]
    assert switched.detail["fencing_token"] == result.fencing_token == status["switch_fencing_token"]


def test_second_switch_of_one_build_is_refused(service: Service, tmp_path: Path) -> None:
    ref = built(service, tmp_path, "job-1")
    assert service.shadows.switch(ref).status == "switched"
    second = service.shadows.switch(ref)
    assert second.status == "refused" and "not BUILT" in second.detail
    assert len(entries(service, AuditKind.SWITCHED, ref)) == 1 and current_id(service) == ref


def test_switch_during_a_switch_is_refused(service: Service, tmp_path: Path) -> None:
    ref = built(service, tmp_path, "job-1")
    inner: list = []

    def on_step(step: str) -> None:
        if step == "claimed":
            inner.append(service.shadows.switch(ref))
            with pytest.raises(SwitchInProgress):
                service.shadows.switch(ref, retry_if_busy=True)

    service.shadows.on_step = on_step
    assert service.shadows.switch(ref).status == "switched"
    assert [r.status for r in inner] == ["refused"] and "SWITCHING" in inner[0].detail
    assert len(entries(service, AuditKind.SWITCHED, ref)) == 1 and current_id(service) == ref


def test_filesystem_verification_failure_points_current_back_at_old(tmp_path: Path) -> None:
    service = make_service(tmp_path, strategy="filesystem", links_dir=tmp_path / "links")
    folder = locations.link_dir(tmp_path / "links", BRANCH, INDEX)
    old = active(service, tmp_path, "job-old")
    new = built(service, tmp_path, "job-new")
    service.shadows.verifiers = Verifiers(custom={"file": gone})
    assert service.shadows.switch(new).status == "rolled_back" and current_id(service) == old
    assert os.path.realpath(folder / "current") == os.path.realpath(tmp_path / "idx" / "job-old")


def test_filesystem_failed_first_switch_leaves_no_current_link(tmp_path: Path) -> None:
    service = make_service(tmp_path, strategy="filesystem", links_dir=tmp_path / "links")
    ref = built(service, tmp_path, "job-1")
    service.shadows.verifiers = Verifiers(custom={"file": gone})
    assert service.shadows.switch(ref).status == "rolled_back" and current_id(service) is None
    assert not (locations.link_dir(tmp_path / "links", BRANCH, INDEX) / "current").is_symlink()


def test_filesystem_forced_switch_to_non_local_location_does_not_move_pointer(tmp_path: Path) -> None:
    service = make_service(tmp_path, strategy="filesystem", links_dir=tmp_path / "links")
    start(service, "job-1")
    complete(service, "job-1", "es://cluster/idx-1", 10, 100)
    try:
        service.shadows.switch("shadow-job-1", force=True)
    except ValueError:
        pass
    assert current_id(service) is None
