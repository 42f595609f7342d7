"""RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``): kombu's own py-amqp transport.

The intake is a consumer bootstep on the durable queue ``indexgate.funnel`` (bound ``#`` to
the durable topic exchange ``funnel.events``); it acks a funnel message only after its
hand-off task was confirmed by the broker (``confirm_publish``). RabbitMQ returns a dead
connection's unacked messages at once, so a killed worker's events come back immediately.

RabbitMQ confirms a message sent to an exchange with no bound queue and then drops it:
``indexgate setup`` declares the queue before any worker runs, and the funnel-side publish
here is ``mandatory``, so an unroutable event is returned as an error instead of vanishing.
"""

from __future__ import annotations

from typing import Any

import amqp.exceptions
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage
from kombu.exceptions import OperationalError

from indexgate.events.brokers.base import QueueTransport


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

    def delivery_note(self) -> str:
        return ("intake: consumer bootstep on queue " + self.settings.intake_queue
                + ", each message acked after its hand-off task was confirmed (confirm_publish)")
