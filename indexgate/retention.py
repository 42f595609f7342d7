"""Retention: what the store keeps only for a while, pruned by a beat job.

- **Inbox keys** (``source|id`` of applied events, the exact-duplicate guard) for
  ``inbox_retention_s``. A key must outlive every way its event can be delivered again;
  ``Settings`` refuses a shorter retention (``inbox_retention_floor_s``, README
  "Retention"). One path has no bound of its own: a batch that hits a store outage is
  retried, whole, until the store is back, so it can carry an event applied just before the
  outage for as long as the outage lasts. Retention cannot run during an outage either, so
  a run that follows a gap (the previous run more than two intervals ago, or none recorded)
  prunes no inbox keys: by the next run the retried batches have been applied
  (``retention_interval_s`` is at least a retry backoff plus a task's time limit).
- **Audit entries** for ``audit_retention_s``, published ones only: an unpublished entry is
  the outbox, and stays until the relay has sent it, however old.
- **Dead letters** for ``dead_letter_retention_s``.

Finished shadow builds are forgotten by the shadow sweep when their retention ends
(``due.index_due`` makes their index due then), not here. After a prune the store gives
the space back (``reclaim_space``); MongoDB's TTL indexes do the same pruning on the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel

from indexgate.clock import Clock
from indexgate.leases import UNFENCED, Fence
from indexgate.settings import Settings
from indexgate.store import Store

RAN_AT = "retention_ran_at"  # the store marker of the last run


@dataclass(frozen=True)
class RetentionPolicy:
    inbox_s: float = 86_400
    audit_s: float = 30 * 86_400
    dead_letter_s: float = 30 * 86_400
    interval_s: float = 3600

    @classmethod
    def from_settings(cls, s: Settings) -> "RetentionPolicy":
        return cls(inbox_s=s.inbox_retention_s, audit_s=s.audit_retention_s, dead_letter_s=s.dead_letter_retention_s,
                   interval_s=s.retention_interval_s)


class Pruned(BaseModel):
    """What one retention run removed (``inbox_held_back``: it followed a gap, see above)."""

    inbox: int = 0
    audit: int = 0
    dead_letters: int = 0
    inbox_held_back: bool = False


class Retention:
    def __init__(self, store: Store, policy: RetentionPolicy, clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def run(self, fence: Fence = UNFENCED) -> Pruned:
        """Prune what is past its retention, then give the space back; idempotent. A run sent
        under a beat lease that changed hands stops first (``Fenced``)."""
        fence.check()
        now = self.clock()
        last = self.store.marker(RAN_AT)
        gap = last is None or now - last > timedelta(seconds=2 * self.policy.interval_s)
        pruned = Pruned(
            inbox=0 if gap else self.store.prune_inbox(now - timedelta(seconds=self.policy.inbox_s)),
            audit=self.store.prune_audit(now - timedelta(seconds=self.policy.audit_s)),
            dead_letters=self.store.prune_dead_letters(now - timedelta(seconds=self.policy.dead_letter_s)),
            inbox_held_back=gap,
        )
        self.store.set_marker(RAN_AT, now)
        if pruned.inbox or pruned.audit or pruned.dead_letters:
            self.store.reclaim_space()
        return pruned
