"""Funnel clock skew, pure: the instant an event says its holder was alive.

A heartbeat's liveness comes from the funnel's ``time`` attribute, so that a heartbeat that
waited in a backlog counts when it was sent, not when it arrived. But the funnel's clock may
be off. The rule, per job (and per shadow build):

- Every event of the job that has a ``time`` is an observation ``offset = time - received``
  (seconds, received = this worker's clock when it applies the event). It equals the funnel
  clock's skew minus the event's transit (broker, queue, backlog); transit is never
  negative, so the **largest** offset seen is the best estimate of the skew: it comes from
  the least delayed event. The job keeps it (``ClockSkew.offset_s``), from its ``started`` on.
- An observation above ``+max_skew_s`` is not believed (it is reported, not kept): transit
  cannot explain it, and one bogus far-future ``time`` must not shift every later heartbeat
  of the job into the past.
- The correction is that estimate, clamped to ``[-max_skew_s, +max_skew_s]``. An event counts
  at ``time - correction``, and never later than its receipt.

What follows:

- A clock off by up to ``max_skew_s`` either way keeps its locks alive with heartbeats on
  schedule: their corrected times are their send times on our clock.
- A heartbeat that waited in a backlog counts near when it was sent (its own offset is lower
  than the estimate the job's earlier, prompt events gave), so it cannot make a holder that
  died meanwhile look alive; a dead lock is never revived anyway (``indexgate.locks``).
- The first event has nothing to compare with: if it was itself delayed, the estimate
  includes that delay until a prompter event raises it (the next on-time heartbeat).
- A forward step of the funnel's clock (a slow clock corrected) raises the estimate at once.
  A backward step (a fast clock corrected) cannot be told from late delivery, event by
  event: the job's later heartbeats look older by the step (and are ignored as stale while
  their ``time`` is below the newest applied), so a job survives a backward step shorter
  than ``(missed_heartbeats - 1) x interval``; a new job starts a fresh estimate.
- Beyond the bound: a clock slower than ``max_skew_s`` is corrected by ``max_skew_s`` only,
  so its heartbeats look older by the excess and its locks die once the excess exceeds
  what the deadline allows; a clock faster than that has no believed observation, so its
  events count at their receipt (no backlog protection). ``beyond_bound`` reports both.
- An event without ``time`` counts at its receipt and changes no estimate.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from indexgate.schemas.records import ClockSkew

MAX_LOOKBACK_S = 10 * 365 * 86_400.0  # an event older than this says nothing more than "long ago"


def observe(clock: ClockSkew, event_time: datetime | None, received: datetime, max_skew_s: float) -> ClockSkew:
    """The estimate after one more event (unchanged for an event without ``time``)."""
    if event_time is None:
        return clock
    offset = (event_time - received).total_seconds()
    believed = offset <= max_skew_s
    best = clock.offset_s
    if believed:
        best = offset if best is None else max(best, offset)
    return ClockSkew(offset_s=best, last_offset_s=round(offset, 6), observations=clock.observations + 1)


def correction_s(clock: ClockSkew, max_skew_s: float) -> float:
    """Seconds to subtract from the funnel's ``time`` to get our clock's instant."""
    if clock.offset_s is None:
        return 0.0
    return max(-max_skew_s, min(max_skew_s, clock.offset_s))


def alive_at(clock: ClockSkew, event_time: datetime | None, received: datetime, max_skew_s: float) -> datetime:
    """When the event says its holder was alive, on our clock; ``clock`` already includes it."""
    if event_time is None:
        return received
    # in seconds from receipt, so a ``time`` at the calendar's edge (year 1 or 9999) cannot overflow
    delta_s = (event_time - received).total_seconds() - correction_s(clock, max_skew_s)
    return received + timedelta(seconds=max(min(delta_s, 0.0), -MAX_LOOKBACK_S))


def beyond_bound(clock: ClockSkew, max_skew_s: float) -> bool:
    """Whether the funnel's clock looks off by more than the bound (slow or fast)."""
    slow = clock.offset_s is not None and clock.offset_s < -max_skew_s
    fast = clock.last_offset_s is not None and clock.last_offset_s > max_skew_s
    return slow or fast
