"""The intake: how the funnel's CloudEvents get from the broker into the pool's tasks.

Celery only runs its own task messages, so foreign messages come in beside it and are
handed to the pool as tasks (durable, persistent), one per event kind in a batch
(``hand_off``: ``indexgate.indexing.heartbeat``, ... with readable ``argsrepr``); decoding,
validation, dead-lettering and the store all happen in the pool, under the tasks' retry
policy. The broker's intake transport (``events.brokers``) says which of two bootsteps
runs (``IntakeMode``) and what it reads:

- ``IntakeMode.CONSUMER`` (RabbitMQ, the embedded broker): ``IntakeStep``, a consumer
  bootstep (Celery's documented hook for foreign messages) on the transport's queues. It
  acks the originals only after the broker confirmed their hand-off task (several per
  task on RabbitMQ, see the class); if the hand-off fails they go back to the queue.
- ``IntakeMode.PUMP`` (Redis): ``StreamStep`` starts ``StreamPump``, a thread reading the
  intake stream with a consumer group (see ``events.brokers.redis_stream`` for why not a
  kombu list). Every cycle it also moves what kombu publishers put on the intake's list
  into the stream (one atomic script; every ``MOVE_EVERY_S``, every ``MOVE_BUSY_EVERY_S``
  while kombu publishes keep coming, at once while moves come back full; a read blocks
  only until the next move is due). It hands off what it read as one task (up to ``intake_batch_max`` entries)
  and does *not* ack them: the task acks each entry after its effect is committed. While
  hand-off tasks wait in the task queue (the pool is behind) it reads nothing, so entries
  gather in the stream and go out in bigger batches: one event costs the worker less the
  busier it is, and a backlog stays in the stream, not in the task queue. While the store
  is down (the outage flag of ``workers.runtime.Outage``) it reads one entry per retry
  interval, a probe. Entries left pending by a dead worker or a lost task are claimed
  after ``intake_claim_idle_s`` and handed off again.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum
from typing import TYPE_CHECKING

from celery import bootsteps
from kombu import Consumer

from indexgate.events.brokers import IntakeMode
from indexgate.events.decode import RawMessage
from indexgate.events.intake import Delivery, HandOff
from indexgate.events.labels import TASK_NAMES, Label, batch_repr, label_of
from indexgate.workers.runtime import outage_reported, settings_of, transport_of

if TYPE_CHECKING:
    from indexgate.events.brokers.redis_stream import Entry, StreamGroup

log = logging.getLogger(__name__)

INTAKE_TASK = "indexgate.intake"  # the one task name before tasks were named by kind: still served
INTAKE_TASKS = frozenset({*TASK_NAMES, INTAKE_TASK})  # every task that applies funnel events
FORGET_CONSUMER_IDLE_S = 3600  # a stream consumer this quiet, holding nothing, belonged to a gone worker
MOVE_EVERY_S = 0.1  # Redis: how often the pump looks for kombu publishes (its reads block no longer)
MOVE_BUSY_EVERY_S = 0.02  # ... while kombu publishes keep coming (within KOMBU_BUSY_S of the last)
KOMBU_BUSY_S = 10.0


class IntakeStep(bootsteps.ConsumerStep):
    """RabbitMQ / embedded broker: hand off, then ack. With the worker's event loop (any
    broker with asynchronous I/O, e.g. RabbitMQ) messages arriving together go out as one
    task: the first starts an ``intake_linger_s`` timer, the batch leaves when it fires or
    holds ``intake_batch_max`` messages (at most ``intake_prefetch`` are unacked anyway), so
    one publisher confirm covers many events. Without it (the embedded broker), one task
    per message. Timer and handler run on the event loop's thread: no locking needed."""

    def __init__(self, parent, **kwargs) -> None:
        self.app = parent.app
        self.consumer = parent
        self.held: list = []
        self.armed = False
        super().__init__(parent, **kwargs)

    def include_if(self, parent) -> bool:
        return transport_of(parent.app).mode is IntakeMode.CONSUMER

    def get_consumers(self, channel):
        self.held, self.armed = [], False  # a new connection: the old one's messages come back anyway
        prefetch = settings_of(self.app).intake_prefetch
        return [Consumer(channel, queues=transport_of(self.app).consumer_queues(), on_message=self.on_message,
                         prefetch_count=prefetch, accept=None)]

    def on_message(self, message) -> None:
        settings = settings_of(self.app)
        self.held.append(message)
        if self.consumer.hub is None or len(self.held) >= min(settings.intake_batch_max, settings.intake_prefetch):
            self.flush()
        elif not self.armed:
            self.armed = True
            self.consumer.timer.call_after(settings.intake_linger_s, self.flush)

    def flush(self) -> None:
        held, self.held, self.armed = self.held, [], False
        if not held:
            return
        try:
            hand_off(self.app, HandOff(items=[Delivery(raw=_raw(m)) for m in held]))
        except Exception:
            log.exception("could not hand %d funnel event(s) to the pool; they go back to the queue", len(held))
            _settle(held, Settle.REQUEUE)
            return
        _settle(held, Settle.ACK)


