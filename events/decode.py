"""Turn a raw broker message into a validated ``IncomingEvent``, or ``MalformedEvent``.

Both content modes of the AMQP 0-9-1 (RabbitMQ) binding are accepted through the SDK's
``cloudevents.core.bindings.rabbitmq``: structured (``application/cloudevents+json`` body)
and binary (``ce-`` headers, data in the body). The AMQP 1.0 prefixes ``cloudEvents_`` /
``cloudEvents:`` are mapped to ``ce-`` first, since that costs one loop. The SDK raises a mix
of exception types on bad input (``ValueError``, ``AttributeError``, its own validation
errors), so every failure leaves here as one ``MalformedEvent`` with a readable reason -
checked here first where the SDK would hide the real fault (binary-mode data that is not
JSON would reach us as a string).

Header values arrive typed from real clients (py-amqp, pika, kombu's JSON envelope) and
are turned into the CloudEvents string forms once, in ``RawMessage.build``: an AMQP
``timestamp`` (py-amqp gives a naive ``datetime``, UTC by the AMQP spec) becomes an RFC 3339
time in UTC; booleans ``true`` / ``false``; integers and decimals their digits; bytes UTF-8
text; tables and arrays JSON; a void (``None``) header is absent. A *string* time without
an offset stays malformed: RFC 3339 requires one.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse
from pydantic import BaseModel, ConfigDict

from indexgate.clock import as_utc
from indexgate.errors import MalformedEvent

STRUCTURED = "application/cloudevents+json"
_AMQP10_PREFIXES = ("cloudevents_", "cloudevents:")
_JSON_MEDIA = re.compile(r"^application/(.+\+)?json(\s*;.*)?$", re.IGNORECASE)
_FORMAT = JSONFormat()
MAX_HEADERS = 100  # the defaults of INDEXGATE_MAX_HEADERS / _MAX_HEADER_BYTES
MAX_HEADER_BYTES = 8192


class RawMessage(BaseModel):
    """A broker message as received, JSON-safe so it can travel inside a Celery task."""

    model_config = ConfigDict(frozen=True)

    headers: dict[str, str] = {}
    content_type: str | None = None
    body: str
    body_encoding: str = "utf-8"  # "base64" when the body is not UTF-8 text
    routing_key: str | None = None
    fault: str | None = None  # the transport could not unwrap it (why); dead-lettered with this reason

    @classmethod
    def build(
        cls, headers: Mapping[str, Any] | None, content_type: str | None, body: bytes | str,
        routing_key: str | None = None, fault: str | None = None,
    ) -> "RawMessage":
        clean = {str(k): _header_text(v) for k, v in (headers or {}).items() if v is not None}
        common = {"headers": clean, "content_type": content_type if isinstance(content_type, str) else None,
                  "routing_key": routing_key, "fault": fault}
        if isinstance(body, str):
            return cls(body=body, **common)
        try:
            return cls(body=body.decode("utf-8"), **common)
        except UnicodeDecodeError:
            return cls(body=base64.b64encode(body).decode("ascii"), body_encoding="base64", **common)

    def body_bytes(self) -> bytes:
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")


class IncomingEvent(BaseModel):
    """The CloudEvent attributes indexgate uses, plus ``data`` still unvalidated."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    type: str
    time: datetime | None  # None when the publisher gave no time (the SDK would invent one)
    subject: str | None = None
    data: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key: CloudEvents says source + id identify an event."""
        return event_key(self.source, self.id)


def event_key(source: str, event_id: str) -> str:
    """``source|id``, the inbox key of an event; the only place that spells it.

    A ``|`` or ``\\`` inside the source is escaped with a backslash, so the first bare ``|``
    always ends the source and two different events can never share a key (unescaped,
    source ``a|b`` id ``c`` and source ``a`` id ``b|c`` would). The id needs no escaping: it
    is everything after that ``|``. A source with neither character keeps the key it always
    had, so inbox keys stored before the escaping stay valid.
    """
    escaped = source.replace("\\", "\\\\").replace("|", "\\|")
    return f"{escaped}|{event_id}"


def decode(raw: RawMessage, max_bytes: int, source_allowlist: list[str] | None = None,
           max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES) -> IncomingEvent:
    if raw.fault:
        raise MalformedEvent(raw.fault)
    body = raw.body_bytes()
    if len(body) > max_bytes:
        raise MalformedEvent(f"body is {len(body)} bytes, over the {max_bytes}-byte limit (INDEXGATE_MAX_EVENT_BYTES)")
    check_headers(raw.headers, max_headers, max_header_bytes)
    headers = _ce_headers(raw.headers)
    content_type = raw.content_type
    if not headers and (content_type or "").startswith("application/json") and b'"specversion"' in body:
        content_type = STRUCTURED  # a structured event sent with a generic JSON content type
    structured = (content_type or "").lower().startswith("application/cloudevents")
    if structured:
        given, body = _structured_attributes(body)
    elif headers:
        given = {name[len("ce-"):]: value for name, value in headers.items()}
    else:
        raise MalformedEvent(
            f"not a CloudEvent: content type {raw.content_type!r} is not {STRUCTURED} and no ce- headers are present"
        )
    _check_given(given)  # the SDK would invent a missing id, specversion or time
    if not structured:
        _check_binary_data(body, content_type)
    has_time = "time" in given
    try:
        event: CloudEvent = from_rabbitmq(RabbitMQMessage(headers, content_type, body), _FORMAT, CloudEvent)
    except Exception as exc:  # the SDK raises many types; all mean "bad event"
        raise MalformedEvent(f"not a valid CloudEvent: {type(exc).__name__}: {exc}") from exc
    return _incoming(event, has_time, source_allowlist)


def _incoming(event: CloudEvent, has_time: bool, allowlist: list[str] | None) -> IncomingEvent:
    if event.get_specversion() != "1.0":
        raise MalformedEvent(f"specversion {event.get_specversion()!r} is not supported; send 1.0")
    if allowlist and event.get_source() not in allowlist:
        raise MalformedEvent(f"source {event.get_source()!r} is not in INDEXGATE_SOURCE_ALLOWLIST")
    data = event.get_data()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MalformedEvent(f"data must be a JSON object, got {type(data).__name__}")
    time = event.get_time() if has_time else None
    try:
        utc = as_utc(time) if time else None
    except OverflowError as exc:
        raise MalformedEvent(f"attribute 'time' {time!r} is outside the representable range") from exc
    return IncomingEvent(
        id=event.get_id(), source=event.get_source(), type=event.get_type(),
        time=utc, subject=event.get_subject(), data=data,
    )


def check_headers(headers: Mapping[str, str], max_headers: int, max_header_bytes: int) -> None:
    """Refuse a message over the header limits, naming the limit and its setting."""
    if len(headers) > max_headers:
        raise MalformedEvent(f"message has {len(headers)} headers, over the limit of {max_headers} "
                             "(INDEXGATE_MAX_HEADERS)")
    for name, value in headers.items():
        size = len(name.encode("utf-8")) + len(value.encode("utf-8"))
        if size > max_header_bytes:
            raise MalformedEvent(f"header {name[:80]!r} is {size} bytes (name + value), over the {max_header_bytes}"
                                 "-byte limit (INDEXGATE_MAX_HEADER_BYTES)")


def _check_binary_data(body: bytes, content_type: str | None) -> None:
    """Binary mode: data declared JSON (or undeclared, which CloudEvents reads as JSON) must
    parse, or the SDK hands it on as a string and the fault would read "not an object"."""
    if not body or not _JSON_MEDIA.match(content_type or "application/json"):
        return
    try:
        json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise MalformedEvent(f"data is not valid JSON (content type {content_type or 'unset: JSON assumed'}): "
                             f"{exc}") from exc


def _ce_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        for prefix in _AMQP10_PREFIXES:
            if lower.startswith(prefix):
                lower = "ce-" + lower[len(prefix):]
        if lower.startswith("ce-"):
            out[lower] = value
    return out


def _structured_attributes(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The attributes the publisher gave; a JSON ``null`` attribute means absent, so it is
    dropped from the body before the SDK (which would choke on it) reads it."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedEvent(f"a structured CloudEvent must be a JSON object, got {type(obj).__name__}")
    nulls = [key for key, value in obj.items() if value is None and key not in ("data", "data_base64")]
    if nulls:
        body = json.dumps({k: v for k, v in obj.items() if k not in nulls}).encode()
    return {k: v for k, v in obj.items() if k not in nulls}, body


def _check_given(given: dict[str, Any]) -> None:
    for name in ("specversion", "id", "source", "type"):
        value = given.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(f"required attribute {name!r} is missing or not a non-empty string")
    if "time" in given:
        try:
            isoparse(str(given["time"]))
        except (ValueError, OverflowError) as exc:
            raise MalformedEvent(f"attribute 'time' {given['time']!r} is not an RFC 3339 timestamp") from exc


def _header_text(value: Any) -> str:
    """A header value in its CloudEvents string form (see the module doc)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # AMQP timestamps are UTC
        return aware.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    return str(value)  # str, int, float, Decimal


def _json_default(value: Any) -> str:
    """Inside a table or array header: the same string forms, anything else ``str``."""
    if isinstance(value, (bytes, bytearray, memoryview, datetime, bool)):
        return _header_text(value)
    return str(value)
