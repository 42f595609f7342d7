"""The intake transports (``events.brokers``), on the real brokers.

One transport per broker kind, chosen once from the URL; the Celery app keeps a plain
broker URL (Flower parses its scheme) while our patched kombu transport is the one used;
``declare`` is idempotent and makes what kombu itself would make; the Redis kombu door
moves kombu's messages (every priority sub-list, kombu's envelope) into the stream in one
script; ``status`` raises the alerts an operator needs when events pile up unread.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from indexgate.errors import ConfigError
from indexgate.events.brokers import Alert, IntakeMode, redis_stream, transport_for
from indexgate.events.brokers.amqp import AmqpTransport
from indexgate.events.brokers.embedded import EmbeddedTransport
from indexgate.events.brokers.embedded import Transport as PatchedFilesystem
from indexgate.events.brokers.redis import RedisTransport
from indexgate.events.brokers.redis_kombu import Transport as PatchedRedis
from indexgate.settings import Settings
from indexgate.testing.broker_names import delete_run_names
from indexgate.workers.app import create_app
from tests.conftest import AMQP_URL, REDIS_URL, isolated_settings, require_reachable


def _settings_on(url: str, tmp_path: Path):
    require_reachable(url)
    settings = isolated_settings(tmp_path, url)
    yield settings
    delete_run_names(settings)


@pytest.fixture
def redis_settings(tmp_path: Path):
    yield from _settings_on(REDIS_URL, tmp_path)


@pytest.fixture
def amqp_settings(tmp_path: Path):
    yield from _settings_on(AMQP_URL, tmp_path)


@pytest.mark.parametrize("url, kind, mode", [
    (None, EmbeddedTransport, IntakeMode.CONSUMER),
    ("redis://127.0.0.1:6379/0", RedisTransport, IntakeMode.PUMP),
    ("rediss://127.0.0.1:6380/0", RedisTransport, IntakeMode.PUMP),
    ("amqp://guest:guest@127.0.0.1:5672//", AmqpTransport, IntakeMode.CONSUMER),
    ("pyamqp://guest:guest@127.0.0.1:5672//", AmqpTransport, IntakeMode.CONSUMER),
])
def test_the_transport_is_chosen_from_the_url(tmp_path: Path, url, kind, mode) -> None:
    transport = transport_for(Settings(data_dir=tmp_path, broker_url=url))
    assert type(transport) is kind and transport.mode is mode


def test_an_unknown_broker_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown scheme"):
        transport_for(Settings(data_dir=tmp_path, broker_url="kafka://secret:pw@host:9092"))


@pytest.mark.parametrize("url, scheme, patched", [
    (REDIS_URL, "redis://", PatchedRedis),
    (None, "filesystem://", PatchedFilesystem),
])
def test_the_app_url_keeps_its_scheme_while_the_patched_transport_runs(tmp_path: Path, url, scheme, patched) -> None:
    app = create_app(Settings(data_dir=tmp_path, broker_url=url))
    app.indexgate_transport.prepare()
    conn = app.connection()
    try:
        assert conn.as_uri().startswith(scheme) and conn.as_uri(include_password=True).startswith(scheme)
        assert type(conn.transport) is patched
        assert type(conn.default_channel) is patched.Channel  # the patch is what runs, not only its name
    finally:
        conn.release()
        app.close()


def test_flowers_broker_page_client_reads_the_apps_redis_url(redis_settings: Settings) -> None:
    """Flower picks its broker client by the URL's scheme (``flower.utils.broker.Broker``);
    with the app's URL it builds its Redis client and reads the task queue's length."""
    from flower.utils.broker import Broker, Redis

    app = create_app(redis_settings)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.lpush(redis_settings.task_queue, b"{}")
        broker = Broker(app.connection().as_uri(include_password=True))
        assert isinstance(broker, Redis)
        [queue] = asyncio.run(broker.queues([redis_settings.task_queue]))
        assert queue == {"name": redis_settings.task_queue, "messages": 1}
    finally:
        client.delete(redis_settings.task_queue)
        client.close()
        app.close()


def test_redis_declare_is_idempotent_and_binds_exactly_as_kombu_does(redis_settings: Settings) -> None:
    transport = transport_for(redis_settings)
    try:
        assert transport.declare() == transport.declare()
        mine = transport.redis.smembers(f"_kombu.binding.{redis_settings.funnel_exchange}")
        other = f"{redis_settings.funnel_exchange}.kombu"
        with Connection(REDIS_URL) as conn:  # plain kombu binding a queue of its own the same way
            queue = Queue(f"{redis_settings.intake_queue}.kombu", Exchange(other, type="topic"), routing_key="#")
            queue(conn.default_channel).declare()
        kombus = transport.redis.smembers(f"_kombu.binding.{other}")
        assert [m.replace(b".kombu", b"") for m in kombus] == list(mine)
        assert transport.redis.sismember(f"_kombu.binding_permanent.{redis_settings.funnel_exchange}", *mine)
        group = transport.redis.xinfo_groups(redis_stream.stream_key(redis_settings))
        assert [g["name"] for g in group] == [redis_settings.intake_group.encode()]
        transport.redis.delete(f"_kombu.binding.{other}", f"_kombu.binding_permanent.{other}")
    finally:
        transport.close()


def test_rabbitmq_declare_is_idempotent_and_makes_the_durable_queue(amqp_settings: Settings) -> None:
    transport = transport_for(amqp_settings)
    try:
        transport.declare()
        transport.declare()
        assert transport.queue_depth(amqp_settings.intake_queue) == (0, 0)
        transport.send(amqp_settings.funnel_exchange, "com.oms.indexing.started",
                       redis_stream.RabbitMQMessage({}, "text/plain", b"x"))
        assert transport.queue_depth(amqp_settings.intake_queue) == (1, 0)  # bound '#'
    finally:
        transport.close()


def test_the_kombu_door_moves_every_priority_and_keeps_the_envelope(redis_settings: Settings) -> None:
    transport = transport_for(redis_settings)
    transport.declare()
    funnel = Exchange(redis_settings.funnel_exchange, type="topic", durable=True)
    with Connection(REDIS_URL) as conn:
        for priority in (0, 4, 9):
            conn.Producer().publish(json.dumps({"p": priority}), exchange=funnel, routing_key=f"t.{priority}",
                                    declare=[funnel], content_type="application/json", priority=priority,
                                    headers={"n": priority, "ok": True})
    queue = redis_settings.intake_queue
    lengths = [transport.redis.llen(key) for key in redis_stream.kombu_lists(queue)]
    assert lengths == [1, 1, 0, 1]  # kombu's own sub-lists: priorities 0-2, 3-5, 6-8, 9
    group = transport.group("w1")
    try:
        assert group.move_kombu(2) == 2  # at most the limit
        assert group.move_kombu(10) == 1
        entries = group.read_new(10, 100)
        assert [e.raw.routing_key for e in entries] == ["t.0", "t.4", "t.9"]  # kombu's pop order
        assert [json.loads(e.raw.body) for e in entries] == [{"p": 0}, {"p": 4}, {"p": 9}]
        assert entries[1].raw.headers == {"n": "4", "ok": "true"}
        assert entries[0].raw.content_type == "application/json"
        assert sum(transport.redis.llen(key) for key in redis_stream.kombu_lists(queue)) == 0
        assert group.live_readers() == ["w1"]
    finally:
        transport.close()


def test_the_move_is_one_script_so_a_message_is_never_in_neither_place(redis_settings: Settings) -> None:
    """MOVE_KOMBU pops and XADDs inside one EVAL: Redis runs it atomically, and the AOF
    records its effects as one unit (field notes). Here: a full move leaves the list and
    the stream holding the same messages in sum at every step, however it is cut."""
    transport = transport_for(redis_settings)
    transport.declare()
    funnel = Exchange(redis_settings.funnel_exchange, type="topic", durable=True)
    with Connection(REDIS_URL) as conn:
        for n in range(25):
            conn.Producer().publish(f"m{n}", exchange=funnel, routing_key="t", declare=[funnel],
                                    content_type="text/plain")
    group = transport.group("w1")
    stream = redis_stream.stream_key(redis_settings)
    try:
        while True:
            moved = group.move_kombu(7)
            assert transport.redis.llen(redis_settings.intake_queue) + transport.redis.xlen(stream) == 25
            if not moved:
                break
        assert [e.raw.body for e in group.read_new(100, 100)] == [f"m{n}" for n in range(25)]
    finally:
        transport.close()


def test_redis_status_alerts_when_events_pile_up_unread_and_when_unbound(redis_settings: Settings) -> None:
    transport = transport_for(redis_settings)
    try:
        assert [a["alert"] for a in transport.status()["alerts"]] == [Alert.NOT_DECLARED.value]
        transport.declare()
        funnel = Exchange(redis_settings.funnel_exchange, type="topic", durable=True)
        with Connection(REDIS_URL) as conn:
            conn.Producer().publish("x", exchange=funnel, routing_key="t", declare=[funnel], content_type="text/plain")
        transport.publish_raw("t", redis_stream.RabbitMQMessage({}, "text/plain", b"y"))
        status = transport.status()
        assert status["kombu"] == {"list": redis_settings.intake_queue, "exchange": redis_settings.funnel_exchange,
                                   "waiting": 1, "bound": True}
        assert {(a["alert"], a["place"], a["waiting"]) for a in status["alerts"]} == {
            ("no_reader", redis_stream.stream_key(redis_settings), 1), ("no_reader", redis_settings.intake_queue, 1)}
        transport.group("w1").move_kombu(100)  # a worker's pump ran: it is a live reader now
        status = transport.status()
        assert status["alerts"] == [] and status["stream"]["live_readers"] == ["w1"]
    finally:
        transport.close()


def test_rabbitmq_status_alerts_when_undeclared_or_unconsumed(amqp_settings: Settings) -> None:
    transport = transport_for(amqp_settings)
    try:
        missing = {a["place"]: a for a in transport.status()["alerts"]}
        assert set(missing) == {amqp_settings.intake_queue, amqp_settings.funnel_exchange}
        assert all(a["alert"] == "not_declared" and "indexgate setup" in a["message"] for a in missing.values())
        transport.publish_raw("t", redis_stream.RabbitMQMessage({}, "text/plain", b"y"))  # declares the queue
        status = transport.status()
        assert status["queue"] == {"name": amqp_settings.intake_queue, "declared": True, "waiting": 1,
                                   "consumers": 0}
        assert status["exchange"] == {"name": amqp_settings.funnel_exchange, "declared": True}
        assert [(a["alert"], a["waiting"]) for a in status["alerts"]] == [("no_reader", 1)]
    finally:
        transport.close()


def test_rabbitmq_status_alerts_when_the_exchange_is_gone_and_the_queue_is_not(amqp_settings: Settings) -> None:
    """The exchange deleted after setup (its binding goes with it): the queue still looks
    fine, yet a plain AMQP publish to the exchange reaches nobody - status must say so."""
    transport = transport_for(amqp_settings)
    try:
        transport.declare()
        assert transport.status()["alerts"] == []
        with Connection(AMQP_URL) as conn:
            Exchange(amqp_settings.funnel_exchange, channel=conn.default_channel).delete()
        status = transport.status()
        assert status["queue"]["declared"] and status["exchange"]["declared"] is False
        [gone] = status["alerts"]
        assert (gone["alert"], gone["place"]) == ("not_declared", amqp_settings.funnel_exchange)
        assert "indexgate setup" in gone["message"]
        transport.declare()  # setup restores exchange and binding
        assert transport.status()["alerts"] == []
    finally:
        transport.close()


def test_rabbitmq_funnel_publish_is_mandatory(amqp_settings: Settings) -> None:
    """Our own funnel-side publish is returned, not dropped, when nothing is bound."""
    import amqp.exceptions

    transport = AmqpTransport(amqp_settings)
    try:
        with pytest.raises(amqp.exceptions.ChannelError) as raised:
            transport.send(f"{amqp_settings.funnel_exchange}.unbound", "t",
                           redis_stream.RabbitMQMessage({}, "text/plain", b"z"), mandatory=True)
        assert raised.value.reply_code == 312  # NO_ROUTE: returned by the broker
    finally:
        transport.close()
        with Connection(AMQP_URL) as conn:
            Exchange(f"{amqp_settings.funnel_exchange}.unbound", channel=conn.default_channel).delete()


def test_a_bare_lpush_on_the_kombu_list_is_kept_with_its_fault(redis_settings: Settings) -> None:
    transport = transport_for(redis_settings)
    transport.declare()
    transport.redis.lpush(redis_settings.intake_queue, b"not json at all", json.dumps({"specversion": "1.0"}))
    group = transport.group("w1")
    try:
        group.move_kombu(10)
        faults = [e.raw.fault for e in group.read_new(10, 100)]
        assert faults[0].startswith("not a kombu message: the list entry is not JSON")
        assert faults[1].startswith("not a kombu message: no envelope with a body")
    finally:
        transport.close()




def test_embedded_status_reports_the_queue_and_says_consumers_are_unknown(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, None)
    transport = transport_for(settings)
    try:
        transport.declare()
        transport.publish_raw("t", redis_stream.RabbitMQMessage({}, "text/plain", b"y"))
        status = transport.status()
        assert status["queue"] == {"name": settings.intake_queue, "declared": True, "waiting": 1, "consumers": None}
        assert status["alerts"] == []  # the filesystem transport cannot tell who reads
    finally:
        transport.close()
