"""Producers: the funnel-side publisher (``indexgate publish``) and outgoing events.

Messages are built with the SDK's RabbitMQ binding (``to_structured`` / ``to_binary``).
Funnel events go where the worker's intake reads them, which the broker's intake
transport (``events.brokers``) knows: on RabbitMQ and the embedded broker a persistent,
``mandatory`` publish to the durable topic exchange with the event type as routing key
(declaring the intake queue, so nothing published before the first worker is dropped); on
Redis one entry in the intake stream. Outgoing events (``indexgate.events``) always go
through kombu.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Sequence

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kombu import Connection

from indexgate.clock import utcnow
from indexgate.events.brokers import IntakeTransport, transport_for
from indexgate.events.outgoing import to_cloudevent
from indexgate.schemas.records import AuditEntry, new_id
from indexgate.settings import Settings

Mode = Literal["structured", "binary"]
_FORMAT = JSONFormat()


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


class Publisher:
    """Publishes CloudEvents; one lazily opened connection per process (the transport's)."""

    def __init__(self, settings: Settings, connection: Connection | None = None) -> None:
        self.settings = settings
        self.transport: IntakeTransport = transport_for(settings, connection)

    @property
    def connection(self) -> Connection:
        return self.transport.kombu

    def publish_funnel(self, event: CloudEvent, mode: Mode = "structured") -> None:
        """What the funnel does: one event where the intake reads it (routing key = type)."""
        self.publish_raw(event.get_type(), encode(event, mode))

    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        """Any message, CloudEvent or not, where the intake reads (tests, chaos)."""
        self.transport.publish_raw(routing_key, message)

    def publish_entries(self, entries: Sequence[AuditEntry]) -> None:
        """Announce transitions on ``indexgate.events`` (structured mode)."""
        for entry in entries:
            event = to_cloudevent(entry, self.settings.event_source)
            self.transport.send(self.settings.out_exchange, event.get_type(), encode(event))

    def close(self) -> None:
        self.transport.close()
