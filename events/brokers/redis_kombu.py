"""kombu's Redis transport, with an upstream crash on a Redis restart worked around.

Celery 5.7 handles a lost broker connection by ``collect()``-ing it (which detaches the
transport from its kombu ``Connection`` and the channel from its transport) and then
``close()``-ing it. Two things can still touch the detached Redis channel afterwards:
closing it tries to put its unacked messages back on their queues, and a task that
finishes in the pool acks its message on it. Both need a client, which needs the detached
``Connection``: ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (or
``'client'``) escapes Celery's error handling and the worker exits ("Unrecoverable
error"). The chaos suite saw it on about one Redis restart in ten; ``python -m
bench.chaos.findings redis_restart_crash`` shows it with a plain Celery app.

Here the channel's QoS skips those calls while the channel is detached, with a warning.
Nothing is lost by skipping them: the messages stay in kombu's ``unacked`` hash and are
restored by a consumer after the visibility timeout (a finished task's message then runs
again - harmless, tasks are idempotent), and the funnel's events are not even among them
(they are applied from the intake stream, ``redis_stream``). The Celery app names this
transport by the alias ``indexgate-redis`` (``indexgate-rediss``), shown as ``redis://``
(``rediss://``): see ``kombu_alias``. Remove this module when kombu's Redis channel
survives a collected connection.
"""

from __future__ import annotations

import logging

from kombu.transport import redis

from indexgate.events.brokers.kombu_alias import register_alias

log = logging.getLogger(__name__)

TRANSPORT = "indexgate.events.brokers.redis_kombu:Transport"
ALIASES = {"redis": register_alias("indexgate-redis", TRANSPORT, shown_as="redis"),
           "rediss": register_alias("indexgate-rediss", TRANSPORT, shown_as="rediss")}


class QoS(redis.QoS):
    def _detached(self, what: str) -> bool:
        transport = getattr(self.channel, "connection", None)
        if getattr(transport, "client", None) is not None:
            return False
        log.warning("broker connection lost: %s skipped; the message(s) come back after the visibility timeout", what)
        return True

    def restore_unacked(self, client=None) -> None:
        if client is None and self._detached(f"restoring {len(self._delivered)} unacked message(s)"):
            return
        super().restore_unacked(client)

    def ack(self, delivery_tag) -> None:
        if not self._detached("an ack on the old connection"):
            super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue: bool = False) -> None:
        if not self._detached("a reject on the old connection"):
            super().reject(delivery_tag, requeue=requeue)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
