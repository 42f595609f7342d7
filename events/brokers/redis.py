"""Redis (``redis://``, ``rediss://``): the intake stream, both doors, and kombu patched.

The worker reads the funnel's events from a stream with a consumer group
(``redis_stream``), in a pump thread (``IntakeMode.PUMP``); the pool task that applied an
entry acks it. Events enter the stream by ``XADD`` or by a kombu publish to the topic
exchange ``funnel.events``, which the pump moves from kombu's list into the stream
atomically. Celery's own task messages use kombu's Redis transport with the restart-crash
workaround of ``redis_kombu``, under its alias (the app's URL stays ``redis://``).
"""

from __future__ import annotations

from typing import Any, Sequence

import redis
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage
from kombu.exceptions import OperationalError

from indexgate.events.brokers import redis_stream
from indexgate.events.brokers.base import Alert, Backlog, IntakeMode, IntakeTransport, alert
from indexgate.events.brokers.redis_kombu import ALIASES


class RedisTransport(IntakeTransport):
    kind = "redis"
    mode = IntakeMode.PUMP
    unreachable = (OperationalError, OSError, redis.ConnectionError, redis.TimeoutError)

    def __init__(self, settings, connection=None) -> None:
        super().__init__(settings, connection)
        self._redis: redis.Redis | None = None

    @property
    def kombu_alias(self) -> str:  # type: ignore[override]
        return ALIASES["rediss" if self.url.startswith("rediss") else "redis"]

    def transport_options(self) -> dict[str, Any]:
        """A crashed worker's unacked task messages come back after the visibility timeout."""
        return {"visibility_timeout": self.settings.redis_visibility_timeout_s}

    def client(self) -> redis.Redis:
        """A new redis-py client for this broker; the caller owns it (one per thread)."""
        return redis_stream.client(self.url)

    @property
    def redis(self) -> redis.Redis:
        """This transport's own client (publishing, acks, status), created on first use."""
        if self._redis is None:
            self._redis = self.client()
        return self._redis

    def group(self, consumer: str, conn: redis.Redis | None = None) -> redis_stream.StreamGroup:
        return redis_stream.StreamGroup(conn or self.redis, self.settings, consumer)

    def declare(self) -> list[str]:
        with self.reaching("declaring the intake stream"):
            self.group("indexgate-setup").ensure()
        stream = redis_stream.stream_key(self.settings)
        return [f"stream {stream} with consumer group {self.settings.intake_group} (reads from the start)",
                f"kombu binding exchange {self.settings.funnel_exchange} -> list {self.settings.intake_queue} ('#'),"
                " moved into the stream by the workers"]

    def stream_reader(self, consumer: str) -> redis_stream.StreamGroup:
        """A group over a client of its own: the pump thread reconnects by building another."""
        return self.group(consumer, self.client())

    def acks(self, consumer: str | None) -> redis_stream.StreamGroup | None:
        return None if consumer is None else self.group(consumer)

    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        with self.reaching("adding to the intake stream"):
            redis_stream.publish(self.redis, self.settings, redis_stream.fields_of(message, routing_key))

    def delivery_note(self) -> str:
        return (f"intake: Redis stream {redis_stream.stream_key(self.settings)} read by consumer group "
                f"{self.settings.intake_group} (kombu publishes moved in atomically), each entry acked by the task "
                f"after its commit, claimed again after intake_claim_idle_s={self.settings.intake_claim_idle_s}")

    def status(self) -> dict[str, Any]:
        with self.reaching("reading the intake stream"):
            group = self.group("indexgate-cli")
            stream, kombu = group.status(), group.kombu_status()
        alerts = []
        live = stream["live_readers"]
        if not live and stream["length"]:
            alerts.append(alert(Alert.NO_READER, stream["stream"], stream["length"],
                                f"{stream['length']} event(s) wait in stream {stream['stream']} and no worker reads it "
                                f"(none ran its intake in the last {redis_stream.READER_LIVE_S:.0f} s)"))
        if not live and kombu["waiting"]:
            alerts.append(alert(Alert.NO_READER, kombu["list"], kombu["waiting"],
                                f"{kombu['waiting']} kombu message(s) wait on list {kombu['list']} and no worker moves "
                                "them into the stream"))
        if not kombu["bound"]:
            alerts.append(alert(Alert.NOT_DECLARED, kombu["exchange"], 0,
                                f"kombu publishes to exchange {kombu['exchange']} are dropped: it has no kombu binding "
                                f"to {kombu['list']} on this Redis; run `indexgate setup`"))
        return {"stream": stream, "kombu": kombu, "alerts": alerts}

    def backlog(self) -> Backlog:
        """Entries still in the stream (acked ones are deleted) plus kombu messages not yet
        moved; the oldest entry's age from its id (the server's clock stamped it)."""
        report = self.status()
        stream, kombu = report["stream"], report["kombu"]
        return Backlog(waiting=int(stream["length"]) + int(kombu["waiting"]), unacked=int(stream["pending"]),
                       oldest_age_s=stream.get("oldest_entry_age_s"), alerts=report["alerts"])

    def waiting(self, queues: Sequence[str]) -> int:
        """Also the intake stream's entries (acked ones are deleted)."""
        with self.reaching("counting the intake stream"):
            return super().waiting(queues) + self.redis.xlen(redis_stream.stream_key(self.settings))

    def teardown(self, queues: Sequence[str], exchanges: Sequence[str]) -> None:
        """kombu's Redis transport keeps each exchange's bindings in sets that deleting a
        queue declared elsewhere leaves behind; every name given is a throwaway one."""
        super().teardown(queues, exchanges)
        bindings = [f"_kombu.{kind}.{name}" for name in exchanges for kind in ("binding", "binding_permanent")]
        lists = [key for name in queues for key in redis_stream.kombu_lists(name)]
        stream = redis_stream.stream_key(self.settings)
        try:
            self.redis.delete(*bindings, *lists, stream, redis_stream.readers_key(self.settings))
        except Exception:
            pass

    def close(self) -> None:
        super().close()
        if self._redis is not None:
            self._redis.close()
            self._redis = None
