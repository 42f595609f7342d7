"""Sweeps at scale: what a heartbeat sweep costs with 1,000 / 10,000 / 100,000 locked branches.

Each branch's next due time (a lock dies, its health changes) is kept at every save and
indexed (``BranchState.due_at``), so a sweep reads only the branches that are due. Measured
in process over the shipped store (SQLite, synchronous=FULL; MongoDB when ``MONGODB_URL`` is
set), at each size:

- the heartbeat sweep as beat runs it (``sweep(HEARTBEAT_MISSED)`` + the shadow sweep, fenced
  by the beat lease's token) with
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

Each size has a store of its own, set up through the real use case (``Service.acquire``) on
its file opened with synchronous=OFF (100,000 branches in about half a minute, not the
fsync'ed minutes it would take); the measurements use the store as shipped, and each one
runs over the sizes in turn, again and again, so drift on the shared machine hits every
size alike. The service clock is a test clock: every lock is an hour from any deadline
unless it belongs to a due round.
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
from indexgate.leases import BEAT
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
    """What beat's heartbeat-cleanup task runs: fenced by the beat lease (one more read)."""
    token = _tokens.get(id(service))
    if token is None:
        lease = service.leases.take(BEAT, "bench-beat", 86_400)
        assert lease is not None
        token = _tokens[id(service)] = lease.token
    fence = service.leases.fence(BEAT, token)
    return len(service.sweep(HB, fence)) + len(service.shadows.sweep(fence))


_tokens: dict[int, int] = {}  # the bench beat's lease token, per service


def full_scan(service: Service) -> None:
    """The heartbeat sweep before due times (main before them): every locked branch loaded,
    its rule applied (nothing changes, so nothing is written)."""
    for state in service.store.branches_with_locks():
        service._mutate(state.branch, lambda s, now: locks.sweep(s, now, service.policy, HB), Origin(actor=SWEEPER))


@dataclass
class Sized:
    """One store of ``size`` locked branches, its due rounds, and what was measured on it."""

    size: int
    service: Service  # on the store as shipped (COMMITs timed apart on SQLite)
    bulk: list[str]  # the locked branches due for nothing
    rounds: list[datetime]  # when each due round is due
    got: dict[str, list[float]]


