"""What the HTTP API answers, as pydantic models: they are its OpenAPI schema.

The check's answer and a lock's shape are the domain's own (``permissions.Decision``,
``permissions.LockStatus``), so ``indexgate check --json``, ``GET /v1/check`` and
``indexgate.client`` agree field for field; audit entries and dead letters are the stored
records. Only the shapes that exist for HTTP alone live here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from indexgate.schemas.payloads import MAX_NAME  # noqa: F401 (longest name a parameter may carry)
from indexgate.schemas.shadows import IndexPointer, ShadowState
from indexgate.store.base import MAX_READ_LIMIT as MAX_LIMIT  # noqa: F401 (the CLI's bound too)

MAX_ACTION = 64


class ErrorCode(StrEnum):
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_REQUEST = "bad_request"
    STORE_UNAVAILABLE = "store_unavailable"  # unreachable, locked, or failing
    STORE_NOT_INITIALIZED = "store_not_initialized"  # no indexgate store at the URL: nothing was created
    STORE_TIMEOUT = "store_timeout"  # no answer within INDEXGATE_API_STORE_TIMEOUT_S


class ErrorBody(BaseModel):
    """Every 401, 404 and 503: what went wrong, in words an operator can act on."""

    error: ErrorCode
    detail: str


class LockSummary(BaseModel):
    healthy: int
    warning: int
    critical: int
    total: int


class ShadowStatus(BaseModel):
    """A shadow build (field names as in the seed design, like ``indexgate shadows status --json``)."""

    shadow_index_id: str
    job_id: str
    branch_name: str
    index_type: str
    state: ShadowState
    build_progress_percent: float
    switch_ready: bool
    record_count: int | None
    index_size_bytes: int | None
    location: str | None
    created_at: datetime
    completed_at: datetime | None
    switched_at: datetime | None
    switch_fencing_token: int | None
    switch_duration_ms: float | None
    blackout_ms: float | None
    failure_reason: str | None


class ActiveIndex(BaseModel):
    """The pointer readers use for ``(branch, index_type)``; ``active`` is null before the
    first switch."""

    branch: str
    index_type: str
    active: IndexPointer | None


class Liveness(BaseModel):
    status: str = "ok"


class Probe(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    """200 when both answer, 503 otherwise; each part says why."""

    ready: bool
    store: Probe
    broker: Probe
