"""kombu's Redis transport, with one upstream crash on a Redis restart worked around.

Celery 5.7 handles a lost broker connection by ``collect()``-ing it (which detaches the
transport from its kombu ``Connection``) and then ``close()``-ing it. Closing the Redis
channel tries to put the channel's unacked messages back on their queues, which needs a
client, which needs the detached ``Connection``: ``AttributeError: 'NoneType' object has no
attribute 'hostname'`` escapes Celery's error handling and the worker exits ("Unrecoverable
error"). The chaos suite saw it on about one Redis restart in ten; ``python -m
bench.chaos.findings redis_restart_crash`` shows it with a plain Celery app.

Here that one restore is skipped when the transport is already detached, with a warning.
Nothing is lost by skipping it: the messages stay in kombu's ``unacked`` hash and are
restored by the next consumer after the visibility timeout, and the funnel's events are
not even among them (they travel in the intake stream, ``events.redis_stream``). Remove
this module when kombu's channel close survives a collected connection.
"""

from __future__ import annotations

import logging

from kombu.transport import redis

log = logging.getLogger(__name__)

TRANSPORT = "events.redis_transport:Transport"


class QoS(redis.QoS):
    def restore_unacked(self, client=None) -> None:
        transport = getattr(self.channel, "connection", None)
        if client is None and getattr(transport, "client", None) is None:
            log.warning("broker connection lost: %d unacked message(s) will be restored after the visibility "
                        "timeout instead of now", len(self._delivered))
            return
        super().restore_unacked(client)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
