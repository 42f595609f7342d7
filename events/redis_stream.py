"""The funnel's events on a Redis broker travel in a Redis stream, not a kombu list.

Why: kombu's Redis transport takes a message off its list with ``BRPOP`` and records it as
unacked with a second command. If Redis dies between the two, the message is gone: the
chaos suite lost about 1 event in 1,000 per Redis restart that way. A stream read by a
consumer group has no such gap: ``XREADGROUP`` hands an entry out *and* puts it in the
group's pending list in one command, and the entry stays pending until somebody ``XACK``s
it. indexgate acks an entry only after its effect (or its dead letter) is committed, in
the pool task that applied it, so a lost hand-off task, a killed worker or a Redis restart
all end the same way: the entry is still pending and is handed off again (duplicates are
caught by the event inbox).

Wire format, one stream entry per CloudEvent (``XADD <intake_queue>.stream * ...``):

- ``body``: the message body (structured mode: the whole JSON CloudEvent; binary mode: data);
- ``content-type``: e.g. ``application/cloudevents+json``;
- ``routing-key``: optional, the event type (kept in dead letters for operators);
- every other field is a message header, e.g. ``ce-id``, ``ce-source`` (binary mode).

Any Redis client can publish that; no kombu envelope is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import redis
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

from indexgate.events.decode import RawMessage
from indexgate.settings import Settings

BODY, CONTENT_TYPE, ROUTING_KEY = "body", "content-type", "routing-key"


def uses_stream(settings: Settings) -> bool:
    """True when the funnel's events travel in a Redis stream (a ``redis://`` broker)."""
    return settings.resolved_broker_url.startswith(("redis://", "rediss://"))


def stream_key(settings: Settings) -> str:
    return f"{settings.intake_queue}.stream"


