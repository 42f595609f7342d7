"""On Redis the funnel's events are applied from a Redis stream read by a consumer group.

Why not kombu's list: kombu's Redis transport takes a message off its list with ``BRPOP``
and records it as unacked with a second command. If Redis dies between the two, the
message is gone: the chaos suite lost about 1 event in 1,000 per Redis restart that way. A
stream read by a consumer group has no such gap: ``XREADGROUP`` hands an entry out *and*
puts it in the group's pending list in one command, and the entry stays pending until
somebody ``XACK``s it. indexgate acks an entry only after its effect (or its dead letter)
is committed, in the pool task that applied it, so a lost hand-off task, a killed worker
or a Redis restart all end the same way: the entry is still pending and is handed off
again (duplicates are caught by the event inbox).

Two doors lead into the stream:

- ``XADD <intake_queue>.stream * ...`` (any Redis client), one entry per CloudEvent:
  ``body`` (structured mode: the whole JSON CloudEvent; binary mode: data),
  ``content-type``, optional ``routing-key`` (the event type), and every other field is a
  message header (``ce-id``, ``ce-source``... in binary mode);
- a kombu publish to the topic exchange ``funnel.events`` (what kombu and Celery users
  do). kombu's Redis emulation routes it through the binding table
  ``_kombu.binding.funnel.events`` - which ``StreamGroup.ensure`` (``indexgate setup``,
  every worker) fills with kombu's own member format - onto the list ``<intake_queue>``
  (and its priority sub-lists). The worker's pump moves each such message into the stream
  with ``MOVE_KOMBU``, one Lua script: pop + ``XADD`` run atomically and reach the AOF as
  one unit, so a message is on the list or in the stream, never neither; the entry keeps
  kombu's envelope in its ``kombu`` field, unwrapped when read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping

import redis
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.exchange import TopicExchange
from kombu.utils import json as kombu_json

from indexgate.events.decode import RawMessage
from indexgate.settings import Settings

BODY, CONTENT_TYPE, ROUTING_KEY, KOMBU = "body", "content-type", "routing-key", "kombu"
READER_LIVE_S = 10.0  # a reader (worker pump) that moved/beat within this is alive

# KEYS[1] the intake stream, KEYS[2] the readers' last-beat sorted set, KEYS[3..] kombu's
# lists in kombu's own pop order; ARGV[1] most messages to move, ARGV[2] the reader's name.
# The server's clock stamps the beat, so `intake status` compares times of one clock.
MOVE_KOMBU = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], ms, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms - 86400000)
local moved = 0
local limit = tonumber(ARGV[1])
for i = 3, #KEYS do
  while moved < limit do
    local message = redis.call('RPOP', KEYS[i])
    if not message then break end
    redis.call('XADD', KEYS[1], '*', 'kombu', message)
    moved = moved + 1
  end
end
return moved
"""


def stream_key(settings: Settings) -> str:
    return f"{settings.intake_queue}.stream"


def readers_key(settings: Settings) -> str:
    return f"{stream_key(settings)}.readers"


def kombu_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps queue ``queue`` in, in the order kombu pops them
    (its default ``priority_steps``; priority 0-2 lands on the plain list)."""
    sep = kombu_redis.Channel.sep
    return [f"{queue}{sep}{step}" if step else queue for step in kombu_redis.PRIORITY_STEPS]


def kombu_binding(settings: Settings) -> tuple[str, str, str]:
    """kombu's Redis emulation of the binding ``funnel.events --#--> intake queue``: the
    binding table's key, the key of its set of permanent bindings (kombu never sweeps a
    table listed there), and the member - built with kombu's own constants and topic
    exchange, so kombu publishers route by it exactly as if a kombu consumer had bound."""
    channel = kombu_redis.Channel
    routing_key, pattern, queue = TopicExchange(None).prepare_bind(
        settings.intake_queue, settings.funnel_exchange, "#", None)
    member = channel.sep.join([routing_key or "", pattern or "", queue or ""])
    return (channel.keyprefix_queue % settings.funnel_exchange,
            channel.keyprefix_binding_permanent % settings.funnel_exchange, member)


def client(url: str) -> redis.Redis:
    """A client for the broker's Redis; the caller owns it (one per process or thread)."""
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


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
    """A stream entry as the raw message the intake decodes: a moved kombu message is
    unwrapped; an entry without ``body`` is kept as an empty body, so it is dead-lettered
    with its headers, not dropped."""
    text = {k.decode("utf-8", "replace"): v for k, v in fields.items()}
    if KOMBU in text:
        return unwrap_kombu(text[KOMBU])
    body = text.pop(BODY, b"")
    content_type = text.pop(CONTENT_TYPE, None)
    routing_key = text.pop(ROUTING_KEY, None)
    return RawMessage.build(
        text, content_type.decode("utf-8", "replace") if content_type else None, body,
        routing_key.decode("utf-8", "replace") if routing_key else None,
    )


