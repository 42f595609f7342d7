"""Outgoing CloudEvents: one per announced audit entry, on exchange ``indexgate.events``.

The CloudEvent id is the audit entry id, so the at-least-once outgoing stream (the outbox
relay may re-send after a crash) can be deduplicated by consumers with the usual
source + id rule.
"""

from __future__ import annotations

from cloudevents.core.v1.event import CloudEvent

from indexgate.schemas.records import AuditEntry, AuditKind

TYPE_PREFIX = "com.indexgate.lock."

OUTGOING_TYPES: dict[AuditKind, str] = {
    AuditKind.ACQUIRED: TYPE_PREFIX + "acquired",
    AuditKind.REFUSED: TYPE_PREFIX + "refused",
    AuditKind.RELEASED: TYPE_PREFIX + "released",
    AuditKind.EXTENDED: TYPE_PREFIX + "extended",
    AuditKind.HEALTH_CHANGED: TYPE_PREFIX + "health_changed",
    AuditKind.SHADOW_STATE: "com.indexgate.shadow.state_changed",
    AuditKind.SHADOW_REFUSED: "com.indexgate.shadow.refused",
    AuditKind.SWITCHED: "com.indexgate.shadow.switched",
    AuditKind.SWITCH_FAILED: "com.indexgate.shadow.switch_failed",
    AuditKind.ROLLED_BACK: "com.indexgate.shadow.rolled_back",
}


def to_cloudevent(entry: AuditEntry, source: str) -> CloudEvent:
    """The CloudEvent announcing ``entry``; ``data`` is the audit entry itself."""
    attributes = {
        "id": entry.entry_id,
        "source": source,
        "type": OUTGOING_TYPES.get(entry.kind, TYPE_PREFIX + str(entry.kind)),
        "time": entry.at,
        "datacontenttype": "application/json",
    }
    if entry.branch:
        attributes["subject"] = entry.branch
    return CloudEvent(attributes, entry.model_dump(mode="json", exclude={"published"}))
