"""How a funnel we did not write publishes to indexgate: one recipe per broker and client.

Nothing here imports indexgate. The README's "Funnel integration" section shows these
functions verbatim (``test_readme.py`` checks it), and the interop tests publish with
exactly them. A message is the AMQP 0-9-1 binding's ``(body, content_type, headers)``:
built by hand (``structured`` / ``binary``) or by the CloudEvents SDK (``sdk_message``).
"""

from __future__ import annotations

import json
from datetime import datetime


def structured(event: dict) -> tuple[bytes, str, dict]:
    """Structured mode: the whole event is the body."""
    return json.dumps(event).encode(), "application/cloudevents+json", {}


def binary(event: dict) -> tuple[bytes, str, dict]:
    """Binary mode: attributes as ``ce-`` headers, data as the body."""
    headers = {f"ce-{name}": value for name, value in event.items() if name != "data"}
    return json.dumps(event["data"]).encode(), "application/json", headers


def sdk_message(event: dict, mode: str) -> tuple[bytes, str, dict]:
    """The CloudEvents SDK's own RabbitMQ (AMQP 0-9-1) binding, either mode."""
    from cloudevents.core.bindings.rabbitmq import to_binary, to_structured
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    attributes = {"datacontenttype": "application/json"}  # binary mode's content_type (kombu needs one)
    attributes |= {name: value for name, value in event.items() if name != "data"}
    if isinstance(attributes.get("time"), str):  # the SDK wants a datetime
        attributes["time"] = datetime.fromisoformat(attributes["time"])
    encode = to_binary if mode == "binary" else to_structured
    message = encode(CloudEvent(attributes, event["data"]), JSONFormat())
    return message.body, message.content_type, message.headers


def kombu_publish(url: str, routing_key: str, body: bytes, content_type: str, headers: dict,
                  exchange: str = "funnel.events") -> None:
    """kombu, on Redis or RabbitMQ: the durable topic exchange, persistent, confirmed,
    mandatory (RabbitMQ returns an unroutable message instead of dropping it)."""
    from kombu import Connection, Exchange

    funnel = Exchange(exchange, type="topic", durable=True)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(body, exchange=funnel, routing_key=routing_key, declare=[funnel],
                                content_type=content_type, content_encoding="utf-8", headers=headers,
                                delivery_mode=2, mandatory=True)


def redis_xadd(url: str, routing_key: str, body: bytes, content_type: str, headers: dict,
               stream: str = "indexgate.funnel.stream") -> None:
    """redis-py, on Redis: one stream entry per event, every header a field."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.xadd(stream, {"body": body, "content-type": content_type, "routing-key": routing_key, **headers})
    finally:
        client.close()


def pika_publish(url: str, routing_key: str, body: bytes, content_type: str, headers: dict,
                 exchange: str = "funnel.events") -> None:
    """pika, on RabbitMQ: publisher confirms, mandatory, persistent; header values may be
    AMQP-typed (a ``datetime`` is sent as an AMQP timestamp, ints and bools typed)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # an unroutable message raises pika.exceptions.UnroutableError
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        properties = pika.BasicProperties(content_type=content_type, headers=headers, delivery_mode=2)
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()
