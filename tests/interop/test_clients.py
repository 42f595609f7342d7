"""Clients we did not write, each on the broker it fits, judged by the ``indexgate`` CLI.

Every publisher is a recipe from ``recipes.py`` (plain kombu, redis-py ``XADD``, pika,
and the CloudEvents SDK's own binding sent through those), against a real worker process
on the real broker; a good event must end as a lock that ``indexgate check`` denies, a bad
one as a dead letter whose reason names the real fault.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.interop import recipes
from tests.interop.conftest import SOURCE, Stack, assert_locked, new_job, started

pytestmark = pytest.mark.slow

MODES = {"structured": recipes.structured, "binary": recipes.binary,
         "sdk-structured": lambda event: recipes.sdk_message(event, "structured"),
         "sdk-binary": lambda event: recipes.sdk_message(event, "binary")}


def kombu(stack: Stack, event: dict, message) -> None:
    recipes.kombu_publish(stack.url, event["type"], *message, exchange=stack.exchange)


def xadd(stack: Stack, event: dict, message) -> None:
    recipes.redis_xadd(stack.url, event["type"], *message, stream=stack.stream)


def pika(stack: Stack, event: dict, message) -> None:
    recipes.pika_publish(stack.pika_url, event["type"], *message, exchange=stack.exchange)


# --- each client on each broker it fits: Redis (the kombu door, XADD), RabbitMQ (kombu, pika)


PAIRS = [("redis", kombu), ("redis", xadd), ("rabbitmq", kombu), ("rabbitmq", pika)]
PAIR_IDS = ["redis-kombu", "redis-xadd", "rabbitmq-kombu", "rabbitmq-pika"]


def stack_on(request: pytest.FixtureRequest, broker: str) -> Stack:
    return request.getfixturevalue("redis_stack" if broker == "redis" else "rabbit_stack")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("broker, client", PAIRS, ids=PAIR_IDS)
def test_clients_lock(request: pytest.FixtureRequest, broker: str, client, mode: str) -> None:
    stack = stack_on(request, broker)
    job, branch = new_job(f"{broker}-{client.__name__}-{mode}")
    event = started(job, branch)
    client(stack, event, MODES[mode](event))
    assert_locked(stack, branch, job)


SKEW_S = 150  # the funnel's clock in the typed-header tests: this far behind ours


def typed_event(job: str, branch: str, **attributes) -> tuple[dict, datetime]:
    """A ``started`` whose ``time`` is a naive datetime (an AMQP timestamp once sent: UTC by
    the spec, whole seconds) ``SKEW_S`` behind now, with int, bool and bytes extensions."""
    sent_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0) - timedelta(seconds=SKEW_S)
    return started(job, branch, time=sent_at, attempt=3, retried=True, tenant=b"acme", **attributes), sent_at


@pytest.mark.parametrize("client", [kombu, pika], ids=["kombu", "pika"])
def test_amqp_timestamp_time_and_typed_extension_headers_lock(rabbit_stack: Stack, client) -> None:
    """``ce-time`` as an AMQP timestamp, integer and boolean extension attributes, a bytes
    header: what AMQP clients such as pika send natively. The time is read as UTC: the lock
    records the funnel's clock as about ``SKEW_S`` behind (minus the transit), where a local
    reading in the worker's UTC+05:30 would be hours off (beyond the bound) and a time
    ignored would be about 0."""
    job, branch = new_job(f"rmq-typed-{client.__name__}")
    event, _sent_at = typed_event(job, branch)
    client(rabbit_stack, event, recipes.binary(event))
    assert_locked(rabbit_stack, branch, job)
    audit = rabbit_stack.cli_json("audit", "--branch", branch)
    assert [entry["kind"] for entry in audit] == ["acquired"], audit
    lock = rabbit_stack.cli_json("locks", "show", rabbit_stack.wait_lock(branch, job)["lock_id"])
    assert -SKEW_S - 30 < lock["clock_skew_s"] <= -SKEW_S and not lock["clock_skew_beyond_bound"], lock


@pytest.mark.parametrize("client", [kombu, pika], ids=["kombu", "pika"])
def test_amqp_typed_headers_are_kept_in_their_cloudevents_forms(rabbit_stack: Stack, client) -> None:
    """The same typed headers on an event that is refused (an unknown type), so the dead
    letter shows each header as decoded: the timestamp as its RFC 3339 UTC instant, the int
    and bool in their CloudEvents string forms, the bytes as text."""
    job, branch = new_job(f"rmq-kept-{client.__name__}")
    event, sent_at = typed_event(job, branch, type="com.oms.indexing.exploded")
    client(rabbit_stack, event, recipes.binary(event))
    letter = rabbit_stack.wait_dead_letter(f"{job}-start")
    assert "unknown event type 'com.oms.indexing.exploded'" in letter["reason"], letter
    kept = letter["headers"]
    assert kept["ce-time"] == sent_at.isoformat() + "Z", kept
    assert (kept["ce-attempt"], kept["ce-retried"], kept["ce-tenant"]) == ("3", "true", "acme"), kept


def test_kombu_on_redis_with_typed_headers_locks(redis_stack: Stack) -> None:
    """kombu's envelope carries a ``datetime`` (kombu's tagged JSON), ints and bools; the
    naive time is read as UTC (the recorded skew), as on RabbitMQ."""
    job, branch = new_job("redis-kombu-typed")
    event, _sent_at = typed_event(job, branch)
    body, content_type, headers = recipes.binary(event)
    recipes.kombu_publish(redis_stack.url, event["type"], body, content_type, headers, exchange=redis_stack.exchange)
    assert_locked(redis_stack, branch, job)
    lock = redis_stack.cli_json("locks", "show", redis_stack.wait_lock(branch, job)["lock_id"])
    assert -SKEW_S - 30 < lock["clock_skew_s"] <= -SKEW_S and not lock["clock_skew_beyond_bound"], lock


# --- bad input from foreign clients: a dead letter with the real reason --------------------


def broken_json(job: str) -> tuple[bytes, str, dict]:
    headers = {"ce-specversion": "1.0", "ce-id": f"{job}-broken", "ce-source": SOURCE,
               "ce-type": "com.oms.indexing.started"}
    return b'{"job_id": "' + job.encode() + b'", "branch": ', "application/json", headers


@pytest.mark.parametrize("broker, client", PAIRS, ids=PAIR_IDS)
def test_binary_data_that_is_not_json_is_dead_lettered_as_such(request: pytest.FixtureRequest, broker: str,
                                                               client) -> None:
    stack = stack_on(request, broker)
    job, _branch = new_job(f"{broker}-broken-{client.__name__}")
    client(stack, {"type": "com.oms.indexing.started"}, broken_json(job))
    letter = stack.wait_dead_letter(f"{job}-broken")
    assert letter["reason"].startswith("data is not valid JSON"), letter


def test_unknown_type_from_kombu_is_dead_lettered_naming_the_type(redis_stack: Stack) -> None:
    job, branch = new_job("redis-unknown")
    event = started(job, branch, type="com.oms.indexing.exploded")
    recipes.kombu_publish(redis_stack.url, event["type"], *recipes.structured(event), exchange=redis_stack.exchange)
    letter = redis_stack.wait_dead_letter(f"{job}-start")
    assert "unknown event type 'com.oms.indexing.exploded'" in letter["reason"], letter


def test_too_many_headers_from_pika_are_dead_lettered_naming_the_limit(rabbit_stack: Stack) -> None:
    job, branch = new_job("rmq-headers")
    event = started(job, branch)
    body, content_type, headers = recipes.binary(event)
    headers |= {f"x-noise-{n}": n for n in range(150)}
    recipes.pika_publish(rabbit_stack.pika_url, event["type"], body, content_type, headers, exchange=rabbit_stack.exchange)
    letter = rabbit_stack.wait_dead_letter(f"{job}-start")
    assert letter["reason"] == f"message has {len(headers)} headers, over the limit of 100 (INDEXGATE_MAX_HEADERS)"
    assert len(letter["headers"]) <= 101, "a dead letter keeps a bounded number of headers"


def test_an_entry_pushed_on_the_kombu_list_by_hand_is_dead_lettered_not_lost(redis_stack: Stack) -> None:
    """A client bypassing kombu (``LPUSH`` of a bare event) reaches the dead letters with why."""
    import redis

    job, branch = new_job("redis-lpush")
    client = redis.Redis.from_url(redis_stack.url)
    try:
        client.lpush(redis_stack.queue, json.dumps(started(job, branch)))
    finally:
        client.close()
    letter = redis_stack.wait_dead_letter(f"{job}-start")
    assert letter["reason"].startswith("not a kombu message"), letter
