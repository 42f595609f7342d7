"""Producers: the funnel-side publisher (``indexgate publish``) and outgoing events.

Messages are built with the SDK's RabbitMQ binding (``to_structured`` / ``to_binary``).
Funnel events go where the worker's intake reads them:

- RabbitMQ and the embedded broker: published persistent to a durable topic exchange with
  the event type as routing key (any AMQP 0-9-1 client can publish the same way);
- Redis: one entry in the intake stream (``events.redis_stream``, any Redis client can
  ``XADD`` it), because kombu's Redis lists can lose a message when Redis restarts.

Outgoing events (``indexgate.events``) always go through kombu.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Sequence

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kombu import Connection, Exchange, Queue
from kombu.pools import producers

from indexgate.events import fs_transport, redis_stream, redis_transport
from indexgate.events.outgoing import to_cloudevent
from indexgate.clock import utcnow
from indexgate.settings import Settings
from indexgate.schemas.records import AuditEntry, new_id

Mode = Literal["structured", "binary"]
_FORMAT = JSONFormat()


def transport_options(settings: Settings) -> dict:
    """Per broker: the embedded broker's folders; Redis's visibility timeout; publisher
    confirms on RabbitMQ, so a publish returns only once the broker has the message."""
    url = settings.resolved_broker_url
    if url.startswith("filesystem"):
        return settings.filesystem_broker_options()
    if url.startswith(("redis", "rediss")):
        return {"visibility_timeout": settings.redis_visibility_timeout_s}
    if url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    return {}


def transport_class(settings: Settings) -> str | None:
    """Our own transport where kombu's needs a fix (see each module), else kombu's."""
    if not settings.broker_url:
        return fs_transport.TRANSPORT
    if redis_stream.uses_stream(settings):
        return redis_transport.TRANSPORT
    return None


def broker_connection(settings: Settings) -> Connection:
    """A kombu connection to the configured broker (not yet connected), with the same
    transport and options as the workers' Celery app."""
    settings.ensure_data_dirs()
    return Connection(settings.resolved_broker_url, transport=transport_class(settings),
                      transport_options=transport_options(settings))


def funnel_event(type_: str, data: dict[str, Any], source: str = "indexgate-cli", event_id: str | None = None,
                 time: datetime | None = None, subject: str | None = None) -> CloudEvent:
    attributes: dict[str, Any] = {
        "id": event_id or new_id(), "source": source, "type": type_, "time": time or utcnow(),
        "datacontenttype": "application/json",
    }
    if subject:
        attributes["subject"] = subject
    return CloudEvent(attributes, data)


def encode(event: CloudEvent, mode: Mode = "structured") -> RabbitMQMessage:
    return to_binary(event, _FORMAT) if mode == "binary" else to_structured(event, _FORMAT)


def intake_queue(settings: Settings) -> Queue:
    """The durable queue bound to the funnel's topic exchange with ``#``, so nothing goes
    unseen (unknown types are dead-lettered, not silently unrouted). Both the worker and
    the funnel-side publisher declare it: an event published before any worker ever ran
    waits in the queue instead of being dropped by an exchange with no binding."""
    exchange = Exchange(settings.funnel_exchange, type="topic", durable=True)
    return Queue(settings.intake_queue, exchange, routing_key="#", durable=True)


def queue_depth(conn: Connection, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of queue ``name``; (0, 0) when nobody declared it yet.
    A passive declare on a channel of its own: a missing queue closes that channel only."""
    try:
        declared = Queue(name, channel=conn.channel()).queue_declare(passive=True)
    except (*conn.channel_errors, *conn.connection_errors):
        return 0, 0
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


class Publisher:
    """Publishes CloudEvents to a topic exchange; one lazily opened connection per process."""

    def __init__(self, settings: Settings, connection: Connection | None = None) -> None:
        self.settings = settings
        self._connection = connection
        self._redis = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = broker_connection(self.settings)
        return self._connection

    def send(self, exchange_name: str, routing_key: str, message: RabbitMQMessage, declare: list | None = None) -> None:
        exchange = Exchange(exchange_name, type="topic", durable=True)
        with producers[self.connection].acquire(block=True, timeout=10) as producer:
            producer.publish(
                message.body,
                exchange=exchange,
                routing_key=routing_key,
                declare=[exchange, *(declare or [])],
                content_type=message.content_type,
                content_encoding="utf-8",
                headers=dict(message.headers),
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )

    def publish_funnel(self, event: CloudEvent, mode: Mode = "structured") -> None:
        """What the funnel does: one event on ``funnel.events`` (routing key = type), or
        one entry in the intake stream on Redis."""
        self.publish_raw(event.get_type(), encode(event, mode))

    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        """Any message, CloudEvent or not, where the intake reads (tests, chaos)."""
        if redis_stream.uses_stream(self.settings):
            if self._redis is None:
                self._redis = redis_stream.client(self.settings)
            redis_stream.publish(self._redis, self.settings, redis_stream.fields_of(message, routing_key))
        else:
            self.send(self.settings.funnel_exchange, routing_key, message, declare=[intake_queue(self.settings)])

    def publish_entries(self, entries: Sequence[AuditEntry]) -> None:
        """Announce transitions on ``indexgate.events`` (structured mode)."""
        for entry in entries:
            event = to_cloudevent(entry, self.settings.event_source)
            self.send(self.settings.out_exchange, event.get_type(), encode(event))

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._connection is not None:
            self._connection.release()
            self._connection = None
