"""Ingest one raw funnel message: decode, validate, apply; dead-letter what cannot be used.

This is the single place where the dead-letter policy lives. A malformed message is kept
with its reason; an unexpected error while applying a valid event is kept the same way
(reason ``internal error``) instead of crashing the worker or dropping the event, so
nothing is lost and the message can be inspected with ``indexgate deadletters list``.
A body is kept whole up to ``DEAD_LETTER_BODY_LIMIT`` and cut beyond, with its full size
and sha256.
Store outages are *not* caught here: they propagate so the task is retried with backoff.

``ingest_batch`` applies one hand-off (a batch of deliveries) in order. Deliveries that
carry a ``ref`` (a Redis stream entry) are acked through ``Acks`` only once their effect
or dead letter is committed; on a store outage the applied ones are acked, the rest are
touched (so they are not handed off again while the task waits) and the error propagates.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

from pydantic import BaseModel

from indexgate.events import catalog
from indexgate.events.brokers.base import Acks
from indexgate.events.decode import MAX_HEADER_BYTES, MAX_HEADERS, RawMessage, decode
from indexgate.events.labels import Label
from indexgate.logs import log_context
from indexgate.clock import utcnow
from indexgate.errors import MalformedEvent, OperatorError, TransientError
from indexgate.outcomes import Outcome, Status
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.schemas.records import DeadLetter

log = logging.getLogger(__name__)

# What a dead letter keeps of a body: enough to see what was sent (a legitimate event is a
# few KiB), not so much that a funnel sending bodies over INDEXGATE_MAX_EVENT_BYTES (or just
# many bad ones) fills the store with them. The full size and sha256 are kept beside it.
DEAD_LETTER_BODY_LIMIT = 64 * 1024


class Delivery(BaseModel):
    raw: RawMessage
    ref: str | None = None  # Redis: the stream entry to ack once applied


class HandOff(BaseModel):
    """The payload of one intake task (``indexgate.<kind>``, see ``workers.tasks``)."""

    items: list[Delivery]
    consumer: str | None = None  # Redis: the stream consumer that handed these off


def ingest_batch(service: Service, settings: Settings, handoff: HandOff, acks: Acks | None,
                 labels: list[Label] | None = None) -> list[Outcome]:
    """``labels`` (one per item, ``events.labels``): log lines while an item is applied carry
    its event id, type, branch and job id."""
    outcomes: list[Outcome] = []
    try:
        for i, item in enumerate(handoff.items):
            with log_context(**(labels[i].log_fields() if labels else {})):
                outcomes.append(ingest(service, settings, item.raw))
    except TransientError:
        if acks is not None:
            _settle(acks, handoff.items[:len(outcomes)], handoff.items[len(outcomes):])
        raise
    if acks is not None:
        _settle(acks, handoff.items, [])
    return outcomes


def _settle(acks: Acks, done: list[Delivery], waiting: list[Delivery]) -> None:
    """Best effort: an ack that fails leaves the entry pending, so it is applied again
    later and dropped there as a duplicate; nothing is lost either way."""
    try:
        acks.ack([item.ref for item in done if item.ref])
        acks.touch([item.ref for item in waiting if item.ref])
    except Exception as exc:
        log.warning("could not ack intake stream entries (they will be handed off again): %s", exc)


def ingest(service: Service, settings: Settings, raw: RawMessage) -> Outcome:
    try:
        event = decode(raw, settings.max_event_bytes, settings.source_allowlist, settings.max_headers,
                       settings.max_header_bytes)
        return catalog.apply(service, event)
    except MalformedEvent as exc:
        return dead_letter(service, raw, str(exc), settings)
    except OperatorError as exc:  # a well-formed event asking for the impossible
        return dead_letter(service, raw, f"cannot be applied: {exc}", settings)
    except TransientError:
        raise
    except Exception as exc:  # a bug must not lose the event nor kill the worker
        log.exception("internal error while applying an event; it is dead-lettered")
        return dead_letter(service, raw, f"internal error: {type(exc).__name__}: {exc}", settings)


def dead_letter(service: Service, raw: RawMessage, reason: str, settings: Settings | None = None) -> Outcome:
    most, largest = (settings.max_headers, settings.max_header_bytes) if settings else (MAX_HEADERS, MAX_HEADER_BYTES)
    letter = DeadLetter(
        at=utcnow(), reason=reason, routing_key=raw.routing_key, content_type=raw.content_type,
        headers=kept_headers(raw.headers, most, largest), **kept_body(raw),
    )
    service.record_dead_letter(letter)
    log.warning("dead-lettered message %s: %s", letter.letter_id, reason)
    return Outcome(status=Status.DEAD_LETTERED, detail=reason, ref=letter.letter_id)


def kept_headers(headers: dict[str, str], most: int, largest_bytes: int) -> dict[str, str]:
    """The headers a dead letter keeps: the first ``most``, each cut to ``largest_bytes``
    (the header limits), with a marker saying how much a cut one had; the reason already
    names the limit that was exceeded."""
    kept: dict[str, str] = {}
    for name, value in list(headers.items())[:most]:
        size = len(value.encode("utf-8"))
        if size + len(name.encode("utf-8")) > largest_bytes:
            value = value.encode("utf-8")[:largest_bytes].decode("utf-8", "ignore") + f"...[cut: {size} bytes]"
        kept[name] = value
    if len(headers) > most:
        kept["x-indexgate-headers-dropped"] = str(len(headers) - most)
    return kept


def kept_body(raw: RawMessage, limit: int = DEAD_LETTER_BODY_LIMIT) -> dict[str, Any]:
    """The ``DeadLetter`` body fields: at most ``limit`` bytes of it, its full size and sha256.

    A text body stays text; cut, it loses at most the one character split by the cut.
    """
    full = raw.body_bytes()
    measured = {"body_bytes": len(full), "body_sha256": hashlib.sha256(full).hexdigest()}
    if len(full) <= limit:
        return {"body": raw.body, "body_encoding": raw.body_encoding, **measured}
    head = full[:limit]
    if raw.body_encoding == "utf-8":
        body = head.decode("utf-8", "ignore")
    else:
        body = base64.b64encode(head).decode("ascii")
    return {"body": body, "body_encoding": raw.body_encoding, "body_truncated": True, **measured}
