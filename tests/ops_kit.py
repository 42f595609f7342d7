"""A scripted operator scenario on a real worker: grant, heartbeat, death, switch, dead letter.

Shared by the metrics, board, Flower and logging tests. Events go in as the funnel sends
them (structured CloudEvents through the broker's intake); the checks wait on the store.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

from indexgate.events.brokers import transport_for
from indexgate.events.decode import event_key
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.indexes import write_index

SOURCE = "ops-test-funnel"


@pytest.fixture
def redis_settings(tmp_path: Path):
    """Isolated settings on the real Redis with an initialized SQLite store (import it as a fixture)."""
    from tests.conftest import REDIS_URL, isolated_settings, require_reachable

    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    yield settings
    delete_run_names(settings)


def wait_for(predicate, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Scenario:
    tag: str
    live_branch: str
    live_job: str
    dying_branch: str
    dying_job: str
    shadow_branch: str
    shadow_job: str
    keys: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, hostile_branch: bool = False) -> "Scenario":
        tag = uuid.uuid4().hex[:6]
        live = f"ops/<b>live</b>&{tag}" if hostile_branch else f"ops/live-{tag}"
        return cls(tag, live, f"job-live-{tag}", f"ops/dying-{tag}", f"job-dying-{tag}", f"ops/shadow-{tag}",
                   f"job-shadow-{tag}")


def send(publisher: Publisher, scenario: Scenario, type_: str, data: dict) -> str:
    event = funnel_event(type_, data, source=SOURCE)
    publisher.publish_funnel(event)
    key = event_key(SOURCE, event.get_id())
    scenario.keys.append(key)
    return key


def run(settings: Settings, service: Service, scenario: Scenario, tmp: Path) -> str:
    """Play the scenario and wait until the worker applied it; returns the dead letter's id."""
    publisher = Publisher(settings)
    try:
        send(publisher, scenario, "com.oms.indexing.started",
             {"job_id": scenario.live_job, "branch": scenario.live_branch, "resource_types": ["object_type"],
              "heartbeat_interval_s": 3600, "service_name": "funnel-pod-7"})
        send(publisher, scenario, "com.oms.indexing.started",
             {"job_id": scenario.dying_job, "branch": scenario.dying_branch, "resource_types": ["link_type"],
              "heartbeat_interval_s": 0.2, "service_name": "funnel-pod-9"})
        wait_for(lambda: all(service.store.seen(k) for k in scenario.keys), what="the two grants")
        send(publisher, scenario, "com.oms.indexing.heartbeat",
             {"job_id": scenario.live_job, "progress_percent": 40, "estimated_remaining_s": 1800})
        location = write_index(tmp / "idx" / scenario.shadow_job, 50)
        send(publisher, scenario, "com.oms.indexing.started",
             {"job_id": scenario.shadow_job, "branch": scenario.shadow_branch, "resource_types": ["object_type"],
              "indexing_mode": "shadow", "index_type": "SEARCH_INDEX"})
        wait_for(lambda: all(service.store.seen(k) for k in scenario.keys), what="heartbeat and shadow start")
        send(publisher, scenario, "com.oms.indexing.completed",
             {"job_id": scenario.shadow_job, "record_count": 50, "index_size_bytes": 500, "location": location})
        wait_for(lambda: all(service.store.seen(k) for k in scenario.keys), what="the shadow completion")
        send(publisher, scenario, "com.oms.shadow.switch.requested", {"job_id": scenario.shadow_job})
        wait_for(lambda: all(service.store.seen(k) for k in scenario.keys), what="the switch")
    finally:
        publisher.close()
    before = {letter.letter_id for letter in service.store.dead_letters(-1)}
    transport = transport_for(settings)
    try:  # a funnel bug: a type nobody knows, structured mode
        body = (f'{{"specversion": "1.0", "id": "bad-{scenario.tag}", "source": "{SOURCE}", '
                f'"type": "com.oms.indexing.exploded", "data": {{"job_id": "{scenario.live_job}", '
                f'"branch": "{scenario.live_branch}"}}}}').encode()
        transport.publish_raw("com.oms.indexing.exploded",
                              RabbitMQMessage({}, "application/cloudevents+json", body))
    finally:
        transport.close()
    wait_for(lambda: len(service.store.dead_letters(-1)) > len(before), what="the dead letter")
    [letter] = [x for x in service.store.dead_letters(-1) if x.letter_id not in before]
    wait_for(lambda: any(v.lock.job_id == scenario.dying_job and v.health == "critical"
                         for v in service.list_locks()), what="the dying lock to be critical")
    return letter.letter_id
