"""Funnel CloudEvents through each real broker into a real worker and store, and back out.

Parametrized over Redis, RabbitMQ and the embedded filesystem broker: the same events, the
same assertions. The worker is Celery's in-process test worker (solo pool) with the intake
bootstep; the store is SQLite in the test's folder.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq_event
from kombu import Exchange, Queue

from indexgate.events.brokers import transport_for
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.clock import poll
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.schemas.records import AuditKind
from tests.conftest import FIXTURES, running_worker

BRANCH = "feature/user-schema"


def eventually(predicate: Callable[[], object], timeout_s: float = 20.0) -> object:
    """Poll until ``predicate`` is truthy; a bound on waiting, not a timing assertion."""
    value = poll(predicate, timeout_s)
    assert value, f"condition not met within {timeout_s} s"
    return value


def fixture_event(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def publish(publisher: Publisher, doc: dict, mode: str = "structured", **attrs) -> None:
    time_ = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")) if doc.get("time") else None
    event = funnel_event(doc["type"], doc["data"], source=doc["source"], event_id=doc["id"], time=time_, **attrs)
    publisher.publish_funnel(event, mode=mode)  # type: ignore[arg-type]


class OutProbe:
    """A queue bound to the outgoing exchange, to read what indexgate announces."""

    def __init__(self, settings: Settings) -> None:
        self.conn = transport_for(settings).connection()
        exchange = Exchange(settings.out_exchange, type="topic", durable=True)
        self.queue = Queue(f"{settings.out_exchange}.probe", exchange, routing_key="#", durable=True)
        self.simple = self.conn.SimpleQueue(self.queue)

    def types(self, count: int, timeout_s: float = 20.0) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(seen) < count and time.monotonic() < deadline:
            try:
                message = self.simple.get(timeout=0.5)
            except self.simple.Empty:
                continue
            body = message.body if isinstance(message.body, bytes) else message.body.encode()
            event = from_rabbitmq_event(RabbitMQMessage(dict(message.headers or {}), message.content_type, body))
            seen.append(event.get_type())
            message.ack()
        return seen

    def close(self) -> None:
        self.simple.close()
        self.conn.release()


@pytest.fixture
def probe(broker_settings: Settings):
    out = OutProbe(broker_settings)
    yield out
    out.close()


def test_structured_and_binary_events_drive_locks_and_announce_them(broker_settings: Settings, probe: OutProbe) -> None:
    service = Service.from_settings(broker_settings)
    publisher = Publisher(broker_settings)
    with running_worker(broker_settings):
        publish(publisher, fixture_event("indexing-started-traditional.json"), mode="structured")
        lock = eventually(lambda: service.list_locks(BRANCH))[0].lock
        assert (lock.resource_type, lock.job_id, lock.holder, lock.fencing_token) == ("object_type", "job-42", "funnel-service", 1)
        assert not service.check(BRANCH, "object_type").allowed
        assert service.check(BRANCH, "link_type").allowed

        heartbeat = fixture_event("seed-heartbeat-progress-info.json")  # progress_info.indexing_progress = 75
        publish(publisher, heartbeat, mode="binary")
        eventually(lambda: service.list_locks(BRANCH)[0].lock.progress_percent == 75)

        publish(publisher, {"type": "com.oms.indexing.completed", "source": "funnel-service", "id": "done-1",
                            "data": {"job_id": "job-42", "record_count": 10}}, mode="binary")
        eventually(lambda: not service.list_locks(BRANCH))
        assert probe.types(2) == ["com.indexgate.lock.acquired", "com.indexgate.lock.released"]
    released = [e for e in service.store.audit(50, BRANCH) if e.kind is AuditKind.RELEASED]
    assert [e.reason for e in released] == ["completed"]
    publisher.close()


def test_duplicate_stale_unknown_and_malformed_events(broker_settings: Settings, probe: OutProbe) -> None:
    service = Service.from_settings(broker_settings)
    publisher = Publisher(broker_settings)
    start = fixture_event("indexing-started-traditional.json")
    base = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
    with running_worker(broker_settings):
        publish(publisher, start)
        eventually(lambda: service.list_locks(BRANCH))
        publish(publisher, start)  # the same source + id again
        fresh = {"type": "com.oms.indexing.heartbeat", "source": "funnel-service", "id": "hb-new",
                 "time": (base + timedelta(minutes=30)).isoformat(),
                 "data": {"job_id": "job-42", "service_name": "funnel-service", "status": "healthy", "progress_percent": 60}}
        stale = fresh | {"id": "hb-old", "time": (base + timedelta(minutes=10)).isoformat(),
                         "data": fresh["data"] | {"progress_percent": 20}}
        publish(publisher, fresh)
        eventually(lambda: service.list_locks(BRANCH)[0].lock.progress_percent == 60)
        publish(publisher, stale, mode="binary")
        publish(publisher, {"type": "com.oms.indexing.heartbeat", "source": "funnel-service", "id": "hb-ghost",
                            "data": {"job_id": "job-nobody", "service_name": "x", "status": "healthy"}})
        publisher.publish_raw("com.oms.indexing.started",
                              RabbitMQMessage({}, "application/cloudevents+json", b'{"specversion": "1.0", "id": '))
        publisher.publish_raw("com.oms.indexing.started",
                              RabbitMQMessage({"ce-id": "x", "ce-source": "f", "ce-specversion": "1.0",
                                               "ce-type": "com.oms.indexing.started"}, "application/json",
                                              b'{"job_id": "j", "resource_types": "object_type"}'))
        letters = eventually(lambda: len(service.store.dead_letters()) == 2 and service.store.dead_letters())
        eventually(lambda: any(e.kind is AuditKind.UNKNOWN_JOB for e in service.store.audit(50)))
        eventually(lambda: any("stale" in (e.reason or "") for e in service.store.audit(50)))

    reasons = " | ".join(letter.reason for letter in letters)
    assert "not JSON" in reasons and "branch" in reasons and "resource_types" in reasons
    assert {letter.body for letter in letters} >= {'{"specversion": "1.0", "id": '}
    locks = service.list_locks(BRANCH)
    assert len(locks) == 1 and locks[0].lock.progress_percent == 60  # the stale 20 % was not applied
    grants = [e for e in service.store.audit(100, BRANCH) if e.kind is AuditKind.ACQUIRED]
    assert len(grants) == 1  # the duplicate start changed nothing
    assert probe.types(1) == ["com.indexgate.lock.acquired"]
    publisher.close()


def test_conflicting_start_is_refused_with_an_outgoing_event(broker_settings: Settings, probe: OutProbe) -> None:
    service = Service.from_settings(broker_settings)
    publisher = Publisher(broker_settings)
    data = {"branch": BRANCH, "resource_types": [], "service_name": "funnel-a", "indexing_mode": "traditional"}
    with running_worker(broker_settings):
        publisher.publish_funnel(funnel_event("com.oms.indexing.started", data | {"job_id": "wide"}))
        eventually(lambda: service.list_locks(BRANCH))
        publisher.publish_funnel(funnel_event("com.oms.indexing.started",
                                              data | {"job_id": "typed", "resource_types": ["link_type"]}))
        refused = eventually(lambda: [e for e in service.store.audit(20, BRANCH) if e.kind is AuditKind.REFUSED])
        assert probe.types(2) == ["com.indexgate.lock.acquired", "com.indexgate.lock.refused"]
    assert refused[0].job_id == "typed" and "funnel-a" in (refused[0].reason or "")
    assert [v.lock.job_id for v in service.list_locks(BRANCH)] == ["wide"]  # branch-wide lock blocks all types
    publisher.close()
