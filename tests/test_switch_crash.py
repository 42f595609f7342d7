"""A worker SIGKILLed at each step of a switch; and two switches racing for one index.

Real ``celery -A workers worker`` processes (solo pool, so the kill takes the whole worker
down) consume ``com.oms.shadow.switch.requested`` from RabbitMQ, which requeues a dead
consumer's unacked message at once. ``TESTING_KILL_AT_SWITCH_STEP`` (``indexgate.testing.app``) makes the worker SIGKILL
itself at the named step. After each kill the active pointer must be the old index or the
new one, never none; the switch lock must die at its heartbeat deadline with no sweep; and
a fresh worker must complete the switch from the redelivered request.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from indexgate.events.publisher import Publisher, funnel_event
from indexgate.clock import poll
from indexgate.testing.indexes import write_index
from indexgate.service import Service
from indexgate.schemas.records import AuditKind
from indexgate.schemas.shadows import ShadowState, index_key
from tests.conftest import AMQP_URL, REDIS_URL, isolated_settings, require_reachable
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.app import KILL_AT_ENV
from indexgate.testing.processes import start_worker, stop

pytestmark = pytest.mark.slow

BRANCH = "crash/branch"
INDEX = "SEARCH_INDEX"
STEPS = ["validated", "claimed", "locked", "swapped", "verified", "unlocked"]
HEARTBEAT_S = 0.3  # the switch lock and claim die after 3 x 0.3 s


def build_and_complete(service: Service, job: str, folder: Path, records: int = 100) -> str:
    from indexgate.events.catalog import apply
    from indexgate.events.decode import IncomingEvent

    def send(type_: str, data: dict) -> None:
        apply(service, IncomingEvent(id=uuid.uuid4().hex, source="funnel", type=type_, time=None, data=data))

    send("com.oms.indexing.started", {"job_id": job, "branch": BRANCH, "resource_types": ["object_type"],
                                      "indexing_mode": "shadow", "index_type": INDEX})
    location = write_index(folder / job, records)
    send("com.oms.indexing.completed", {"job_id": job, "record_count": records, "index_size_bytes": records * 10,
                                        "location": location})
    return f"shadow-{job}"


def until(predicate, timeout_s: float = 60.0, what: str = "condition"):
    value = poll(predicate, timeout_s)
    assert value, f"{what} not reached within {timeout_s} s"
    return value


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_switch_step_leaves_old_or_new_never_none(step: str, tmp_path: Path) -> None:
    require_reachable(AMQP_URL)
    settings = isolated_settings(tmp_path, AMQP_URL, switch_lock_heartbeat_interval_s=HEARTBEAT_S,
                                verify_timeout_s=HEARTBEAT_S / 3)
    settings.ensure_data_dirs()
    service = Service.from_settings(settings)
    old = build_and_complete(service, "job-old", tmp_path / "idx")
    assert service.shadows.switch(old).status == "switched"
    new = build_and_complete(service, "job-new", tmp_path / "idx")
    publisher = Publisher(settings)
    doomed = start_worker(settings, "doomed", pool="solo", app_module="indexgate.testing.app",
                          env={KILL_AT_ENV: step})
    try:
        publisher.publish_funnel(funnel_event("com.oms.shadow.switch.requested", {"shadow_index_id": new}))
        assert doomed.wait(timeout=60) == -9, "the worker was meant to be SIGKILLed"

        state = service.store.load_index(index_key(BRANCH, INDEX))
        assert state.active is not None and state.active.shadow_index_id in {old, new}, "pointer is never none"
        expected = new if STEPS.index(step) >= STEPS.index("swapped") else old
        assert state.active.shadow_index_id == expected
        until(lambda: service.check(BRANCH, "object_type").allowed, 10, "the switch lock's death at its deadline")
        assert not [e for e in service.store.audit(100) if e.kind is AuditKind.RELEASED and e.actor == "indexgate-sweeper"]

        survivor = start_worker(settings, "survivor", pool="solo")
        try:
            until(lambda: service.shadows.current(BRANCH, INDEX).shadow_index_id == new and
                  service.store.load_index(index_key(BRANCH, INDEX)).build(new).state is ShadowState.ACTIVE,
                  60, "the retried switch")
        finally:
            stop(survivor)
    finally:
        stop(doomed)
        publisher.close()
        delete_run_names(settings)
    assert service.shadows.current(BRANCH, INDEX).shadow_index_id == new
    until(lambda: service.check(BRANCH, "object_type").allowed, 10, "no lock left in force")


def test_two_concurrent_switch_requests_exactly_one_wins(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, switch_lock_heartbeat_interval_s=HEARTBEAT_S,
                                verify_timeout_s=HEARTBEAT_S / 3)
    settings.ensure_data_dirs()
    service = Service.from_settings(settings)
    old = build_and_complete(service, "job-old", tmp_path / "idx")
    service.shadows.switch(old)
    new = build_and_complete(service, "job-new", tmp_path / "idx")
    token_before = service.shadows.current(BRANCH, INDEX).fencing_token
    workers = [start_worker(settings, f"racer{i}", pool="solo") for i in range(2)]
    publisher = Publisher(settings)
    try:
        from indexgate.workers.app import create_app

        app = create_app(settings)
        until(lambda: len(app.control.ping(timeout=0.5) or []) == 2, 60, "both workers up")
        for _ in range(2):
            publisher.publish_funnel(funnel_event("com.oms.shadow.switch.requested", {"shadow_index_id": new}))
        until(lambda: len([e for e in service.store.audit(200) if e.kind in (AuditKind.SWITCHED, AuditKind.SWITCH_FAILED)
                           or "not BUILT" in (e.reason or "")]) >= 1, 60, "the switch")
        time.sleep(HEARTBEAT_S * 6)  # let the loser's retry, if any, finish before counting
    finally:
        for proc in workers:
            stop(proc)
        publisher.close()
        delete_run_names(settings)
    switched = [e for e in service.store.audit(200) if e.kind is AuditKind.SWITCHED and e.detail.get("shadow_index_id") == new]
    assert len(switched) == 1, f"exactly one switch must win, got {len(switched)}"
    pointer = service.shadows.current(BRANCH, INDEX)
    assert pointer.shadow_index_id == new and pointer.fencing_token > token_before
    assert os.path.isdir(pointer.location)
