"""kombu producers: the funnel-side publisher (``indexgate publish``) and outgoing events.

Messages are built with the SDK's RabbitMQ binding (``to_structured`` / ``to_binary``) and
published persistent to a durable topic exchange with the event type as routing key. On
RabbitMQ any AMQP 0-9-1 client can publish the same way; kombu's Redis and filesystem
transports only understand kombu's own envelope, so funnel integrators on Redis must use
kombu (or this module).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Sequence

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kombu import Connection, Exchange, Queue
from kombu.pools import producers

from events.fs_transport import TRANSPORT
from events.outgoing import to_cloudevent
from indexgate.clock import utcnow
from indexgate.settings import Settings
from schemas.records import AuditEntry, new_id

Mode = Literal["structured", "binary"]
_FORMAT = JSONFormat()


def broker_connection(settings: Settings) -> Connection:
    """A kombu connection to the configured broker (not yet connected)."""
    settings.ensure_data_dirs()
    if settings.broker_url:
        return Connection(settings.broker_url)
    return Connection("filesystem://", transport=TRANSPORT, transport_options=settings.filesystem_broker_options())


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


class Publisher:
    """Publishes CloudEvents to a topic exchange; one lazily opened connection per process."""

    def __init__(self, settings: Settings, connection: Connection | None = None) -> None:
        self.settings = settings
        self._connection = connection

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
        """What the funnel does: one event on ``funnel.events``, routing key = type."""
        self.send(self.settings.funnel_exchange, event.get_type(), encode(event, mode),
                  declare=[intake_queue(self.settings)])

    def publish_entries(self, entries: Sequence[AuditEntry]) -> None:
        """Announce transitions on ``indexgate.events`` (structured mode)."""
        for entry in entries:
            event = to_cloudevent(entry, self.settings.event_source)
            self.send(self.settings.out_exchange, event.get_type(), encode(event))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None
