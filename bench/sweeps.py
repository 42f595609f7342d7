"""Sweeps at scale: what a heartbeat sweep costs with 1,000 / 10,000 / 100,000 locked branches.

Each branch's next due time (a lock dies, its health changes) is kept at every save and
indexed (``BranchState.due_at``), so a sweep reads only the branches that are due. Measured
in process over the shipped store (SQLite, synchronous=FULL; MongoDB when ``MONGODB_URL`` is
set), at each size:

- the heartbeat sweep as beat runs it (``sweep(HEARTBEAT_MISSED)`` + the shadow sweep) with
  **none due**, median of several runs, beside the **full scan** the sweep was before (every
  locked branch loaded and its rule applied, as on main before due times) in the same run;
- the **cost per due lock**: rounds of ``DUE_PER_ROUND`` locks whose heartbeat deadline has
  just passed, released by one sweep; the sweep's time / the locks it released, median of
  the rounds, compared with the same figure at the smallest size. Each release is an
  fsync'ed commit, whose time on a shared disk varies by 2-3x from one run to the next
  whatever the store's size, so the goal is judged on the cost *outside* the COMMIT
  statements (load, rule, the write's B-tree work: what could grow with the branches),
  timed apart by the profiled store of ``bench.common``; the whole cost is reported too;
- the **permission check** (one aggregate read) on a random locked branch, p50, beside a
  bare read of the same row, and compared with the smallest size.

The branches are set up through the real use case (``Service.acquire``) on the same file
opened with synchronous=OFF, so setting up 100,000 branches takes about a minute, not the
fsync'ed minutes it would; the measurements use the store as shipped. The service clock is
a test clock: every lock is one hour from any deadline unless it belongs to a due round.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import Figure, Report, bench_settings, percentiles, profiled_sqlite_store
from indexgate import locks
from indexgate.locks import SWEEPER, AcquireRequest
from indexgate.service import Origin, Service, policy_from
from indexgate.schemas.records import ReleaseReason
from indexgate.store import open_store

SIZES = (1_000, 10_000, 100_000)
DUE_PER_ROUND = 100
ROUNDS = 5
QUIET_RUNS = 5
CHECKS = 2000
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
HB = [ReleaseReason.HEARTBEAT_MISSED]


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _lock(service: Service, branch: str, job: str, interval_s: float) -> None:
    request = AcquireRequest(job_id=job, holder="bench", resource_types=("docs",), reason="bench",
                             ttl_s=86_400, heartbeat_interval_s=interval_s)
    service.acquire(branch, request, Origin(actor="bench"))


def heartbeat_sweep(service: Service) -> int:
    """What beat's heartbeat-cleanup task runs."""
    return len(service.sweep(HB)) + len(service.shadows.sweep())


def full_scan(service: Service) -> None:
    """The heartbeat sweep before due times: every locked branch loaded, its rule applied."""
    for state in service.store.branches_with_locks():
        service._mutate(state.branch, lambda s, now: locks.sweep(s, now, service.policy, HB), Origin(actor=SWEEPER))


def run(report: Report, folder: Path, broker: str, sizes: tuple[int, ...] = SIZES) -> dict[int, dict[str, float]]:
    settings = bench_settings(folder, broker)
    clock = Clock()
    policy = policy_from(settings)
    mongo = bool(os.environ.get("MONGODB_URL"))
    if mongo:
        shipped = setup = Service(open_store(settings), policy, clock=clock)
    else:
        from indexgate.store.sqlite import SqliteStore

        path = Path(settings.resolved_store_url[len("sqlite:///"):])
        shipped = Service(profiled_sqlite_store(path), policy, clock=clock)  # as shipped, COMMITs timed apart
        setup = Service(SqliteStore(path, synchronous="OFF"), policy, clock=clock)
    results: dict[int, dict[str, float]] = {}
    have, base = 0, T0
    bulk_names: list[str] = []  # the locked branches that are due for nothing
    for size in sizes:
        t_setup = time.monotonic()
        clock.now = base
        bulk = size - ROUNDS * DUE_PER_ROUND - have  # this size's due rounds count among its branches
        for n in range(have, have + bulk):
            _lock(setup, f"bench/b{n:06d}", f"j{n}", 3600)
            bulk_names.append(f"bench/b{n:06d}")
        have += bulk
        rounds = []
        for r in range(ROUNDS):  # round r dies at base + 10 (r + 1) + 3 s; no other lock is due then
            clock.now = base + timedelta(seconds=10 * (r + 1))
            names = [f"bench/due-{size}-{r}-{i}" for i in range(DUE_PER_ROUND)]
            for i, name in enumerate(names):
                _lock(setup, name, f"due-{size}-{r}-{i}", 1)
            rounds.append(clock.now + timedelta(seconds=3.5))
        have += ROUNDS * DUE_PER_ROUND
        setup_s = time.monotonic() - t_setup

        clock.now = base + timedelta(seconds=0.5)  # nothing due anywhere
        heartbeat_sweep(shipped)  # warm the connection and caches
        quiet = statistics.median(_ms(lambda: heartbeat_sweep(shipped)) for _ in range(QUIET_RUNS))
        scan = statistics.median(_ms(lambda: full_scan(shipped)) for _ in range(1 if size >= 50_000 else 3))
        per_due, outside = [], []
        for due_at in rounds:
            clock.now = due_at
            released: list[int] = []
            commit_s = getattr(shipped.store, "commit_s", 0.0)
            elapsed = _ms(lambda: released.append(heartbeat_sweep(shipped)))
            if released[0] != DUE_PER_ROUND:
                raise RuntimeError(f"the due round released {released[0]} locks, not {DUE_PER_ROUND}")
            per_due.append(elapsed / DUE_PER_ROUND)
            commits_ms = (getattr(shipped.store, "commit_s", 0.0) - commit_s) * 1000
            outside.append((elapsed - commits_ms) / DUE_PER_ROUND)
        clock.now = base + timedelta(seconds=0.5)
        check, bare = _checks(shipped, settings, random.sample(bulk_names, 50))
        results[size] = {"quiet_ms": quiet, "scan_ms": scan, "per_due_ms": statistics.median(per_due),
                         "per_due_outside_ms": statistics.median(outside),
                         "check_p50_ms": check["p50"], "check_p99_ms": check["p99"], "bare_p50_ms": bare["p50"],
                         "setup_s": setup_s, "locked": have}
        print(f"  {size} branches: set up in {setup_s:.0f} s", flush=True)
        base += timedelta(seconds=10 * ROUNDS + 60)
    _report(report, results, mongo)
    shipped.store.close()
    setup.store.close()
    return results


