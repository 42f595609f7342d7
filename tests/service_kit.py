"""Test doubles shared by the service-level tests: a clock the test moves, an outbox that
records (or refuses) what the service announces, and the policy they all run under."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from indexgate.locks import Policy
from indexgate.schemas.records import AuditKind

T0 = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
POLICY = Policy(default_ttl_s=3600, max_ttl_s=7200, default_heartbeat_interval_s=60, missed_heartbeats=3)


@dataclass
class MutableClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Outbox:
    """A notify callback that records what it was given, and can be made to fail."""

    sent: list = field(default_factory=list)
    failing: bool = False

    def __call__(self, entries) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.sent += list(entries)

    def kinds(self) -> list[AuditKind]:
        return [entry.kind for entry in self.sent]