def run(report: Report, folder: Path, broker: str, sizes: tuple[int, ...] = SIZES) -> dict[int, dict[str, float]]:
    clock = Clock()
    stores = [_build(folder / f"size-{size}", broker, size, clock) for size in sizes]
    mongo = bool(os.environ.get("MONGODB_URL"))
    clock.now = T0 + timedelta(seconds=0.5)  # nothing due anywhere
    for one in stores:
        heartbeat_sweep(one.service)  # warm the connection and caches
    for _ in range(QUIET_RUNS):  # every measurement interleaved over the sizes: drift hits all alike
        for one in stores:
            one.got["quiet"].append(_ms(lambda: heartbeat_sweep(one.service)))
    for one in stores:
        one.got["scan"].append(_ms(lambda: full_scan(one.service)))
    for part in range(10):
        for one in stores:
            check, bare = _checks(one.service, one.bulk, CHECKS // 10)
            one.got["check"] += check
            one.got["bare"] += bare
    for r in range(ROUNDS):
        for one in stores:
            clock.now = one.rounds[r]
            whole, outside = _due_round(one.service)
            one.got["per_due"].append(whole)
            one.got["outside"].append(outside)
    results = {one.size: _summary(one) for one in stores}
    _report(report, results, mongo)
    for one in stores:
        one.service.store.close()
    return results


def _build(folder: Path, broker: str, size: int, clock: Clock) -> Sized:
    """A store with ``size`` locked branches: ``ROUNDS`` rounds of ``DUE_PER_ROUND`` that die
    one after the other (round r at T0 + 10 (r + 1) + 3 s), the rest an hour from any deadline."""
    t0 = time.monotonic()
    settings = bench_settings(folder, broker)
    policy = policy_from(settings)
    if os.environ.get("MONGODB_URL"):
        shipped = setup = Service(open_store(settings), policy, clock=clock)
    else:
        from indexgate.store.sqlite import SqliteStore

        path = Path(settings.resolved_store_url[len("sqlite:///"):])
        shipped = Service(profiled_sqlite_store(path), policy, clock=clock)  # as shipped, COMMITs timed apart
        setup = Service(SqliteStore(path, synchronous="OFF"), policy, clock=clock)
    clock.now = T0
    bulk = [f"bench/b{n:06d}" for n in range(size - ROUNDS * DUE_PER_ROUND)]
    for n, name in enumerate(bulk):
        _lock(setup, name, f"j{n}", 3600)
    rounds = []
    for r in range(ROUNDS):
        clock.now = T0 + timedelta(seconds=10 * (r + 1))
        for i in range(DUE_PER_ROUND):
            _lock(setup, f"bench/due-{r}-{i}", f"due-{r}-{i}", 1)
        rounds.append(clock.now + timedelta(seconds=3.5))
    if setup is not shipped:
        setup.store.close()
    print(f"  {size} branches: set up in {time.monotonic() - t0:.0f} s", flush=True)
    return Sized(size, shipped, bulk, rounds, {k: [] for k in ("quiet", "scan", "check", "bare", "per_due", "outside")})


def _due_round(service: Service) -> tuple[float, float]:
    """One sweep releasing a due round: ms per lock, whole and outside the COMMITs."""
    released: list[int] = []
    commit_s = getattr(service.store, "commit_s", 0.0)
    elapsed = _ms(lambda: released.append(heartbeat_sweep(service)))
    if released[0] != DUE_PER_ROUND:
        raise RuntimeError(f"the due round released {released[0]} locks, not {DUE_PER_ROUND}")
    commits_ms = (getattr(service.store, "commit_s", 0.0) - commit_s) * 1000
    return elapsed / DUE_PER_ROUND, (elapsed - commits_ms) / DUE_PER_ROUND


def _summary(one: Sized) -> dict[str, float]:
    got = one.got
    check, bare = percentiles(got["check"]), percentiles(got["bare"])
    return {"quiet_ms": statistics.median(got["quiet"]), "scan_ms": got["scan"][0],
            "per_due_ms": statistics.median(got["per_due"]), "per_due_outside_ms": statistics.median(got["outside"]),
            "check_p50_ms": check["p50"], "check_p99_ms": check["p99"], "bare_p50_ms": bare["p50"], "locked": one.size}


def _checks(service: Service, branches: list[str], n: int) -> tuple[list[float], list[float]]:
    """``n`` checks of random locked branches, and as many bare reads of their rows."""
    if os.environ.get("MONGODB_URL"):
        bare_fn = lambda b: service.store.load(b)  # noqa: E731
        conn = None
    else:
        conn = sqlite3.connect(service.store.path, isolation_level=None)
        bare_fn = lambda b: conn.execute("SELECT doc FROM branches WHERE branch = ?", (b,)).fetchone()  # noqa: E731
    picks = random.sample(branches, min(len(branches), n))
    for b in picks[:20]:
        if service.check(b, "docs").allowed:
            raise RuntimeError(f"{b} should be locked")
        bare_fn(b)
    checks = [_ms(lambda: service.check(b, "docs")) for b in picks]
    bares = [_ms(lambda: bare_fn(b)) for b in picks]
    if conn is not None:
        conn.close()
    return checks, bares


def _report(report: Report, results: dict[int, dict[str, float]], mongo: bool) -> None:
    smallest = min(results)
    store = "MongoDB" if mongo else "SQLite"
    for size, r in results.items():
        label = f"{size:,}"
        report.add(Figure(f"heartbeat sweep, {label} locked branches, none due", r["quiet_ms"], "ms",
                          "full scan (the sweep before due times)", r["scan_ms"],
                          "< 100 ms at 100,000" if size == 100_000 else "informational",
                          r["quiet_ms"] < 100 or size != 100_000,
                          f"median of {QUIET_RUNS} sweeps (interleaved with the other sizes); {r['locked']:,} locked "
                          f"branches in a {store} store of their own; full scan: "
                          f"{r['scan_ms'] / r['locked'] * 1000:.1f} us per branch"))
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