def _raw(message) -> RawMessage:
    return RawMessage.build(message.headers, message.content_type, message.body,
                            (message.delivery_info or {}).get("routing_key"))


class Settle(StrEnum):
    """What becomes of the funnel messages of a batch once its hand-off was tried."""

    ACK = "ack"  # handed off (confirmed): the pool task applies them
    REQUEUE = "requeue"  # the hand-off failed: back to the queue


def _settle(messages: list, how: Settle) -> None:
    """Ack (or requeue) each message; one on a connection that is gone meanwhile is
    redelivered by the broker, and the inbox drops it as a duplicate."""
    for message in messages:
        try:
            message.ack() if how is Settle.ACK else message.requeue()
        except Exception as exc:
            log.warning("could not %s a funnel message (the broker will redeliver it): %s", how, exc)
            return


def hand_off(app, handoff: HandOff) -> None:
    """One task per event kind in the batch (``indexgate.indexing.heartbeat``, ...), each
    with a readable ``argsrepr`` / ``kwargsrepr`` (type, branch, job, event id) that Flower
    shows and searches. Within a kind the batch's order is kept; across kinds, as across
    batches, the pool may apply events in any order (the service tolerates it: early ends,
    heartbeats of unknown jobs, duplicates). A failure part-way leaves the originals
    unacked: sent groups are applied again on redelivery and dropped by the inbox."""
    for name, items, labels in by_kind(handoff.items):
        args_repr, kwargs_repr = batch_repr(labels)
        app.send_task(name, args=[HandOff(items=items, consumer=handoff.consumer).model_dump(mode="json")],
                      argsrepr=args_repr, kwargsrepr=kwargs_repr)


def by_kind(items: list[Delivery]) -> list[tuple[str, list[Delivery], list[Label]]]:
    """The deliveries grouped by their label's task name, groups in first-seen order."""
    groups: dict[str, tuple[list[Delivery], list[Label]]] = {}
    for item in items:
        label = label_of(item.raw)
        group = groups.setdefault(label.task_name, ([], []))
        group[0].append(item)
        group[1].append(label)
    return [(name, delivered, labels) for name, (delivered, labels) in groups.items()]


class StreamStep(bootsteps.StartStopStep):
    """Redis: runs a ``StreamPump`` for as long as the worker runs."""

    def __init__(self, parent, **kwargs) -> None:
        self.pump: StreamPump | None = None
        super().__init__(parent, **kwargs)

    def include_if(self, parent) -> bool:
        return transport_of(parent.app).mode is IntakeMode.PUMP

    def start(self, parent) -> None:
        self.pump = StreamPump(parent.app, consumer=parent.hostname)
        self.pump.start()

    def stop(self, parent) -> None:
        if self.pump is not None:
            self.pump.stop()

    # A worker's blueprint first closes every step, then stops them in reverse start
    # order; where this step (no dependencies) falls in that order varies from one process
    # to the next, and when it falls after the pool, the pump went on reading and handing
    # off while a warm shutdown waited for the pool's tasks (seen in some runs of
    # tests/test_shutdown.py, not in others). Stopped at ``close``, at the start of every
    # shutdown, it reads nothing more; what it handed off is finished by the pool or comes
    # back (the task message restored, its entries still pending).
    close = stop
    shutdown = stop


