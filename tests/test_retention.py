"""Retention: the beat job prunes inbox keys, published audit entries and dead letters past
their retention, never the outbox, holds the inbox back after a gap, and gives SQLite's
space back; settings refuse an inbox retention a redelivery could outlive. Service level
over SQLite (the store contract tests cover both adapters' verbs), plus the real task
through a real worker on Redis."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from indexgate.beat_schedule import RETENTION, build_schedule
from indexgate.clock import poll, utcnow
from indexgate.errors import ConfigError
from indexgate.retention import RAN_AT, RetentionPolicy
from indexgate.schemas.records import AuditEntry, AuditKind, DeadLetter
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import open_store
from tests.conftest import REDIS_URL, isolated_settings, require_reachable, running_worker
from tests.service_kit import POLICY

DAY = 86_400.0
RETAIN = RetentionPolicy(inbox_s=DAY, audit_s=2 * DAY, dead_letter_s=3 * DAY, interval_s=3600)


@dataclass
class WallClock:
    """The real time plus an offset the test moves (inbox keys are stamped by the store's clock)."""

    offset_s: float = 0.0

    def __call__(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset_s)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def service(store, wall, outbox) -> Service:
    return Service(store, POLICY, clock=wall, notify=outbox, retention=RETAIN)


def entry(service: Service, published: bool) -> AuditEntry:
    return AuditEntry(at=service.clock(), kind=AuditKind.ACQUIRED, actor="t", branch="b", published=published)


def letter(service: Service) -> DeadLetter:
    return DeadLetter(at=service.clock(), reason="bad", body="x")


def test_retention_prunes_what_is_past_its_retention_and_never_the_outbox(service, store, wall):
    store.record([entry(service, True), entry(service, False)], "src|old")
    store.add_dead_letter(letter(service))
    assert service.retention.run().inbox_held_back  # the first run ever: no earlier run, a gap
    wall.advance(3600)
    kept = service.retention.run()
    assert not kept.inbox_held_back and (kept.inbox, kept.audit, kept.dead_letters) == (0, 0, 0)
    wall.advance(1.5 * DAY)
    _every_interval(service, wall)
    assert not store.seen("src|old") and len(store.audit(10)) == 2 and len(store.dead_letters()) == 1
    wall.advance(DAY)  # 2.5 days: past the audit retention
    _every_interval(service, wall)
    assert [e.published for e in store.audit(10)] == [False]  # the outbox stays, however old
    assert len(store.unpublished()) == 1 and len(store.dead_letters()) == 1
    wall.advance(DAY)  # 3.5 days: past the dead letters' retention
    _every_interval(service, wall)
    assert store.dead_letters() == [] and len(store.unpublished()) == 1
    again = service.retention.run()
    assert (again.inbox, again.audit, again.dead_letters) == (0, 0, 0)  # idempotent


def _every_interval(service: Service, wall: WallClock) -> None:
    service.retention.run()  # after a jump longer than two intervals this run holds the inbox back
    wall.advance(3600)
    service.retention.run()


def test_a_run_after_a_gap_prunes_no_inbox_keys(service, store, wall):
    service.retention.run()
    store.record([], "src|1")
    wall.advance(DAY + 3 * 3600)  # e.g. a store outage: batches retried meanwhile may still carry src|1
    held = service.retention.run()
    assert held.inbox_held_back and held.inbox == 0 and store.seen("src|1")
    wall.advance(3600)
    assert service.retention.run().inbox == 1 and not store.seen("src|1")
    assert store.marker(RAN_AT) is not None


def test_retention_gives_sqlite_space_back(service, store, wall, tmp_path):
    service.retention.run()
    for n in range(2000):
        store.record([entry(service, True)], f"src|{n}")
    conn = sqlite3.connect(store.path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    wall.advance(3 * DAY)
    _every_interval(service, wall)
    assert conn.execute("PRAGMA page_count").fetchone()[0] < pages / 3
    conn.close()


def test_a_pruned_event_delivered_again_changes_nothing_twice(service, store, wall):
    """Past its retention an exact duplicate is no longer caught by the inbox: the domain's
    own guards (finished jobs remembered for job_retention_s) still make it change nothing."""
    from tests.test_service import event
    from indexgate.events import catalog

    start = event("com.oms.indexing.started", {"job_id": "j", "branch": "b", "resource_types": ["x"]},
                  time=wall(), event_id="s1")
    done = event("com.oms.indexing.completed", {"job_id": "j"}, time=wall(), event_id="c1")
    assert catalog.apply(service, start).status == "applied" and catalog.apply(service, done).status == "applied"
    wall.advance(DAY + 60)
    _every_interval(service, wall)
    assert not store.seen(start.key)
    assert catalog.apply(service, start).status == "ignored" and service.check("b", "x").allowed


# --- settings ----------------------------------------------------------------------------


def test_an_inbox_retention_shorter_than_redelivery_refuses_to_start(monkeypatch):
    monkeypatch.setenv("INDEXGATE_INBOX_RETENTION_S", "600")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env()
    message = str(refused.value)
    assert "INDEXGATE_INBOX_RETENTION_S=600" in message and "at least 7500" in message
    assert "visibility timeout 600" in message and "consumer_timeout 1800" in message


def test_the_floor_follows_the_redelivery_settings(monkeypatch):
    monkeypatch.setenv("INDEXGATE_RABBITMQ_CONSUMER_TIMEOUT_S", "86400")  # a server configured for a day
    with pytest.raises(ConfigError, match="at least 86760"):
        Settings.from_env()
    monkeypatch.setenv("INDEXGATE_INBOX_RETENTION_S", "86760")
    assert Settings.from_env().inbox_retention_floor_s == 86_760


def test_a_retention_interval_shorter_than_a_retried_batch_refuses():
    with pytest.raises(ConfigError, match="INDEXGATE_RETENTION_INTERVAL_S=100"):
        Settings(retention_interval_s=100)


def test_beat_schedules_retention_at_its_interval():
    schedule = build_schedule(Settings(retention_interval_s=7200, inbox_retention_s=DAY))
    assert schedule["retention"] == {"task": RETENTION, "schedule": 7200, "options": {"expires": 7200}}


# --- the beat job, through a real worker on Redis ------------------------------------------


def test_the_retention_task_runs_in_a_real_worker(tmp_path: Path):
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    store = open_store(settings)
    store.set_marker(RAN_AT, utcnow() - timedelta(minutes=5))  # a recent run: no gap
    store.record([], "src|kept")
    old = utcnow() - timedelta(days=2)
    store.add_dead_letter(DeadLetter(at=old - timedelta(days=30), reason="ancient", body="x"))
    store.add_dead_letter(DeadLetter(at=old, reason="recent", body="y"))
    with running_worker(settings) as app:
        before = store.marker(RAN_AT)
        app.send_task(RETENTION, queue=settings.task_queue)
        assert poll(lambda: store.marker(RAN_AT) != before, 30), "the retention task did not run"
    assert [d.reason for d in store.dead_letters()] == ["recent"] and store.seen("src|kept")
    store.close()
    assert os.path.exists(settings.data_dir)
