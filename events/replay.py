"""Dead letters are workable: send a kept message back through the intake.

A replayed letter is published exactly where the funnel publishes (the broker transport's
``publish_raw``: the Redis intake stream, the RabbitMQ / embedded intake queue) with the
headers, content type, routing key and body it was kept with, so a worker decodes it with
the same code and the same inbox: an event that was applied in the meantime (or by an
earlier replay) changes nothing, and one that is still bad is dead-lettered again with its
reason. A letter whose body or headers were cut when it was kept cannot be replayed (the
message it would send is not the one received) and says so. Each replay marks the letter
(``replayed_at``, ``replayed_by``, ``replays``); a letter already replayed is skipped unless
asked ``again``. ``dry_run`` sends nothing and marks nothing: it decodes each letter here
and says what a worker would do with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

from indexgate.clock import utcnow
from indexgate.errors import MalformedEvent
from indexgate.events import catalog
from indexgate.events.brokers import IntakeTransport
from indexgate.events.decode import RawMessage, decode
from indexgate.events.labels import label_of
from indexgate.schemas.records import DeadLetter
from indexgate.settings import Settings
from indexgate.store import Store

HEADERS_DROPPED = "x-indexgate-headers-dropped"  # events.intake.kept_headers marks what it left out
HEADER_CUT = "...[cut: "


class ReplayStatus(enum.StrEnum):
    SENT = "sent"
    WOULD_SEND = "would_send"  # dry run
    CUT = "cut"  # refused: the kept body or headers are not the whole message
    ALREADY_REPLAYED = "already_replayed"  # skipped (``again`` sends it anyway)
    NOT_FOUND = "not_found"


REFUSED = frozenset({ReplayStatus.CUT, ReplayStatus.NOT_FOUND})


@dataclass(frozen=True)
class Replay:
    letter_id: str
    status: ReplayStatus
    detail: str


def replay(store: Store, transport: IntakeTransport, settings: Settings, letter_ids: Sequence[str] | None,
           by: str, dry_run: bool = False, again: bool = False) -> list[Replay]:
    """Replay ``letter_ids`` (None: every letter not replayed yet), oldest first."""
    if letter_ids is None:
        wanted = {letter.letter_id: letter for letter in reversed(store.dead_letters(-1))
                  if again or letter.replayed_at is None}
    else:
        wanted = {letter_id: store.dead_letter(letter_id) for letter_id in dict.fromkeys(letter_ids)}
    return [_one(store, transport, settings, letter, by, dry_run, again) if letter is not None
            else Replay(letter_id, ReplayStatus.NOT_FOUND, "no such dead letter (`indexgate deadletters list`)")
            for letter_id, letter in wanted.items()]


def _one(store: Store, transport: IntakeTransport, settings: Settings, letter: DeadLetter, by: str,
         dry_run: bool, again: bool) -> Replay:
    cut = cut_reason(letter)
    if cut:
        return Replay(letter.letter_id, ReplayStatus.CUT, f"cannot be replayed: {cut}")
    if letter.replayed_at is not None and not again:
        return Replay(letter.letter_id, ReplayStatus.ALREADY_REPLAYED,
                      f"already replayed {letter.replays}x, last at {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ} by "
                      f"{letter.replayed_by}; skipped (--again sends it anyway)")
    raw = raw_of(letter)
    if dry_run:
        return Replay(letter.letter_id, ReplayStatus.WOULD_SEND, forecast(store, settings, raw))
    routing_key = raw.routing_key or label_of(raw).type or "replay"
    transport.publish_raw(routing_key, RabbitMQMessage(dict(raw.headers), raw.content_type, raw.body_bytes()))
    store.mark_replayed(letter.letter_id, utcnow(), by)
    return Replay(letter.letter_id, ReplayStatus.SENT, f"sent back through the intake ({label_of(raw).text()})")


def cut_reason(letter: DeadLetter) -> str | None:
    """Why the kept message is not the one received, or None when it is whole."""
    if letter.body_truncated:
        return (f"its body was cut when it was kept ({letter.body_bytes} bytes received, sha256 "
                f"{letter.body_sha256}); only the first part is stored")
    if HEADERS_DROPPED in letter.headers:
        return f"{letter.headers[HEADERS_DROPPED]} of its headers were dropped when it was kept"
    cut = [name for name, value in letter.headers.items() if HEADER_CUT in value]
    if cut:
        return f"header(s) {', '.join(sorted(cut))[:200]} were cut when it was kept"
    return None


def raw_of(letter: DeadLetter) -> RawMessage:
    return RawMessage(headers=letter.headers, content_type=letter.content_type, body=letter.body,
                      body_encoding=letter.body_encoding, routing_key=letter.routing_key)


def forecast(store: Store, settings: Settings, raw: RawMessage) -> str:
    """What a worker would do with ``raw`` now (decode and validate only; nothing applied)."""
    try:
        event = decode(raw, settings.max_event_bytes, settings.source_allowlist, settings.max_headers,
                       settings.max_header_bytes)
        catalog.validate(event)
    except MalformedEvent as exc:
        return f"would be dead-lettered again: {exc}"
    if store.seen(event.key):
        return f"{event.type} {event.key} was applied already: a replay changes nothing"
    return f"would be applied: {event.type} {event.key}"
