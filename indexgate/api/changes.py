"""Branch invalidations for clients' caches: the outgoing exchange, streamed over HTTP.

``indexgate.client.Gate`` may cache allowed answers (``max_staleness_ms``), but it must stay
HTTP-only (no kombu in the OMS). So the server subscribes: ``ChangeFeed`` consumes the
outgoing ``indexgate.events`` exchange (kombu, any broker, its own exclusive queue bound
``#``) and ``Hub`` fans each event's branch (its CloudEvent ``subject``) out to every
``GET /v1/changes`` stream as Server-Sent Events:

- ``ready`` first, only while the subscription is up: a client caches nothing before it,
  and clears its cache on every ``ready`` (what happened while it was away is unknown);
- ``invalidate`` ``{"branch": B}`` per announced change (``null``: every branch - an event
  without a subject, or one that does not parse);
- a ``: ping`` comment every ``PING_S`` seconds: a client that hears nothing for longer
  treats its stream as down and bypasses its cache;
- ``down`` and the end of the stream when the subscription is lost (or the server stops,
  or a client falls too far behind): clients bypass their caches until the next ``ready``.

A lost subscription never serves stale data silently: the server says ``down``; and a client
never caches longer than its own ``max_staleness_ms`` anyway (a change whose announcement
is late or lost - the outbox relay re-sends it - is bounded by that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi.sse import ServerSentEvent
from kombu import Exchange, Queue

from indexgate.events.brokers import transport_for
from indexgate.settings import Settings, sanitized_url

log = logging.getLogger(__name__)

PING_S = 2.0  # keep-alive comment period of /v1/changes
STREAM_BACKLOG = 10_000  # invalidations a slow stream may have pending before it is cut (it reconnects)
_DOWN = object()  # queued to a stream: the subscription is down, end the stream
RETRY_MAX_S = 5.0


class Hub:
    """The change streams of this process; every method runs on the event loop."""

    def __init__(self) -> None:
        self.up = False
        self.detail = "not subscribed to the outgoing exchange yet"
        self._streams: set[asyncio.Queue] = set()

    def state(self, up: bool, detail: str) -> None:
        self.up, self.detail = up, detail
        if not up:
            self.close_all()

    def changed(self, branch: str | None) -> None:
        for queue in list(self._streams):
            try:
                queue.put_nowait(branch)
            except asyncio.QueueFull:  # never drop an invalidation silently: cut that stream instead
                self._cut(queue)

    def close_all(self) -> None:
        for queue in list(self._streams):
            self._cut(queue)

    async def stream(self) -> AsyncIterator[ServerSentEvent]:
        """One client's ``/v1/changes``."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=STREAM_BACKLOG + 1)
        self._streams.add(queue)
        try:
            if not self.up:
                yield ServerSentEvent(event="down", data={"detail": self.detail})
                return
            yield ServerSentEvent(event="ready", data={"ping_s": PING_S})
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    yield ServerSentEvent(comment="ping")
                    continue
                if item is _DOWN:
                    yield ServerSentEvent(event="down", data={"detail": self.detail})
                    return
                yield ServerSentEvent(event="invalidate", data={"branch": item})
        finally:
            self._streams.discard(queue)

    def _cut(self, queue: asyncio.Queue) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_DOWN)
        self._streams.discard(queue)


def branch_of(body: bytes | str) -> str | None:
    """The branch a structured outgoing CloudEvent is about (``subject``); None = unknown."""
    try:
        subject = json.loads(body).get("subject")
    except (ValueError, AttributeError):
        return None
    return subject if isinstance(subject, str) else None


class ChangeFeed:
    """A thread consuming the outgoing exchange; reports each event's branch and whether
    the subscription is up through callbacks (the caller hops them onto its event loop)."""

    def __init__(self, settings: Settings, on_change: Callable[[str | None], None],
                 on_state: Callable[[bool, str], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self.on_state = on_state
        self.queue_name = f"{settings.out_exchange}.api.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"exchange {self.settings.out_exchange} on {sanitized_url(self.settings.resolved_broker_url)}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="indexgate-api-changes", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _queue(self) -> Queue:
        exchange = Exchange(self.settings.out_exchange, type="topic", durable=True)
        # exclusive + auto_delete: RabbitMQ drops it with our connection; elsewhere stop() deletes it
        return Queue(self.queue_name, exchange, routing_key="#", durable=False, exclusive=True, auto_delete=True,
                     expires=300)

    def _run(self) -> None:
        delay_s = 0.5
        while not self._stop.is_set():
            try:
                self._consume()
                return  # stopped
            except Exception as exc:  # noqa: BLE001 - whatever broke, the subscription is down: say so
                self.on_state(False, f"subscription to {self.where} lost: {type(exc).__name__}: {exc}")
                log.warning("change feed: subscription to %s lost (%s); retrying in %.1f s", self.where, exc, delay_s)
            self._stop.wait(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    def _consume(self) -> None:
        conn = transport_for(self.settings).connection()  # like the workers': same transport and options
        try:
            conn.ensure_connection(max_retries=1)
            queue = self._queue()
            with conn.Consumer(queue, on_message=self._message, no_ack=True):
                self.on_state(True, f"subscribed to {self.where}")
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except socket.timeout:
                        conn.heartbeat_check()
            self.on_state(False, "the API is stopping")
            try:
                queue.bind(conn.default_channel).delete()  # RabbitMQ would; Redis and files keep it otherwise
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.info("change feed: could not delete queue %s", self.queue_name)
        finally:
            conn.release()

    def _message(self, message) -> None:
        self.on_change(branch_of(message.body))
