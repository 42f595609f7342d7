"""The event catalog: CloudEvent type -> payload model -> one service call.

This table is the whole contract between the funnel and the worker; the README's event
catalog is written from it. Unknown types are malformed (dead-lettered), not ignored, so a
funnel that starts sending something new is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ValidationError

from indexgate.events.decode import IncomingEvent
from indexgate.errors import MalformedEvent
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.service import Service
from indexgate.schemas.payloads import (
    CancelledData,
    CompletedData,
    FailedData,
    HeartbeatData,
    StartedData,
    SwitchRequestData,
)
from indexgate.schemas.records import ReleaseReason

Handler = Callable[[Service, BaseModel, Origin], Outcome]


@dataclass(frozen=True)
class Route:
    model: type[BaseModel]
    handle: Handler
    summary: str
    kind: str  # names its Celery task (``indexgate.<kind>``), its metrics and log lines


UNKNOWN_KIND = "unknown"  # a message whose type is not in the catalog, or cannot be told


def _end(reason: ReleaseReason) -> Handler:
    return lambda service, data, origin: service.end_job(data, reason, origin)


ROUTES: dict[str, Route] = {
    "com.oms.indexing.started": Route(
        StartedData, lambda s, d, o: s.start(d, o), "a job starts; traditional mode locks, shadow mode builds",
        "indexing.started"),
    "com.oms.indexing.heartbeat": Route(
        HeartbeatData, lambda s, d, o: s.heartbeat(d, o), "the job is alive; may carry progress and ETA",
        "indexing.heartbeat"),
    "com.oms.indexing.progress": Route(
        HeartbeatData, lambda s, d, o: s.heartbeat(d, o), "progress report; counts as a heartbeat",
        "indexing.progress"),
    "com.oms.indexing.completed": Route(CompletedData, _end(ReleaseReason.COMPLETED), "the job finished",
                                        "indexing.completed"),
    "com.oms.shadow.indexing.completed": Route(
        CompletedData, _end(ReleaseReason.COMPLETED), "seed spelling of a shadow build's completion",
        "shadow.indexing.completed"),
    "com.oms.indexing.failed": Route(FailedData, _end(ReleaseReason.FAILED), "the job failed", "indexing.failed"),
    "com.oms.indexing.cancelled": Route(CancelledData, _end(ReleaseReason.CANCELLED), "the job was cancelled",
                                        "indexing.cancelled"),
    "com.oms.shadow.switch.requested": Route(
        SwitchRequestData, lambda s, d, o: s.shadows.switch_requested(d, o), "switch a BUILT shadow index in",
        "shadow.switch"),
}


def validate(event: IncomingEvent) -> tuple[Route, BaseModel]:
    """The route and validated payload of ``event``, or ``MalformedEvent`` saying why not."""
    route = ROUTES.get(event.type)
    if route is None:
        raise MalformedEvent(f"unknown event type {event.type!r}; known types: {', '.join(sorted(ROUTES))}")
    try:
        return route, route.model.model_validate(event.data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise MalformedEvent(f"{event.type} data is invalid: {problems}") from exc


def apply(service: Service, event: IncomingEvent) -> Outcome:
    """Validate ``event`` and hand it to the service; duplicates change nothing."""
    route, payload = validate(event)
    origin = Origin(actor=event.source, key=event.key, time=event.time)
    if service.already_applied(origin):
        return Outcome(status=Status.DUPLICATE, detail=f"event {event.key} was already applied")
    return route.handle(service, payload, origin)
