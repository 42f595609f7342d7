"""What a shadow switch is configured with and answers: its policy (from ``Settings``), its
result, and the two lock use cases it needs (``SwitchLocks``, which ``Service`` provides, so
``shadow_service`` never imports ``service``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from indexgate import shadows
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin, Outcome, Status
from indexgate.schemas.records import ReleaseReason
from indexgate.schemas.shadows import Verification
from indexgate.settings import Settings
from indexgate.verifiers import Verifiers


class SwitchLocks(Protocol):
    """The two lock use cases a switch needs (``indexgate.service.Service`` has them)."""

    def acquire(self, branch: str, request: AcquireRequest, origin: Origin) -> Outcome: ...

    def release(self, branch: str, job_id: str, reason: ReleaseReason, origin: Origin) -> Outcome: ...


@dataclass(frozen=True)
class SwitchPolicy:
    strategy: Literal["pointer", "filesystem"] = "pointer"
    links_dir: Path | None = None
    lock_ttl_s: float = 60.0
    lock_heartbeat_interval_s: float = 2.0
    missed_heartbeats: int = 3
    max_shrink_fraction: float = 0.5
    auto_switch: bool = False
    default_index_type: str = "SEARCH_INDEX"
    verifiers: Verifiers = field(default_factory=Verifiers)

    @property
    def claim_s(self) -> float:
        """A claim lives exactly as long as an unrefreshed switch lock."""
        return self.lock_heartbeat_interval_s * self.missed_heartbeats

    @classmethod
    def from_settings(cls, s: Settings) -> "SwitchPolicy":
        return cls(strategy=s.switch_strategy, links_dir=s.index_links_dir or s.data_dir / "indexes",
                   lock_ttl_s=s.switch_lock_ttl_s, lock_heartbeat_interval_s=s.switch_lock_heartbeat_interval_s,
                   missed_heartbeats=s.missed_heartbeats, max_shrink_fraction=s.max_shrink_fraction,
                   auto_switch=s.auto_switch, default_index_type=s.default_index_type,
                   verifiers=Verifiers.from_settings(s))


SWITCH_STATUSES = (Status.SWITCHED, Status.VALIDATION_FAILED, Status.REFUSED, Status.BRANCH_BUSY, Status.ROLLED_BACK)


class SwitchResult(BaseModel):
    status: Status  # one of SWITCH_STATUSES
    shadow_index_id: str
    branch: str
    index_type: str
    detail: str = ""
    checks: list[shadows.CheckResult] = []
    fencing_token: int | None = None
    switch_duration_ms: float | None = None
    blackout_ms: float | None = None
    verification: Verification | None = None
