"""Ingest one raw funnel message: decode, validate, apply; dead-letter what cannot be used.

This is the single place where the dead-letter policy lives. A malformed message is kept
whole with its reason; an unexpected error while applying a valid event is kept the same
way (reason ``internal error``) instead of crashing the worker or dropping the event, so
nothing is lost and the message can be inspected with ``indexgate deadletters list``.
Store outages are *not* caught here: they propagate so the task is retried with backoff.

``ingest_batch`` applies one hand-off (a batch of deliveries) in order. Deliveries that
carry a ``ref`` (a Redis stream entry) are acked through ``Acks`` only once their effect
or dead letter is committed; on a store outage the applied ones are acked, the rest are
touched (so they are not handed off again while the task waits) and the error propagates.
"""

from __future__ import annotations

import logging
from typing import Protocol

from pydantic import BaseModel

from events import catalog
from events.decode import RawMessage, decode
from indexgate.clock import utcnow
from indexgate.errors import MalformedEvent, OperatorError, TransientError
from indexgate.service import Outcome, Service
from indexgate.settings import Settings
from schemas.records import DeadLetter

log = logging.getLogger(__name__)


class Delivery(BaseModel):
    raw: RawMessage
    ref: str | None = None  # Redis: the stream entry to ack once applied


class HandOff(BaseModel):
    """The payload of one ``indexgate.intake`` task."""

    items: list[Delivery]
    consumer: str | None = None  # Redis: the stream consumer that handed these off


class Acks(Protocol):
    def ack(self, refs: list[str]) -> None: ...

    def touch(self, refs: list[str]) -> None: ...


def ingest_batch(service: Service, settings: Settings, handoff: HandOff, acks: Acks | None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    try:
        for item in handoff.items:
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
        event = decode(raw, settings.max_event_bytes, settings.source_allowlist)
        return catalog.apply(service, event)
    except MalformedEvent as exc:
        return dead_letter(service, raw, str(exc))
    except OperatorError as exc:  # a well-formed event asking for the impossible
        return dead_letter(service, raw, f"cannot be applied: {exc}")
    except TransientError:
        raise
    except Exception as exc:  # a bug must not lose the event nor kill the worker
        log.exception("internal error while applying an event; it is dead-lettered")
        return dead_letter(service, raw, f"internal error: {type(exc).__name__}: {exc}")


def dead_letter(service: Service, raw: RawMessage, reason: str) -> Outcome:
    letter = DeadLetter(
        at=utcnow(), reason=reason, routing_key=raw.routing_key, content_type=raw.content_type,
        headers=raw.headers, body=raw.body, body_encoding=raw.body_encoding,
    )
    service.record_dead_letter(letter)
    log.warning("dead-lettered message %s: %s", letter.letter_id, reason)
    return Outcome(status="dead_lettered", detail=reason)
