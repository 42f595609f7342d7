"""A funnel that publishes the way kombu and Celery users do, for the kombu-door chaos rows.

Plain kombu - no indexgate code on the publishing side: a persistent publish to the durable
topic exchange ``funnel.events`` (the run's name for it), routing key = event type, the
message built by the CloudEvents SDK's own RabbitMQ binding, structured and binary mode
alternately. On Redis it lands on kombu's list through the binding the workers (and
``indexgate setup``) declare, and the workers' pumps move it into the intake stream.
"""

from __future__ import annotations

from collections import Counter

from cloudevents.core.bindings.rabbitmq import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kombu import Connection, Exchange


class KombuFunnel:
    """``publish_funnel`` / ``close``: what ``stream.JobStream`` needs of a publisher."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.modes: Counter = Counter()
        self._conn: Connection | None = None

    def publish_funnel(self, event: CloudEvent) -> None:
        mode = "binary" if sum(self.modes.values()) % 2 else "structured"
        message = (to_binary if mode == "binary" else to_structured)(event, JSONFormat())
        if self._conn is None:
            self._conn = Connection(self.url, connect_timeout=5)
        with self._conn.Producer() as producer:
            producer.publish(message.body, exchange=self.exchange, routing_key=event.get_type(),
                             declare=[self.exchange], content_type=message.content_type,
                             content_encoding="utf-8", headers=dict(message.headers), delivery_mode=2)
        self.modes[mode] += 1

    def describe(self) -> str:
        return (f"funnel: plain kombu to topic exchange {self.exchange.name} on Redis, "
                f"{self.modes['structured']} structured + {self.modes['binary']} binary (CloudEvents SDK binding)")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                pass
            self._conn = None
