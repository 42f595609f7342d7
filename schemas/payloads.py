"""The ``data`` of each funnel CloudEvent, validated with pydantic v2.

Canonical field names come first; the field names of the original design documents
(``branch_name``, ``records_indexed``, ``shadow_index_id``,
``progress_info.indexing_progress``) are accepted beside them as aliases, because a funnel
built from those documents sends exactly those. Unknown extra fields are kept, not refused:
the funnel may add context (``build_config``) without breaking the worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasPath,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

MAX_NAME = 512  # longest branch, resource type, job id or other name (events, the HTTP API, the CLI)
NonEmpty = Field(min_length=1, max_length=MAX_NAME)
MAX_SECONDS = 10 * 365 * 86_400  # durations beyond ten years are nonsense, and overflow datetime


def _huge_int_capped(value: Any) -> Any:
    """An integer too large to be a float (``1`` and 400 zeros) is beyond the bound too, not "not a number"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_SECONDS:
        return MAX_SECONDS
    return value


def _capped(value: float) -> float:
    return min(value, float(MAX_SECONDS))


# An estimate, not a promise: one beyond MAX_SECONDS is read as MAX_SECONDS, so the heartbeat
# carrying it still counts (the TTL it may extend is capped by max_ttl_s anyway). NaN, inf and
# negatives stay invalid. Durations that configure a lock (``ttl_s``...) stay strict.
CappedSeconds = Annotated[float, BeforeValidator(_huge_int_capped), Field(ge=0), AfterValidator(_capped)]


class _Payload(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True, allow_inf_nan=False)


class StartedData(_Payload):
    """``com.oms.indexing.started``: a job begins indexing a branch."""

    job_id: str = NonEmpty
    branch: str = Field(
        min_length=1, max_length=512, validation_alias=AliasChoices("branch", "branch_name")
    )
    # bounded by INDEXGATE_MAX_RESOURCE_TYPES_PER_EVENT (the service; the body size bounds decoding)
    resource_types: list[str] = Field(default_factory=list)
    indexing_mode: Literal["traditional", "shadow"] = "traditional"
    index_type: str | None = None
    shadow_index_id: str | None = Field(None, min_length=1, max_length=512)
    heartbeat_interval_s: float | None = Field(None, gt=0, le=86_400)
    ttl_s: float | None = Field(None, gt=0, le=MAX_SECONDS)
    service_name: str | None = Field(None, max_length=512)
    reason: str | None = Field(None, max_length=4096)

    @model_validator(mode="after")
    def _resource_types_are_names(self) -> "StartedData":
        if any(not isinstance(rt, str) or not rt.strip() for rt in self.resource_types):
            raise ValueError("resource_types must be non-empty strings (not blank)")
        return self


class HeartbeatData(_Payload):
    """``com.oms.indexing.heartbeat`` (and ``.progress``): the job is alive."""

    job_id: str = NonEmpty
    service_name: str | None = Field(None, max_length=512)
    status: str = "healthy"
    progress_percent: float | None = Field(
        None,
        ge=0,
        le=100,
        validation_alias=AliasChoices(
            "progress_percent", AliasPath("progress_info", "indexing_progress")
        ),
    )
    estimated_remaining_s: CappedSeconds | None = Field(
        None,
        validation_alias=AliasChoices(
            "estimated_remaining_s", AliasPath("progress_info", "estimated_remaining_s")
        ),
    )
    record_count: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("record_count", "records_indexed")
    )


class JobEnd(_Payload):
    """A job ends; the seed's shadow completion names the build, not the job."""

    job_id: str | None = Field(None, min_length=1, max_length=512)
    shadow_index_id: str | None = Field(None, min_length=1, max_length=512)
    branch: str | None = Field(None, validation_alias=AliasChoices("branch", "branch_name"))

    @model_validator(mode="after")
    def _names_the_job(self) -> "JobEnd":
        if not self.job_id and not self.shadow_index_id:
            raise ValueError("job_id (or shadow_index_id) is required")
        return self


class CompletedData(JobEnd):
    """``com.oms.indexing.completed`` / ``com.oms.shadow.indexing.completed``."""

    record_count: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("record_count", "records_indexed")
    )
    index_size_bytes: int | None = Field(None, ge=0)
    location: str | None = None


class FailedData(JobEnd):
    """``com.oms.indexing.failed``."""

    error: str | None = Field(None, max_length=8192)


class CancelledData(JobEnd):
    """``com.oms.indexing.cancelled``."""

    reason: str | None = Field(None, max_length=4096)


class SwitchRequestData(_Payload):
    """``com.oms.shadow.switch.requested``: switch a BUILT shadow in."""

    shadow_index_id: str | None = Field(None, min_length=1, max_length=512)
    job_id: str | None = Field(None, min_length=1, max_length=512)
    force: bool = False
    validation_checks: list[str] = Field(
        default_factory=lambda: ["RECORD_COUNT_VALIDATION", "SIZE_COMPARISON", "INTEGRITY_CHECK"]
    )
    backup_current: bool = True

    @model_validator(mode="after")
    def _names_the_build(self) -> "SwitchRequestData":
        if not self.shadow_index_id and not self.job_id:
            raise ValueError("shadow_index_id (or job_id) is required")
        return self

    @property
    def ref(self) -> str:
        return self.shadow_index_id or self.job_id or ""
