"""RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``): kombu's own py-amqp transport.

The intake is a consumer bootstep on the durable queue ``indexgate.funnel`` (bound ``#`` to
the durable topic exchange ``funnel.events``); it acks a funnel message only after its
hand-off task was confirmed by the broker (``confirm_publish``). RabbitMQ returns a dead
connection's unacked messages at once, so a killed worker's events come back immediately.

RabbitMQ confirms a message sent to an exchange with no bound queue and then drops it:
``indexgate setup`` declares the queue before any worker runs, and the funnel-side publish
here is ``mandatory``, so an unroutable event is returned as an error instead of vanishing.

``status`` looks at the exchange as well as the queue (two passive declares): a deleted
exchange takes its bindings with it, and a funnel publishing to it loses its events (a
channel error, or nothing at all for a client that does not wait for confirms) while the
queue looks healthy. AMQP 0-9-1 cannot list bindings, so a binding removed by hand from an
existing exchange is not seen (the management API could; ``indexgate setup`` restores it).
"""

from __future__ import annotations

from typing import Any

import amqp.exceptions
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage
from kombu import Exchange
from kombu.exceptions import OperationalError

from indexgate.events.brokers.base import Alert, QueueTransport, alert


class AmqpTransport(QueueTransport):
    kind = "rabbitmq"
    unreachable = (OperationalError, OSError, amqp.exceptions.ConnectionError,
                   amqp.exceptions.RecoverableConnectionError)

    def transport_options(self) -> dict[str, Any]:
        """Publisher confirms: a publish returns only once the broker has the message."""
        return {"confirm_publish": True}

    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        self.send(self.settings.funnel_exchange, routing_key, message, declare=[self.intake_queue()],
                  mandatory=True)

    def status(self) -> dict[str, Any]:
        report = super().status()
        name = self.settings.funnel_exchange
        declared = self.exchange_declared(name)
        report["exchange"] = {"name": name, "declared": declared}
        if not declared:
            report["alerts"].append(alert(Alert.NOT_DECLARED, name, 0, (
                f"exchange {name} does not exist: events the funnel publishes to it are refused or lost, "
                f"and nothing reaches queue {self.settings.intake_queue}; run `indexgate setup`")))
        return report

    def exchange_declared(self, name: str) -> bool:
        """A passive declare on a channel of its own: a missing exchange closes that channel only."""
        conn = self.kombu
        with self.reaching(f"looking at exchange {name}"):
            channel = conn.channel()
            try:
                Exchange(name, type="topic", channel=channel).declare(passive=True)
            except conn.channel_errors:
                return False
            finally:
                try:
                    channel.close()
                except conn.channel_errors + conn.connection_errors:
                    pass
        return True

    def delivery_note(self) -> str:
        return ("intake: consumer bootstep on queue " + self.settings.intake_queue
                + ", each message acked after its hand-off task was confirmed (confirm_publish)")