class StreamPump(threading.Thread):
    """Reads the intake stream and hands entries off; never acks (the task does)."""

    BLOCK_MS = int(MOVE_EVERY_S * 1000)  # how long one read waits; also how soon ``stop`` is noticed

    def __init__(self, app, consumer: str) -> None:
        super().__init__(name="indexgate-stream-intake", daemon=True)
        self.app = app
        self.settings = settings_of(app)
        self.transport = transport_of(app)
        self.consumer = consumer
        self._stopping = threading.Event()
        self._next_claim = 0.0
        self._next_probe = 0.0
        self._next_move = 0.0
        self._kombu_seen = float("-inf")
        self._cursor = "0-0"

    def stop(self, timeout_s: float = 5) -> None:
        self._stopping.set()
        self.join(timeout_s)

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            group = self.transport.stream_reader(self.consumer)
            try:
                group.ensure()
                self._resend_own(group)
                if failures:
                    log.warning("intake stream reachable again after %d failed attempt(s)", failures)
                failures = 0
                while not self._stopping.is_set():
                    self._cycle(group)
            except Exception as exc:  # Redis down, or the hand-off failed: entries stay pending
                failures += 1
                if failures == 1:
                    log.error("intake stream unavailable, retrying with backoff: %s", exc)
                self._stopping.wait(min(self.settings.store_retry_max_s, 0.5 * 2 ** min(failures, 7)))
            finally:
                group.conn.close()

    def _resend_own(self, group: StreamGroup) -> None:
        """After a (re)connect: what this consumer had read and not seen acked goes out
        again; duplicates of what did get applied are dropped by the event inbox."""
        after = "0"
        while entries := group.read_own(after, self.settings.intake_batch_max):
            self._hand_off(entries)
            after = entries[-1].ref

    def _cycle(self, group: StreamGroup) -> None:
        self._move(group)
        count = self._room(group)
        if not count:
            return
        if time.monotonic() >= self._next_claim:
            self._claim(group, count)
        entries = group.read_new(count, self._block_ms())
        if entries and len(entries) < count and self.settings.intake_linger_s > 0:
            # a moment for the next few to arrive: one task for several events costs the
            # worker far less than one task each, for a delay well under a broker hop
            self._stopping.wait(self.settings.intake_linger_s)
            entries += group.read_new(count - len(entries), None)
        self._hand_off(entries)

    def _move(self, group: StreamGroup) -> None:
        """The kombu door: what kombu publishers left on the intake's list goes into the
        stream (the move also tells `intake status` this worker's intake is alive). Again
        at once while moves come back full, so a kombu backlog drains at full speed."""
        now = time.monotonic()
        if now < self._next_move:
            return
        moved = group.move_kombu(self.settings.intake_batch_max)
        if moved:
            self._kombu_seen = now
        every_s = MOVE_BUSY_EVERY_S if now - self._kombu_seen < KOMBU_BUSY_S else MOVE_EVERY_S
        self._next_move = now if moved >= self.settings.intake_batch_max else now + every_s

    def _block_ms(self) -> int:
        """How long a read may wait for new entries: until the next move is due."""
        return max(1, min(self.BLOCK_MS, int((self._next_move - time.monotonic()) * 1000)))

    def _room(self, group: StreamGroup) -> int:
        """How many entries to read now (0: none, after a short wait)."""
        if outage_reported(self.settings):
            # The store is down: what the pool holds is retrying already, so new entries
            # wait in the stream instead of piling up as retrying tasks in memory; one
            # entry now and then probes whether the store is back.
            if time.monotonic() < self._next_probe:
                self._stopping.wait(0.2)
                return 0
            self._next_probe = time.monotonic() + self.settings.store_retry_max_s
            return 1
        if group.tasks_waiting() >= self.settings.intake_waiting_tasks_max:
            # the pool is behind: leave new entries in the stream, where they gather into
            # one bigger batch, instead of queueing one small task after another
            self._stopping.wait(0.003)
            return 0
        return self.settings.intake_batch_max

    def _claim(self, group: StreamGroup, count: int) -> None:
        idle_ms = int(self.settings.intake_claim_idle_s * 1000)
        self._cursor, entries = group.claim_idle(idle_ms, count, self._cursor)
        if entries:
            log.warning("handing off %d intake entries again: unacked for over %.0f s", len(entries),
                        self.settings.intake_claim_idle_s)
            self._hand_off(entries)
        if self._cursor == "0-0":  # scanned everything: look again in a while
            self._next_claim = time.monotonic() + self.settings.intake_claim_idle_s / 4
            gone = group.forget_idle_consumers(int(FORGET_CONSUMER_IDLE_S * 1000))
            if gone:
                log.info("forgot %d intake stream consumer(s) idle for over an hour with nothing pending: %s",
                         len(gone), ", ".join(gone))

    def _hand_off(self, entries: list[Entry]) -> None:
        if entries:
            items = [Delivery(raw=entry.raw, ref=entry.ref) for entry in entries]
            hand_off(self.app, HandOff(items=items, consumer=self.consumer))
