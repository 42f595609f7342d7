"""What every chaos scenario shares: the result row, the ledger of published events and
the accounting that turns the store's contents into the row's numbers. Private brokers
are in ``servers.py``, worker processes in ``procs.py``.

Definitions (the same for every scenario):

- every published event has a unique id (``chaos-<run>-<n>``), so it is found by
  ``store.seen("source|id")`` or, if it was dead-lettered, in the dead letter's raw body
  (or headers, for binary mode and for hostile messages that have no usable id);
- *applied* = seen or dead-lettered; *lost* = neither;
- *applied twice* = one cause (``source|id``) with non-ignored audit entries from more
  than one commit (the entries of one commit share ``at``), or one job ACQUIRED in more
  than one commit;
- *locks stuck past deadline* = a stored lock still ``in_force`` at or after
  ``min(expires_at, heartbeat deadline)``, plus any lock still stored whose job's end
  event (completed / failed / cancelled) was sent, or every job of the run ended.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Callable, Iterable

from indexgate import locks
from indexgate.clock import utcnow
from indexgate.locks import conflicts
from indexgate.service import Service
from indexgate.schemas.records import AuditEntry, AuditKind

TOKEN_RE = re.compile(r"chaos-[0-9a-f]{8}-\d{6}")
END_TYPES = {"com.oms.indexing.completed", "com.oms.indexing.failed", "com.oms.indexing.cancelled"}


# --- the row ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Counts:
    """What the store shows of a run's events (see the module doc for each definition)."""

    published: int = 0
    applied_once: int = 0
    lost: int = 0
    applied_twice: int = 0
    stuck: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Row(Counts):
    """One line of the table: a scenario's counts, added up over its runs, and the rest."""

    scenario: str
    runs: int = 0  # fault injections (kills, restarts, outages, pauses) or generated batches
    crashes: int = 0
    figures: dict[str, object] = field(default_factory=dict)  # scenario-specific, for tests

    def note(self, text: str) -> None:
        self.notes.append(text)

    def take(self, counts: Counts) -> None:
        for counted in fields(Counts):
            setattr(self, counted.name, getattr(self, counted.name) + getattr(counts, counted.name))


HEADER = ("scenario", "runs", "events published", "applied once", "lost", "applied twice",
          "locks stuck past deadline", "worker crashes")