def client(settings: Settings) -> redis.Redis:
    """A client for the broker's Redis; the caller owns it (one per process or thread)."""
    return redis.Redis.from_url(settings.resolved_broker_url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def fields_of(message: RabbitMQMessage, routing_key: str | None = None) -> dict[str, bytes | str]:
    """A CloudEvents message (either mode) as the fields of one stream entry."""
    fields: dict[str, bytes | str] = {str(k): str(v) for k, v in message.headers.items()}
    fields[BODY] = message.body
    if message.content_type:
        fields[CONTENT_TYPE] = message.content_type
    if routing_key:
        fields[ROUTING_KEY] = routing_key
    return fields


def raw_of(fields: Mapping[bytes, bytes]) -> RawMessage:
    """A stream entry as the raw message the intake decodes; an entry without ``body`` is
    kept as an empty body, so it is dead-lettered with its headers, not dropped."""
    text = {k.decode("utf-8", "replace"): v for k, v in fields.items()}
    body = text.pop(BODY, b"")
    content_type = text.pop(CONTENT_TYPE, None)
    routing_key = text.pop(ROUTING_KEY, None)
    return RawMessage.build(
        text, content_type.decode("utf-8", "replace") if content_type else None, body,
        routing_key.decode("utf-8", "replace") if routing_key else None,
    )


def publish(conn: redis.Redis, settings: Settings, fields: Mapping[str, bytes | str]) -> str:
    """``XADD``; returns the entry id. With ``appendfsync always`` the entry is on disk
    when this returns."""
    return conn.xadd(stream_key(settings), dict(fields)).decode()


@dataclass(frozen=True)
class Entry:
    ref: str  # the stream entry id, acked once the effect is committed
    raw: RawMessage


class StreamGroup:
    """The few verbs the intake needs, each one Redis command (or one MULTI/EXEC)."""

    def __init__(self, conn: redis.Redis, settings: Settings, consumer: str) -> None:
        self.conn = conn
        self.key = stream_key(settings)
        self.group = settings.intake_group
        self.consumer = consumer

    def ensure(self) -> None:
        """Create the stream and the group from the start (``$`` would skip events that
        were published before the first worker ever ran)."""
        try:
            self.conn.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """Entries nobody has read yet (``>``), waiting up to ``block_ms`` for one (``None``:
        not at all)."""
        return _entries(self.conn.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=count, block=block_ms))

    def read_own(self, after: str, count: int) -> list[Entry]:
        """This consumer's own pending entries after id ``after`` (``0`` = all), e.g. the
        ones it had read before a restart."""
        return _entries(self.conn.xreadgroup(self.group, self.consumer, {self.key: after}, count=count))

    def claim_idle(self, min_idle_ms: int, count: int, cursor: str = "0-0") -> tuple[str, list[Entry]]:
        """Entries pending with anyone for longer than ``min_idle_ms`` (their worker died,
        or their hand-off task was lost); they become this consumer's. Returns the cursor
        to continue from (``0-0`` once the whole pending list was scanned)."""
        following, items, *_deleted = self.conn.xautoclaim(self.key, self.group, self.consumer, min_idle_ms,
                                                            start_id=cursor, count=count)
        return following.decode(), _entries([(self.key, items)])

    def in_flight(self) -> int:
        """Entries handed to this consumer and not yet acked."""
        return next((c["pending"] for c in self.consumers() if c["name"] == self.consumer), 0)

    def consumers(self) -> list[dict]:
        """Each consumer of the group: name, pending entries, ms since it last read."""
        return [{"name": c["name"].decode(), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                for c in self.conn.xinfo_consumers(self.key, self.group)]

    def forget_idle_consumers(self, idle_ms: int) -> list[str]:
        """Drop consumers that hold nothing and have not read for ``idle_ms``: workers that
        are gone (every restart under a new hostname, e.g. a new pod, adds one). A live
        consumer that is dropped anyway comes back with its next read."""
        gone = [c["name"] for c in self.consumers()
                if c["pending"] == 0 and c["idle_ms"] > idle_ms and c["name"] != self.consumer]
        for name in gone:
            self.conn.xgroup_delconsumer(self.key, self.group, name)
        return gone

    def status(self) -> dict:
        """What an operator asks at 3 a.m.: how many events wait, who holds which, and how
        long the oldest unacked one has waited (all zero before any worker or event made the stream)."""
        if not self.conn.exists(self.key):
            return {"stream": self.key, "group": self.group, "length": 0, "pending": 0, "unread": 0,
                    "oldest_pending_idle_s": None, "consumers": []}
        groups = {g["name"].decode(): g for g in self.conn.xinfo_groups(self.key)}
        group = groups.get(self.group, {})
        oldest = self.conn.xpending_range(self.key, self.group, min="-", max="+", count=1) if group else []
        return {
            "stream": self.key, "group": self.group, "length": self.conn.xlen(self.key),
            "pending": int(group.get("pending", 0)), "unread": group.get("lag"),
            "oldest_pending_idle_s": round(oldest[0]["time_since_delivered"] / 1000, 3) if oldest else None,
            "consumers": self.consumers() if group else [],
        }

    def ack(self, refs: list[str]) -> None:
        """Ack and delete in one transaction: the stream keeps only unfinished events."""
        if refs:
            pipe = self.conn.pipeline(transaction=True)
            pipe.xack(self.key, self.group, *refs)
            pipe.xdel(self.key, *refs)
            pipe.execute()

    def touch(self, refs: list[str]) -> None:
        """Reset the idle time of entries still being worked on (a task waiting for the
        store to come back), so they are not claimed and handed off again meanwhile."""
        if refs:
            self.conn.xclaim(self.key, self.group, self.consumer, 0, refs, justid=True)


def _entries(answer) -> list[Entry]:
    """The entries of an ``XREADGROUP`` / ``XAUTOCLAIM`` answer; a deleted entry (no fields)
    is skipped."""
    return [Entry(ref.decode(), raw_of(fields)) for _key, items in answer or [] for ref, fields in items if fields]
