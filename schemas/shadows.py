"""Records of shadow builds and of the active index pointer per ``(branch, index_type)``.

The ``IndexState`` aggregate is what one compare-and-swap changes together: the builds,
the active pointer (what readers use, like an Elasticsearch alias), the backups, and the
highest fencing token a pointer update has carried.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, computed_field

from indexgate.schemas.records import ClockSkew


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


class VerifyOutcome(StrEnum):
    VERIFIED = "verified"  # a verifier for the location's kind checked it: it answers
    FAILED = "failed"  # a verifier checked it and it does not answer: the switch is rolled back
    NO_VERIFIER = "no_verifier"  # nothing can check this kind (an opaque pointer): switched, unverified


class Verification(_Record):
    """What post-switch verification said about a location (``indexgate.verifiers``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str  # file, http, https, es, index-name, ... (``indexgate.locations.kind_of``)
    outcome: VerifyOutcome
    reason: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verified(self) -> bool:
        return self.outcome is VerifyOutcome.VERIFIED


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
    last_event_time: datetime | None = None  # the newest believed ``time`` of its events (indexgate.skew)
    last_alive_at: datetime | None = None  # when its newest applied event counts, on our clock: heartbeats are ordered by it
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
    verification: Verification | None = None  # of the last switch of this build
    clock: ClockSkew = Field(default_factory=ClockSkew)

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
    verification: Verification | None = None  # None until recorded (just after the switch lock is released)


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
    # ``due.index_due``; the store indexes it (``Store.indexes_due``)
    due_at: datetime | None = None

    @property
    def key(self) -> str:
        return index_key(self.branch, self.index_type)

    def build(self, ref: str) -> ShadowBuild | None:
        """The build named by shadow id or job id."""
        return next((b for b in self.builds if ref in (b.shadow_index_id, b.job_id)), None)


def index_key(branch: str, index_type: str) -> str:
    return f"{branch}|{index_type}"
