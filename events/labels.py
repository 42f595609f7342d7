"""What a raw funnel message is about, told cheaply and never failing: its kind (which task
name it is handed off under), type, event id, branch and job id.

The hand-off path (the RabbitMQ consumer bootstep, the Redis pump thread) runs in the
worker's main process, so it only looks where it is cheap: the ``ce-type`` / ``ce-id``
headers (binary mode; AMQP 1.0 spellings too), the structured body's ``type`` / ``id`` /
``data`` (one ``json.loads`` of a body under ``SNIFF_MAX_BYTES``), binary-mode data for the
branch and job id, and the routing key as the last hint for the type. Nothing here decides
anything: the pool task decodes and validates the message for real (``events.decode``); a
label only names the task, its ``argsrepr``, its log lines and its metric labels, so a
message that lies about itself is still applied (or dead-lettered) for what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from indexgate.events.catalog import ROUTES, UNKNOWN_KIND
from indexgate.events.decode import STRUCTURED, RawMessage

SNIFF_MAX_BYTES = 64 * 1024  # larger bodies are not parsed here (the pool still decodes them)
REPR_MAX_CHARS = 2000  # a task's argsrepr; kwargsrepr stays far below Celery's 1024
_TYPE_HEADERS = ("ce-type", "cloudevents_type", "cloudevents:type")
_ID_HEADERS = ("ce-id", "cloudevents_id", "cloudevents:id")


@dataclass(frozen=True)
class Label:
    kind: str  # the catalog kind (``indexing.heartbeat``...) or ``UNKNOWN_KIND``
    type: str | None = None
    event_id: str | None = None
    branch: str | None = None
    job_id: str | None = None

    @property
    def task_name(self) -> str:
        return task_name(self.kind)

    def text(self) -> str:
        """``indexing.heartbeat branch=main job=j1 id=e7``: what Flower shows and searches."""
        parts = [self.kind if self.kind != UNKNOWN_KIND else f"unknown type={self.type or '-'}"]
        parts += [f"{name}={value}" for name, value in
                  (("branch", self.branch), ("job", self.job_id), ("id", self.event_id)) if value]
        return " ".join(parts)

    def log_fields(self) -> dict[str, str]:
        """The fields a log line carries for this event (those that are known)."""
        fields = {"event_id": self.event_id, "event_type": self.type, "branch": self.branch, "job_id": self.job_id}
        return {name: value for name, value in fields.items() if value}


def task_name(kind: str) -> str:
    return f"indexgate.{kind}"


KIND_OF_TYPE = {event_type: route.kind for event_type, route in ROUTES.items()}
TASK_NAMES = sorted({task_name(kind) for kind in KIND_OF_TYPE.values()} | {task_name(UNKNOWN_KIND)})


def label_of(raw: RawMessage) -> Label:
    """The label of ``raw``; every failure to tell leaves a field None (never raises)."""
    headers = {name.lower(): value for name, value in raw.headers.items()}
    event_type = _first(headers, _TYPE_HEADERS)
    event_id = _first(headers, _ID_HEADERS)
    data: Any = None
    body = _json(raw) if len(raw.body) <= SNIFF_MAX_BYTES and raw.body_encoding == "utf-8" else None
    structured = (raw.content_type or "").lower().startswith(STRUCTURED) or (
        event_type is None and isinstance(body, dict) and "specversion" in body)
    if structured and isinstance(body, dict):
        event_type = _text(body.get("type")) or event_type
        event_id = _text(body.get("id")) or event_id
        data = body.get("data")
    elif not structured:
        data = body
    event_type = event_type or raw.routing_key
    branch = job_id = None
    if isinstance(data, dict):
        branch = _text(data.get("branch"))
        job_id = _text(data.get("job_id")) or _text(data.get("shadow_index_id"))
    return Label(kind=KIND_OF_TYPE.get(event_type or "", UNKNOWN_KIND), type=event_type, event_id=event_id,
                 branch=branch, job_id=job_id)


def batch_repr(labels: list[Label]) -> tuple[str, str]:
    """(argsrepr, kwargsrepr) of one hand-off task: every event's label, cut at
    ``REPR_MAX_CHARS`` with how many more there were; and a dict repr Flower's
    ``kwargs:branch=...`` search reads (one branch or job: that one; several: joined)."""
    parts: list[str] = []
    used = 0
    for i, label in enumerate(labels):
        text = label.text()
        if used + len(text) > REPR_MAX_CHARS:
            parts.append(f"... (+{len(labels) - i} more)")
            break
        parts.append(text)
        used += len(text) + 2
    summary: dict[str, object] = {"events": len(labels)}
    for key, values in (("branch", [x.branch for x in labels]), ("job_id", [x.job_id for x in labels]),
                        ("type", [x.type for x in labels])):
        distinct = sorted({v for v in values if v})
        if distinct:
            summary[key] = ", ".join(distinct)[:200]
    return "[" + "; ".join(parts) + "]", repr(summary)


def _first(headers: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((headers[name] for name in names if headers.get(name)), None)


def _json(raw: RawMessage) -> Any:
    try:
        return json.loads(raw.body)
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None
