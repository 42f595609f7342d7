"""``events.brokers.redis_kombu``: a channel detached by Celery's ``collect()`` after Redis died
is left alone instead of crashing the worker, and its unacked message is kept.

A private ``redis-server`` (AOF on, like the chaos suite's) is killed under a consumer that
holds an unacked message; then the consumer does what Celery 5.7's reconnect path does:
``collect()`` the connection, then ack the finished task's message and ``close()``. The
patched transport skips both without raising; after Redis comes back the message is still
in kombu's ``unacked`` hash, so it is restored after the visibility timeout, not lost.
``python -m bench.chaos.findings redis_restart_crash redis_restart_patched`` runs the
same against whole Celery workers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import redis
from kombu import Connection, Exchange, Queue

from bench.chaos.servers import RedisServer
from indexgate.events.brokers.redis_kombu import TRANSPORT


def test_a_collected_channel_skips_ack_and_restore_and_keeps_the_message(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        conn = Connection(server.url, transport=TRANSPORT)
        name = f"t.{uuid.uuid4().hex[:8]}"
        queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
        with conn.Producer() as producer:
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])
        message = queue(conn.default_channel).get(no_ack=False)
        assert message is not None
        server.sigkill()
        conn.collect(socket_timeout=0.5)  # Celery: on_connection_error_after_connected
        message.ack()  # a task that finished in the pool meanwhile: skipped, no AttributeError
        conn.close()  # restoring the unacked message needs the detached connection: skipped
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.hlen("unacked") == 1  # kept for the visibility-timeout restore
            assert client.llen(name) == 0
        finally:
            client.close()
    finally:
        server.stop()
