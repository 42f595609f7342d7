"""Funnel clock skew, pure: the instant an event says its holder was alive.

A heartbeat's liveness comes from the funnel's ``time`` attribute, so that a heartbeat that
waited in a backlog counts when it was sent, not when it arrived. But the funnel's clock may
be off. The rule, per job (and per shadow build):

- Every event of the job that has a ``time`` is an observation ``offset = time - received``
  (seconds, received = this worker's clock when it applies the event). It equals the funnel
  clock's skew minus the event's transit (broker, queue, backlog); transit is never
  negative, so the **largest** offset among the job's latest ``window`` believed
  observations is the estimate of the skew: it comes from the least delayed of them. The
  job keeps those observations (``ClockSkew.recent_offsets_s``), from its ``started`` on.
  ``window`` is ``missed_heartbeats - 1`` (at least 2): the number of on-schedule
  heartbeats a job can spend before its deadline.
- An observation above ``+max_skew_s`` is not believed (it is reported, not kept): transit
  cannot explain it, and one bogus far-future ``time`` must not shift every later heartbeat
  of the job into the past. Nor does its ``time`` become the job's newest event time.
- The correction is that estimate, clamped to ``[-max_skew_s, +max_skew_s]``. An event counts
  at ``time - correction`` (``alive_at``), and never later than its receipt.
- Heartbeats are ordered by that corrected instant, not by their raw ``time``: one that
  counts before the newest applied is stale (its progress is not applied), yet its
  observation is kept, so the estimate keeps moving.

What follows:

- A clock off by up to ``max_skew_s`` either way keeps its locks alive with heartbeats on
  schedule: their corrected times are their send times on our clock.
- A heartbeat that waited in a backlog counts near when it was sent as long as one of the
  job's last ``window`` events was prompt (its own offset is lower than theirs), so it
  cannot make a holder that died meanwhile look alive; a dead lock is never revived anyway
  (``indexgate.locks``). In a run of backlogged events, the later ones count at their send
  time plus the least delay among the last ``window``: the price of the next point.
- One outlying ``time`` ahead of the funnel's clock but inside the bound (believed: it
  might be a forward step), or a backward step of the funnel's clock (a fast clock
  corrected), makes the next ``window - 1`` heartbeats look older than they are (stale);
  then the estimate has forgotten the high observations and heartbeats count on schedule
  again. With ``window = missed_heartbeats - 1`` a job heartbeating on schedule survives
  either (``missed_heartbeats`` >= 3; the default is 3).
- The first event has nothing to compare with: if it was itself delayed, the estimate
  includes that delay until a prompter event raises it (the next on-time heartbeat).
- A forward step of the funnel's clock (a slow clock corrected) raises the estimate at once.
- Beyond the bound: a clock slower than ``max_skew_s`` is corrected by ``max_skew_s`` only,
  so its heartbeats look older by the excess and its locks die once the excess exceeds
  what the deadline allows; a clock faster than that has no believed observation, so its
  events count at their receipt (no backlog protection). ``beyond_bound`` reports both.
- An event without ``time`` counts at its receipt and changes no estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from indexgate.schemas.records import ClockSkew

MAX_LOOKBACK_S = 10 * 365 * 86_400.0  # an event older than this says nothing more than "long ago"
MIN_WINDOW = 2  # below this an estimate is only the event's own offset: no backlog protection at all


def window(missed_heartbeats: int) -> int:
    """How many believed observations the estimate remembers: a high one is forgotten after
    this many later events, still before the deadline of a job heartbeating on schedule."""
    return max(MIN_WINDOW, missed_heartbeats - 1)


def believed(event_time: datetime, received: datetime, max_skew_s: float) -> bool:
    """Whether the event's ``time`` is one transit can explain (not beyond the bound ahead)."""
    return (event_time - received).total_seconds() <= max_skew_s


def believed_time(event_time: datetime | None, received: datetime, max_skew_s: float) -> datetime | None:
    """The event's ``time`` if it is believed, else None: what a job keeps as its newest event time."""
    return event_time if event_time is not None and believed(event_time, received, max_skew_s) else None


def observe(clock: ClockSkew, event_time: datetime | None, received: datetime, max_skew_s: float,
            window: int = MIN_WINDOW) -> ClockSkew:
    """The estimate after one more event (unchanged for an event without ``time``)."""
    if event_time is None:
        return clock
    offset = (event_time - received).total_seconds()
    recent = clock.recent_offsets_s or ((clock.offset_s,) if clock.offset_s is not None else ())  # older records
    if believed(event_time, received, max_skew_s):
        recent = (*recent, offset)[-window:]
    return ClockSkew(offset_s=max(recent) if recent else None, last_offset_s=round(offset, 6),
                     observations=clock.observations + 1, recent_offsets_s=recent)


@dataclass(frozen=True)
class Beat:
    """One heartbeat, judged: the job's estimate including it, and when it counts."""

    clock: ClockSkew
    alive_at: datetime  # on our clock; heartbeats are ordered by it
    believed_time: datetime | None  # its ``time`` if believed: it may become the job's newest event time


def beat(clock: ClockSkew, event_time: datetime | None, received: datetime, max_skew_s: float,
         missed_heartbeats: int) -> Beat:
    """Observe a heartbeat and say when it counts (the rule locks and shadow builds share)."""
    seen = observe(clock, event_time, received, max_skew_s, window(missed_heartbeats))
    return Beat(clock=seen, alive_at=alive_at(seen, event_time, received, max_skew_s),
                believed_time=believed_time(event_time, received, max_skew_s))


def stale(beat: Beat, newest: datetime | None) -> str | None:
    """Why the heartbeat changes nothing but the estimate (it counts before the newest applied), or None."""
    if newest is None or beat.alive_at >= newest:
        return None
    return (f"stale heartbeat: it counts at {beat.alive_at.isoformat()} (its time corrected for the funnel's clock), "
            f"before the newest applied ({newest.isoformat()})")


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