def table(rows: list[Row]) -> str:
    cells = [HEADER] + [(r.scenario, r.runs, r.published, r.applied_once, r.lost, r.applied_twice, r.stuck,
                         r.crashes) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(HEADER))]
    lines = []
    for n, cell in enumerate(cells):
        lines.append(" | ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(cell, widths))))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the ledger and the accounting -----------------------------------------------------


def run_tag() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Published:
    key: str | None  # "source|id" when the message carries a usable id, else None
    token: str  # unique; the event id, or an x-chaos-token header for id-less messages
    type: str | None = None
    job: str | None = None
    category: str = "valid"  # hostile: what the generator meant it to be
    expect_dead: bool = False  # hostile: the generator built it to be dead-lettered


class Ledger:
    """Every event published in a run, by token."""

    def __init__(self) -> None:
        self.tag = run_tag()
        self.events: dict[str, Published] = {}
        self._n = 0

    def new_token(self) -> str:
        self._n += 1
        return f"chaos-{self.tag}-{self._n:06d}"

    def add(self, event: Published) -> None:
        assert event.token not in self.events, f"token {event.token} published twice in the ledger"
        self.events[event.token] = event

    def __len__(self) -> int:
        return len(self.events)

    def ended_jobs(self) -> set[str]:
        """Jobs whose end (completed / failed / cancelled) the funnel sent - applied or not: a
        lost end leaves a lock behind, which is then counted as stuck too."""
        return {e.job for e in self.events.values() if e.type in END_TYPES and e.job and not e.expect_dead}


def all_audit(store) -> list[AuditEntry]:
    """The whole audit trail, oldest first (commit order on SQLite)."""
    return list(reversed(store.audit(10**9)))


def dead_tokens(store) -> dict[str, str]:
    """token -> dead-letter reason, from the raw bodies (and headers) the letters keep."""
    import base64

    found: dict[str, str] = {}
    for letter in store.dead_letters(10**9):
        body = letter.body
        if letter.body_encoding == "base64":
            body = base64.b64decode(letter.body).decode("utf-8", "replace")
        for token in TOKEN_RE.findall(body) + TOKEN_RE.findall(" ".join(letter.headers.values())):
            found.setdefault(token, letter.reason)
    return found


def applied_tokens(store, ledger: Ledger, pending: Iterable[str] | None = None,
                   dead: dict[str, str] | None = None) -> set[str]:
    dead = dead_tokens(store) if dead is None else dead
    out = set()
    for token in (ledger.events if pending is None else pending):
        event = ledger.events[token]
        if token in dead or (event.key is not None and store.seen(event.key)):
            out.add(token)
    return out


def wait_applied(store, ledger: Ledger, timeout_s: float, every_s: float = 0.2,
                 alive: Callable[[], None] | None = None) -> set[str]:
    """Poll until every ledger event is applied or ``timeout_s`` passes; the applied set."""
    deadline = time.monotonic() + timeout_s
    applied: set[str] = set()
    while True:
        pending = [t for t in ledger.events if t not in applied]
        if pending:
            applied |= applied_tokens(store, ledger, pending)
        if len(applied) == len(ledger) or time.monotonic() > deadline:
            return applied
        if alive:
            alive()
        time.sleep(every_s)


def account(service: Service, ledger: Ledger, all_jobs_ended: bool = False,
            now: datetime | None = None) -> Counts:
    """The row's numbers for one run, from the store alone (plus the ledger)."""
    store = service.store
    dead = dead_tokens(store)
    applied = applied_tokens(store, ledger, dead=dead)
    audit = all_audit(store)
    commits: dict[str, set] = defaultdict(set)
    acquired: dict[str, set] = defaultdict(set)
    for entry in audit:
        if entry.cause and entry.kind is not AuditKind.IGNORED:
            commits[entry.cause].add(entry.at)
        if entry.kind is AuditKind.ACQUIRED:
            acquired[entry.job_id].add(entry.at)
    twice_causes = {cause for cause, ats in commits.items() if len(ats) > 1}
    twice_jobs = {job for job, ats in acquired.items() if len(ats) > 1}
    by_key = {e.key: t for t, e in ledger.events.items() if e.key}
    twice_tokens = {by_key[c] for c in twice_causes if c in by_key}
    counts = Counts(published=len(ledger))
    counts.lost = len(ledger) - len(applied)
    counts.applied_once = len(applied - twice_tokens)
    counts.applied_twice = len(twice_tokens) + len(twice_causes - set(by_key)) + len(twice_jobs)
    if counts.lost:
        lost = sorted(set(ledger.events) - applied)
        kinds = defaultdict(int)
        for token in lost:
            kinds[ledger.events[token].type or ledger.events[token].category] += 1
        counts.notes.append(f"LOST {counts.lost}: {dict(kinds)}; e.g. {lost[:3]}")
    if twice_causes or twice_jobs:
        sample = sorted(twice_causes)[:3]
        detail = {c: sorted({str(e.kind) for e in audit if e.cause == c}) for c in sample}
        counts.notes.append(f"APPLIED TWICE: {len(twice_causes)} cause(s) in >1 commit {detail}; "
                            f"{len(twice_jobs)} job(s) acquired in >1 commit {sorted(twice_jobs)[:3]}")
    stuck = stuck_locks(service, ledger.ended_jobs(), all_jobs_ended, now)
    counts.stuck = len(stuck)
    if stuck:
        counts.notes.append(f"STUCK {len(stuck)}: {stuck[:3]}")
    return counts


def stuck_locks(service: Service, ended_jobs: set[str], all_jobs_ended: bool,
                now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    policy = service.policy
    out = []
    for state in service.store.branches_with_locks():
        for lock in state.locks:
            deadline = min(lock.expires_at, locks.heartbeat_deadline(lock, policy))
            if now >= deadline and locks.in_force(lock, now, policy):
                out.append(f"{lock.lock_id} (job {lock.job_id}) in force past its deadline {deadline.isoformat()}")
            elif all_jobs_ended or lock.job_id in ended_jobs:
                out.append(f"{lock.lock_id} (job {lock.job_id}) still held after its job ended")
    return out


def invariant_violations(service: Service, now: datetime | None = None) -> list[str]:
    """No two conflicting in-force locks now; per branch, in audit (commit) order, no grant
    while a conflicting lock of another job is live, and fencing tokens strictly increase."""
    now = now or utcnow()
    problems = []
    for state in service.store.branches_with_locks():
        live = [lock for lock in state.locks if locks.in_force(lock, now, service.policy)]
        for i, a in enumerate(live):
            for b in live[i + 1:]:
                if a.job_id != b.job_id and conflicts(a.resource_type, b.resource_type):
                    problems.append(f"branch {state.branch}: {a.lock_id} and {b.lock_id} conflict, both in force")
    live_by_branch: dict[str, dict[str, AuditEntry]] = defaultdict(dict)
    last_token: dict[str, int] = defaultdict(int)
    for entry in all_audit(service.store):
        if entry.branch is None:
            continue
        live = live_by_branch[entry.branch]
        if entry.kind is AuditKind.ACQUIRED:
            clash = [lid for lid, other in live.items()
                     if other.job_id != entry.job_id and conflicts(other.resource_type, entry.resource_type)]
            if clash:
                problems.append(f"branch {entry.branch}: grant {entry.lock_id} while {clash} live")
            if entry.fencing_token <= last_token[entry.branch]:
                problems.append(f"branch {entry.branch}: token {entry.fencing_token} after {last_token[entry.branch]}")
            last_token[entry.branch] = max(last_token[entry.branch], entry.fencing_token)
            live[entry.lock_id] = entry
        elif entry.kind is AuditKind.RELEASED:
            live.pop(entry.lock_id, None)
    return problems


def quiet_logs() -> None:
    """The harness's own kombu/celery chatter stays out of the table."""
    import logging

    for name in ("kombu", "celery", "amqp", "indexgate"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
