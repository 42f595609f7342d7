"""Records of shadow builds and of the active index pointer per ``(branch, index_type)``.

The ``IndexState`` aggregate is what one compare-and-swap changes together: the builds,
the active pointer (what readers use, like an Elasticsearch alias), the backups, and the
highest fencing token a pointer update has carried.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ShadowState(StrEnum):
    PREPARING = "PREPARING"
    BUILDING = "BUILDING"
    BUILT = "BUILT"
    SWITCHING = "SWITCHING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CLEANUP = "CLEANUP"  # superseded or rolled back; kept as a backup until removed


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShadowBuild(_Record):
    shadow_index_id: str
    job_id: str
    branch: str
    index_type: str
    resource_types: list[str] = Field(default_factory=list)
    state: ShadowState = ShadowState.PREPARING
    holder: str
    created_at: datetime
    completed_at: datetime | None = None
    heartbeat_interval_s: float
    last_heartbeat: datetime
    last_event_time: datetime | None = None
    build_progress_percent: float = 0.0
    record_count: int | None = None
    index_size_bytes: int | None = None
    location: str | None = None
    estimated_remaining_s: float | None = None
    failure_reason: str | None = None
    switch_claimed_at: datetime | None = None
    switch_claim_expires_at: datetime | None = None
    switch_fencing_token: int | None = None
    switch_duration_ms: float | None = None
    blackout_ms: float | None = None
    switched_at: datetime | None = None
    finished_at: datetime | None = None  # when it became FAILED / CANCELLED / CLEANUP (retention counts from it)

    @property
    def switch_ready(self) -> bool:
        return self.state is ShadowState.BUILT


class IndexPointer(_Record):
    """Which index readers use now, and the fencing token of the switch that set it."""

    shadow_index_id: str
    location: str | None
    switched_at: datetime
    fencing_token: int
    record_count: int | None = None
    index_size_bytes: int | None = None


class IndexState(_Record):
    branch: str
    index_type: str
    version: int = 0
    builds: list[ShadowBuild] = Field(default_factory=list)
    active: IndexPointer | None = None
    backups: list[IndexPointer] = Field(default_factory=list)  # newest last
    replaced: IndexPointer | None = None  # what the last swap replaced: the automatic rollback's target
    pointer_token: int = 0  # highest fencing token a pointer update carried
    # the earliest instant the shadow sweep has something to do here (a build's deadline, a
    # claim's expiry, a finished build's retention); None = nothing. Set at every save by
    # ``shadows.next_due``; the store indexes it (``Store.indexes_due``)
    due_at: datetime | None = None

    @property
    def key(self) -> str:
        return index_key(self.branch, self.index_type)

    def build(self, ref: str) -> ShadowBuild | None:
        """The build named by shadow id or job id."""
        return next((b for b in self.builds if ref in (b.shadow_index_id, b.job_id)), None)


def index_key(branch: str, index_type: str) -> str:
    return f"{branch}|{index_type}"