def _checks(service: Service, settings, branches: list[str]) -> tuple[dict, dict]:
    if os.environ.get("MONGODB_URL"):
        bare_fn = lambda b: service.store.load(b)  # noqa: E731
        conn = None
    else:
        conn = sqlite3.connect(settings.resolved_store_url[len("sqlite:///"):], isolation_level=None)
        bare_fn = lambda b: conn.execute("SELECT doc FROM branches WHERE branch = ?", (b,)).fetchone()  # noqa: E731
    picks = [random.choice(branches) for _ in range(CHECKS)]
    for b in picks[:200]:
        if service.check(b, "docs").allowed:
            raise RuntimeError(f"{b} should be locked")
        bare_fn(b)
    checks = [_ms(lambda: service.check(b, "docs")) for b in picks]
    bares = [_ms(lambda: bare_fn(b)) for b in picks]
    if conn is not None:
        conn.close()
    return percentiles(checks), percentiles(bares)


def _report(report: Report, results: dict[int, dict[str, float]], mongo: bool) -> None:
    smallest = min(results)
    store = "MongoDB" if mongo else "SQLite"
    for size, r in results.items():
        label = f"{size:,}"
        report.add(Figure(f"heartbeat sweep, {label} locked branches, none due", r["quiet_ms"], "ms",
                          "full scan (the sweep before due times)", r["scan_ms"],
                          "< 100 ms at 100,000" if size == 100_000 else "informational",
                          r["quiet_ms"] < 100 or size != 100_000,
                          f"median of {QUIET_RUNS} sweeps; {r['locked']:,} locked branches in the {store} store; "
                          f"full scan: {r['scan_ms'] / r['locked'] * 1000:.1f} us per branch"))
        base = results[smallest]
        timed_apart = "" if mongo else " outside COMMIT"
        value, reference = (r["per_due_ms"], base["per_due_ms"]) if mongo else \
            (r["per_due_outside_ms"], base["per_due_outside_ms"])
        report.add(Figure(f"heartbeat sweep, cost per due lock{timed_apart}, {label} branches", value, "ms",
                          f"same at {smallest:,} branches", reference,
                          "constant (ratio <= 1.5)" if size != smallest else "informational",
                          value <= 1.5 * reference or size == smallest,
                          f"median of {ROUNDS} sweeps each releasing {DUE_PER_ROUND} locks whose heartbeat deadline "
                          f"had just passed: load, rule and the write per branch; with its fsync'ed COMMIT "
                          f"{r['per_due_ms']:.3f} ms per lock (at {smallest:,}: {base['per_due_ms']:.3f} ms; disk "
                          "time on a shared machine varies from run to run whatever the size)"))
        report.add(Figure(f"permission check p50, {label} locked branches", r["check_p50_ms"], "ms",
                          f"same at {smallest:,} branches", results[smallest]["check_p50_ms"],
                          "flat (ratio <= 1.5)" if size != smallest else "informational",
                          r["check_p50_ms"] <= 1.5 * results[smallest]["check_p50_ms"] or size == smallest,
                          f"p99 {r['check_p99_ms']:.3f} ms; a bare read of the same row p50 {r['bare_p50_ms']:.3f} ms "
                          f"({CHECKS} checks of random locked branches)"))
