"""The Redis intake stream, on the real Redis: nothing read is lost until its effect is in.

The stream verbs are checked one by one (an entry stays pending until acked, a pending
entry can be claimed, a touch keeps it from being claimed); then the pool's side
(``ingest_batch`` acks applied entries and touches the rest when the store fails); then a
real worker recovering entries that a dead consumer had read and never handed off.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

from indexgate.events import catalog
from indexgate.events.brokers import redis_stream
from indexgate.events.decode import event_key
from indexgate.events.intake import Delivery, HandOff, ingest_batch
from indexgate.events.publisher import Publisher, encode, funnel_event
from indexgate.clock import poll
from indexgate.errors import StoreUnavailable
from indexgate.service import Service
from indexgate.settings import Settings
from tests.conftest import (
    REDIS_URL,
    isolated_settings,
    require_reachable,
    running_worker,
)
from indexgate.testing.broker_names import delete_run_names, waiting_count

START = "com.oms.indexing.started"


@pytest.fixture
def settings(tmp_path: Path):
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, intake_claim_idle_s=1.0)
    settings.ensure_data_dirs()
    yield settings
    delete_run_names(settings)


@pytest.fixture
def conn(settings: Settings):
    client = redis_stream.client(settings.resolved_broker_url)
    yield client
    client.close()


def started(job: str, **attrs) -> object:
    return funnel_event(START, {"job_id": job, "branch": "main", "resource_types": ["object_type"]}, **attrs)


def publish_jobs(settings: Settings, jobs: list[str]) -> list[str]:
    publisher = Publisher(settings)
    try:
        events = [started(job) for job in jobs]
        for event in events:
            publisher.publish_funnel(event)
        return [event_key(e.get_source(), e.get_id()) for e in events]
    finally:
        publisher.close()


def test_both_content_modes_round_trip_through_an_entry(settings: Settings, conn) -> None:
    event = started("j1", subject="s")
    for mode in ("structured", "binary"):
        redis_stream.publish(conn, settings, redis_stream.fields_of(encode(event, mode), START))
    group = redis_stream.StreamGroup(conn, settings, "c1")
    group.ensure()
    entries = group.read_new(10, 100)
    assert [e.raw.routing_key for e in entries] == [START, START]
    assert entries[0].raw.content_type == "application/cloudevents+json"
    assert entries[1].raw.headers["ce-id"] == event.get_id()
    assert entries[1].raw.body_bytes() == encode(event, "binary").body


def test_an_entry_stays_pending_until_acked_and_can_be_claimed(settings: Settings, conn) -> None:
    publish_jobs(settings, ["a", "b"])
    dead = redis_stream.StreamGroup(conn, settings, "dead-worker")
    dead.ensure()
    read = dead.read_new(10, 100)
    assert len(read) == 2 and dead.in_flight() == 2
    alive = redis_stream.StreamGroup(conn, settings, "alive-worker")
    assert alive.read_new(10, 10) == []  # nothing new: both are pending with the dead one
    time.sleep(0.05)
    cursor, claimed = alive.claim_idle(min_idle_ms=20, count=10)
    assert cursor == "0-0" and [e.ref for e in claimed] == [e.ref for e in read]
    assert alive.in_flight() == 2 and dead.in_flight() == 0
    alive.ack([claimed[0].ref])
    assert conn.xlen(redis_stream.stream_key(settings)) == 1  # acked entries are deleted
    assert alive.in_flight() == 1


def test_a_touched_entry_is_not_claimed(settings: Settings, conn) -> None:
    publish_jobs(settings, ["a"])
    first = redis_stream.StreamGroup(conn, settings, "first")
    first.ensure()
    [entry] = first.read_new(1, 100)
    time.sleep(0.3)
    first.touch([entry.ref])
    other = redis_stream.StreamGroup(conn, settings, "other")
    assert other.claim_idle(min_idle_ms=200, count=10)[1] == []
    time.sleep(0.3)
    assert [e.ref for e in other.claim_idle(min_idle_ms=200, count=10)[1]] == [entry.ref]


def test_own_pending_entries_are_read_again_after_a_restart(settings: Settings, conn) -> None:
    publish_jobs(settings, ["a", "b", "c"])
    group = redis_stream.StreamGroup(conn, settings, "w1")
    group.ensure()
    read = group.read_new(10, 100)
    again = redis_stream.StreamGroup(conn, settings, "w1")  # same name, new process
    assert [e.ref for e in again.read_own("0", 2)] == [e.ref for e in read[:2]]
    assert [e.ref for e in again.read_own(read[1].ref, 2)] == [read[2].ref]


def test_a_batch_acks_what_it_applied_and_touches_the_rest_on_a_store_outage(
        settings: Settings, conn, monkeypatch) -> None:
    keys = publish_jobs(settings, ["a", "b", "c"])
    group = redis_stream.StreamGroup(conn, settings, "w1")
    group.ensure()
    entries = group.read_new(10, 100)
    service = Service.from_settings(settings)
    real_apply = catalog.apply

    def flaky(service_, event):
        if event.data["job_id"] == "b":
            raise StoreUnavailable("the store is down (test)")
        return real_apply(service_, event)

    monkeypatch.setattr(catalog, "apply", flaky)
    handoff = HandOff(items=[Delivery(raw=e.raw, ref=e.ref) for e in entries], consumer="w1")
    with pytest.raises(StoreUnavailable):
        ingest_batch(service, settings, handoff, group)
    assert service.store.seen(keys[0]) and not service.store.seen(keys[1])
    assert group.in_flight() == 2  # "a" acked; "b" and "c" wait for the retry
    monkeypatch.setattr(catalog, "apply", real_apply)
    outcomes = ingest_batch(service, settings, handoff, group)  # the task's retry: the whole batch again
    assert [o.status for o in outcomes][0] == "duplicate"
    assert all(service.store.seen(k) for k in keys)
    assert group.in_flight() == 0 and conn.xlen(redis_stream.stream_key(settings)) == 0
    service.store.close()


def test_an_entry_without_a_body_is_dead_lettered_not_dropped(settings: Settings, conn) -> None:
    conn.xadd(redis_stream.stream_key(settings), {"ce-id": "x", "note": "no body field"})
    group = redis_stream.StreamGroup(conn, settings, "w1")
    group.ensure()
    entries = group.read_new(10, 100)
    service = Service.from_settings(settings)
    [outcome] = ingest_batch(service, settings, HandOff(items=[Delivery(raw=e.raw, ref=e.ref) for e in entries],
                                                        consumer="w1"), group)
    assert outcome.status == "dead_lettered"
    [letter] = service.store.dead_letters()
    assert letter.headers["note"] == "no body field" and "specversion" in letter.reason
    assert conn.xlen(redis_stream.stream_key(settings)) == 0
    service.store.close()


def test_a_worker_applies_what_a_dead_consumer_had_read(settings: Settings, conn) -> None:
    """The consumer "crashed" after reading (its hand-off task never existed, as when Redis
    dies with it in flight): a live worker claims the entries after intake_claim_idle_s."""
    keys = publish_jobs(settings, [f"job-{i}" for i in range(5)])
    dead = redis_stream.StreamGroup(conn, settings, "crashed-worker")
    dead.ensure()
    assert len(dead.read_new(10, 100)) == 5
    service = Service.from_settings(settings)
    with running_worker(settings):
        assert poll(lambda: all(service.store.seen(k) for k in keys), 30)
        assert poll(lambda: waiting_count(settings) == 0, 10) is not None
    assert dead.in_flight() == 0
    assert len(service.store.audit(100)) >= 5
    service.store.close()


def test_publish_raw_reaches_the_dead_letters_with_its_headers(settings: Settings) -> None:
    publisher = Publisher(settings)
    service = Service.from_settings(settings)
    try:
        publisher.publish_raw("weird.type", RabbitMQMessage({"x-trace": "t1"}, "text/plain", b"hello"))
        with running_worker(settings):
            letters = poll(lambda: service.store.dead_letters(), 20)
        assert letters and letters[0].headers["x-trace"] == "t1" and letters[0].routing_key == "weird.type"
    finally:
        publisher.close()
        service.store.close()


def test_during_a_store_outage_the_pump_reads_only_a_probe_per_retry_interval(settings: Settings, conn) -> None:
    from indexgate.workers.intake import StreamPump
    from indexgate.workers.runtime import outage_flag

    from indexgate.events.brokers import transport_for

    class App:  # what the pump reads of the Celery app
        indexgate_settings = settings
        indexgate_transport = transport_for(settings)

    pump = StreamPump(App(), consumer="w1")
    group = redis_stream.StreamGroup(conn, settings, "w1")
    assert pump._room(group) == settings.intake_batch_max
    outage_flag(settings).touch()  # a pool process reported the store down
    assert pump._room(group) == 1  # one entry probes whether it is back
    assert pump._room(group) == 0  # and no more until the next retry interval
    outage_flag(settings).unlink()  # a task succeeded
    assert pump._room(group) == settings.intake_batch_max


def test_consumers_of_gone_workers_are_forgotten_but_not_while_they_hold_entries(settings: Settings, conn) -> None:
    publish_jobs(settings, ["a", "b"])
    holder = redis_stream.StreamGroup(conn, settings, "pod-holding")
    holder.ensure()
    assert len(holder.read_new(1, 100)) == 1
    gone = redis_stream.StreamGroup(conn, settings, "pod-gone")
    gone.ack([entry.ref for entry in gone.read_new(1, 100)])  # finished its work, then went away
    time.sleep(0.05)
    me = redis_stream.StreamGroup(conn, settings, "pod-me")
    assert me.forget_idle_consumers(idle_ms=20) == ["pod-gone"]
    assert {c["name"] for c in me.consumers()} == {"pod-holding"}


def test_intake_status_shows_what_waits_and_who_holds_it(settings: Settings, conn, monkeypatch) -> None:
    import json

    from click.testing import CliRunner

    from indexgate.cli import main
    from indexgate.testing.processes import settings_env

    publish_jobs(settings, ["a", "b", "c"])
    group = redis_stream.StreamGroup(conn, settings, "worker-1")
    group.ensure()
    group.read_new(2, 100)
    for name, value in settings_env(settings).items():
        if name.startswith("INDEXGATE_"):
            monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["intake", "status", "--json"])
    assert result.exit_code == 0, result.output
    stream = json.loads(result.output)["stream"]
    assert (stream["length"], stream["pending"], stream["unread"]) == (3, 2, 1)
    assert stream["consumers"][0]["name"] == "worker-1" and stream["consumers"][0]["pending"] == 2
    assert stream["oldest_pending_idle_s"] is not None
    assert "2 handed off and unacked" in CliRunner().invoke(main, ["intake", "status"]).output
