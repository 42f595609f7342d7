"""The intake transport: everything indexgate needs from one kind of broker, in one class.

indexgate asks a broker for a handful of things - the Celery app's transport and options,
the funnel topology (declared idempotently by ``indexgate setup`` and by every worker),
how the worker's intake reads (a consumer bootstep on a queue, or a pump thread on a
stream), who acks what was applied, how a funnel-side message is published, and what an
operator sees in ``indexgate intake status``. Each broker kind answers in its own module
(``amqp``, ``embedded``, ``redis``), chosen once from the broker URL by
``events.brokers.transport_for`` the way ``open_store`` chooses a store; nothing else in
indexgate asks which broker it is on.

``QueueTransport`` is the kombu-queue intake shared by RabbitMQ and the embedded broker:
a durable topic exchange ``funnel.events`` bound with ``#`` to the durable queue
``indexgate.funnel``, read by a consumer bootstep.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Protocol, Sequence

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.pools import producers
from kombu.utils.url import maybe_sanitize_url

from indexgate.errors import BrokerUnavailable
from indexgate.settings import Settings


class IntakeMode(enum.Enum):
    """How a worker reads the funnel's events on this broker."""

    CONSUMER = "consumer"  # a Celery consumer bootstep on ``consumer_queues()``, acked after the hand-off
    PUMP = "pump"  # a thread pulling ``stream_reader()``; the pool task acks each entry after its commit


class Alert(enum.Enum):
    """Why ``intake status`` warns: events are piling up where no worker reads them."""

    NOT_DECLARED = "not_declared"  # the topology is missing: publishes are dropped by the broker
    NO_READER = "no_reader"  # events wait and no worker reads that place


class Acks(Protocol):
    def ack(self, refs: list[str]) -> None: ...

    def touch(self, refs: list[str]) -> None: ...


@dataclass(frozen=True)
class Backlog:
    """The intake's backlog for metrics and the locks board (from ``status()``): events not
    yet applied, how many of them a worker holds unacked, and how long the oldest has waited
    (None where the broker does not tell: RabbitMQ's AMQP shows no message ages)."""

    waiting: int
    unacked: int | None
    oldest_age_s: float | None
    alerts: list[dict[str, Any]]


def alert(kind: Alert, place: str, waiting: int, message: str) -> dict[str, Any]:
    """One entry of a status report's ``alerts`` list (stable field names)."""
    return {"alert": kind.value, "place": place, "waiting": waiting, "message": message}