def unwrap_kombu(payload: bytes) -> RawMessage:
    """The message a kombu envelope carries (``{"body", "content-type", "headers",
    "properties": {"body_encoding", "delivery_info": {"routing_key"}}}``, kombu's JSON, so
    its tagged datetimes come back as datetimes). Anything else on that list - pushed there
    by hand - is kept whole with the reason it cannot be read."""
    try:
        envelope = kombu_json.loads(payload)
    except ValueError as exc:
        return RawMessage.build({}, None, payload, fault=f"not a kombu message: the list entry is not JSON ({exc})")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), (str, bytes)):
        return RawMessage.build({}, None, payload, fault="not a kombu message: no envelope with a body; publish "
                                "with kombu to the funnel exchange, or XADD the event to the intake stream")
    props = envelope.get("properties") if isinstance(envelope.get("properties"), dict) else {}
    headers = envelope.get("headers") if isinstance(envelope.get("headers"), dict) else {}
    body: bytes | str = envelope["body"]
    if props.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return RawMessage.build(headers, envelope.get("content-type"), payload,
                                    fault="kombu message body is marked base64 but does not decode")
    delivery = props.get("delivery_info") if isinstance(props.get("delivery_info"), dict) else {}
    return RawMessage.build(headers, envelope.get("content-type"), body, delivery.get("routing_key"))


def publish(conn: redis.Redis, settings: Settings, fields: Mapping[str, bytes | str]) -> str:
    """``XADD``; returns the entry id. With ``appendfsync always`` the entry is on disk
    when this returns."""
    return conn.xadd(stream_key(settings), dict(fields)).decode()


@dataclass(frozen=True)
class Entry:
    ref: str  # the stream entry id, acked once the effect is committed
    raw: RawMessage


class StreamGroup:
    """The few verbs the intake needs, each one Redis command (or one MULTI/EXEC, or one
    script)."""

    def __init__(self, conn: redis.Redis, settings: Settings, consumer: str) -> None:
        self.conn = conn
        self.settings = settings
        self.key = stream_key(settings)
        self.group = settings.intake_group
        self.consumer = consumer
        self._move = conn.register_script(MOVE_KOMBU)

    def ensure(self) -> None:
        """Create the stream and the group from the start (``$`` would skip events that
        were published before the first worker ever ran), and bind the intake's kombu list
        to the funnel exchange. Idempotent: ``indexgate setup`` and every worker do it."""
        try:
            self.conn.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError:
            if not self._group_exists():  # BUSYGROUP (redis-py has no type for it): fine
                raise
        table, permanent, member = kombu_binding(self.settings)
        pipe = self.conn.pipeline(transaction=True)
        pipe.sadd(table, member)
        pipe.sadd(permanent, member)
        pipe.execute()

    def _group_exists(self) -> bool:
        return self.conn.exists(self.key) and any(
            g["name"].decode() == self.group for g in self.conn.xinfo_groups(self.key))

    def move_kombu(self, limit: int) -> int:
        """Move up to ``limit`` kombu messages from the intake's lists into the stream (one
        atomic script) and mark this reader alive; how many moved."""
        keys = [self.key, readers_key(self.settings), *kombu_lists(self.settings.intake_queue)]
        return int(self._move(keys=keys, args=[limit, self.consumer]))

    def tasks_waiting(self) -> int:
        """Hand-off tasks waiting in Celery's task queue (a kombu list on this Redis)."""
        return int(self.conn.llen(self.settings.task_queue))

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

    def live_readers(self) -> list[str]:
        """Workers whose pump ran within ``READER_LIVE_S`` (by the server's clock)."""
        seconds, micros = self.conn.time()
        since_ms = seconds * 1000 + micros // 1000 - int(READER_LIVE_S * 1000)
        return sorted(name.decode() for name in self.conn.zrangebyscore(readers_key(self.settings), since_ms, "+inf"))

    def status(self) -> dict[str, Any]:
        """What an operator asks at 3 a.m.: how many events wait, who holds which, how long
        the oldest unacked one has waited, and which workers read at all."""
        live = self.live_readers()
        if not self.conn.exists(self.key):
            return {"stream": self.key, "group": self.group, "length": 0, "pending": 0, "unread": 0,
                    "oldest_pending_idle_s": None, "consumers": [], "live_readers": live}
        length = self.conn.xlen(self.key)
        groups = {g["name"].decode(): g for g in self.conn.xinfo_groups(self.key)}
        group = groups.get(self.group, {})
        oldest = self.conn.xpending_range(self.key, self.group, min="-", max="+", count=1) if group else []
        return {
            "stream": self.key, "group": self.group, "length": length,
            "pending": int(group.get("pending", 0)), "unread": group.get("lag") if group else length,
            "oldest_pending_idle_s": round(oldest[0]["time_since_delivered"] / 1000, 3) if oldest else None,
            "oldest_entry_age_s": self._oldest_entry_age_s(),
            "consumers": self.consumers() if group else [], "live_readers": live,
        }

    def _oldest_entry_age_s(self) -> float | None:
        """How long ago the oldest entry still in the stream (not yet applied: applied ones are
        deleted) was added: its id is the server's clock in ms at ``XADD``."""
        first = self.conn.xrange(self.key, count=1)
        if not first:
            return None
        seconds, micros = self.conn.time()
        added_ms = int(first[0][0].decode().split("-")[0])
        return round(max(0.0, seconds + micros / 1e6 - added_ms / 1000), 3)

    def kombu_status(self) -> dict[str, Any]:
        """The kombu door: messages on the intake's lists not yet moved, and whether kombu
        publishes to the funnel exchange reach them at all (the binding exists)."""
        table, _permanent, member = kombu_binding(self.settings)
        pipe = self.conn.pipeline(transaction=False)
        for name in kombu_lists(self.settings.intake_queue):
            pipe.llen(name)
        pipe.sismember(table, member)
        *lengths, bound = pipe.execute()
        return {"list": self.settings.intake_queue, "exchange": self.settings.funnel_exchange,
                "waiting": sum(lengths), "bound": bool(bound)}

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