class IntakeTransport(ABC):
    """One broker kind; cheap to build, connects on first use, ``close()`` releases."""

    kind: ClassVar[str]  # for messages: "redis", "rabbitmq", "embedded"
    mode: ClassVar[IntakeMode]
    kombu_alias: ClassVar[str | None] = None  # our patched kombu transport, if any (see register_alias)
    unreachable: ClassVar[tuple[type[BaseException], ...]] = (OperationalError, OSError)

    def __init__(self, settings: Settings, connection: Connection | None = None) -> None:
        self.settings = settings
        self._kombu = connection

    # --- the Celery app and kombu connections --------------------------------------------

    @property
    def url(self) -> str:
        return self.settings.resolved_broker_url

    @property
    def safe_url(self) -> str:
        return maybe_sanitize_url(self.url)

    def transport_options(self) -> dict[str, Any]:
        return {}

    def prepare(self) -> None:
        """Local preparation before connecting (the embedded broker's folders)."""

    def celery_config(self) -> dict[str, Any]:
        """What the Celery app needs: the plain URL (Flower parses its scheme), our
        patched transport by its alias, and the options."""
        return {"broker_url": self.url, "broker_transport": self.kombu_alias,
                "broker_transport_options": self.transport_options()}

    def connection(self) -> Connection:
        """A new kombu connection like the workers' (not yet connected; the caller owns it)."""
        self.prepare()
        return Connection(self.url, transport=self.kombu_alias, transport_options=self.transport_options())

    @property
    def kombu(self) -> Connection:
        """This transport's own connection for publishing, opened on first use."""
        if self._kombu is None:
            self._kombu = self.connection()
        return self._kombu

    @contextmanager
    def reaching(self, what: str) -> Iterator[None]:
        """Turn this broker's connection errors into one ``BrokerUnavailable`` naming it."""
        try:
            yield
        except BrokerUnavailable:
            raise
        except self.unreachable as exc:
            raise BrokerUnavailable(f"{self.kind} broker {self.safe_url} did not answer while {what}: "
                                    f"{type(exc).__name__}: {exc}") from exc

    # --- topology ------------------------------------------------------------------------

    def funnel_exchange(self) -> Exchange:
        return Exchange(self.settings.funnel_exchange, type="topic", durable=True)

    def intake_queue(self) -> Queue:
        """The durable queue bound to the funnel's topic exchange with ``#``, so nothing goes
        unseen (unknown types are dead-lettered, not silently unrouted)."""
        return Queue(self.settings.intake_queue, self.funnel_exchange(), routing_key="#", durable=True)

    @abstractmethod
    def declare(self) -> list[str]:
        """Declare, idempotently, everything the funnel's events need on this broker, so
        events published before any worker ran wait for one; one line per thing declared."""

    # --- the worker's intake -------------------------------------------------------------

    def consumer_queues(self) -> list[Queue]:
        """Queues the consumer bootstep reads (``IntakeMode.CONSUMER``)."""
        return []

    def stream_reader(self, consumer: str) -> Any:
        """A reader for the pump thread (``IntakeMode.PUMP``), with its own client."""
        raise NotImplementedError(f"the {self.kind} intake has no stream")

    def acks(self, consumer: str | None) -> Acks | None:
        """Who acks a hand-off's entries after their commit (None: the intake acked already)."""
        return None

    def delivery_note(self) -> str:
        """What the intake's at-least-once delivery rests on, for reports."""
        return ""

    # --- publishing ----------------------------------------------------------------------

    def send(self, exchange_name: str, routing_key: str, message: RabbitMQMessage,
             declare: Sequence[Any] = (), **options: Any) -> None:
        """A persistent kombu publish to a topic exchange (also outgoing events)."""
        exchange = Exchange(exchange_name, type="topic", durable=True)
        with self.reaching(f"publishing to {exchange_name}"):
            with producers[self.kombu].acquire(block=True, timeout=10) as producer:
                producer.publish(
                    message.body, exchange=exchange, routing_key=routing_key, declare=[exchange, *declare],
                    content_type=message.content_type, content_encoding="utf-8", headers=dict(message.headers),
                    delivery_mode=2, retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}, **options,
                )

    @abstractmethod
    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        """A funnel-side message, CloudEvent or not, where the intake reads it."""

    # --- operators and run accounting ----------------------------------------------------

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """``indexgate intake status``: what waits where, who reads it, and ``alerts``."""

    def backlog(self) -> Backlog:
        """``status()`` in the few numbers metrics need."""
        report = self.status()
        queue = report.get("queue", {})
        return Backlog(waiting=int(queue.get("waiting", 0)), unacked=None, oldest_age_s=None, alerts=report["alerts"])

    def queue_depth(self, name: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of queue ``name``; None when nobody declared it. A
        passive declare on a channel of its own: a missing queue closes that channel only."""
        conn = self.kombu
        with self.reaching(f"looking at queue {name}"):
            channel = conn.channel()
            try:
                declared = Queue(name, channel=channel).queue_declare(passive=True)
            except conn.channel_errors:
                return None
            finally:
                _quietly(channel.close)
        return int(declared.message_count or 0), int(declared.consumer_count or 0)

    def waiting(self, queues: Sequence[str]) -> int:
        """Messages not yet finished in ``queues`` (and, on Redis, the intake stream)."""
        return sum((self.queue_depth(name) or (0, 0))[0] for name in queues)

    def teardown(self, queues: Sequence[str], exchanges: Sequence[str]) -> None:
        """Delete ``queues`` and ``exchanges`` (the inverse of ``declare`` for throwaway
        names: tests, benchmarks, chaos runs); best effort, never raises."""
        try:
            conn = self.kombu
            for name in queues:
                _quietly(lambda: Queue(name, channel=conn.channel()).delete())
            for name in exchanges:
                _quietly(lambda: Exchange(name, channel=conn.channel()).delete())
        except Exception:
            pass

    def close(self) -> None:
        if self._kombu is not None:
            _quietly(self._kombu.release)
            self._kombu = None


class QueueTransport(IntakeTransport):
    """The kombu-queue intake (RabbitMQ, the embedded broker): a consumer bootstep reads the
    durable intake queue and acks each message once its hand-off task is with the broker."""

    mode = IntakeMode.CONSUMER

    def declare(self) -> list[str]:
        queue = self.intake_queue()
        with self.reaching("declaring the funnel topology"):
            queue(self.kombu.default_channel).declare()
        return [f"exchange {queue.exchange.name} (topic, durable) -> queue {queue.name} (durable, bound '#')"]

    def consumer_queues(self) -> list[Queue]:
        return [self.intake_queue()]

    def publish_raw(self, routing_key: str, message: RabbitMQMessage) -> None:
        """To the funnel exchange, declaring the intake queue too: an event published before
        any worker ever ran waits in the queue instead of being dropped unrouted."""
        self.send(self.settings.funnel_exchange, routing_key, message, declare=[self.intake_queue()])

    def consumers_known(self) -> bool:
        """Whether the broker reports a queue's consumers (the embedded one does not)."""
        return True

    def status(self) -> dict[str, Any]:
        name = self.settings.intake_queue
        depth = self.queue_depth(name)
        waiting, consumers = depth or (0, 0)
        known = self.consumers_known()
        queue = {"name": name, "declared": depth is not None, "waiting": waiting,
                 "consumers": consumers if known else None}
        alerts = []
        if depth is None:
            alerts.append(alert(Alert.NOT_DECLARED, name, 0, f"queue {name} does not exist: events published to "
                                f"{self.settings.funnel_exchange} are dropped; run `indexgate setup`"))
        elif waiting and known and not consumers:
            alerts.append(alert(Alert.NO_READER, name, waiting,
                                f"{waiting} event(s) wait in queue {name} and no worker consumes it"))
        return {"queue": queue, "alerts": alerts}


def _quietly(action) -> None:
    try:
        action()
    except Exception:
        pass
