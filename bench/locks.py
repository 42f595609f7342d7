"""Locks: one acquire + release through the service's real compare-and-swap path, beside a
redis-py lock acquire + release on the same Redis, in the same run.

``service.acquire`` then ``service.release`` on one branch: each loads the branch aggregate,
applies the pure rule and saves it with a conditional write that also appends the audit
entries (the outbox) and the job index, in one SQLite transaction (``synchronous=FULL``,
as the worker opens it), or on MongoDB when ``MONGODB_URL`` is set. Every op uses a new job
id on the same branch, as a busy branch sees, with the shipped policy (finished jobs are
remembered by the branch as the duplicate guard). The last 50 ops are compared with the
first 50 to show whether that history makes later ops slower, and the loop is repeated with
no history at all (``job_retention_s=0``, diagnostic) to show what it costs.

The baseline is ``redis.Redis(...).lock(name)`` acquire + release on 127.0.0.1:6379 (two or
three round trips, a Lua script, nothing on disk). Where the time goes is measured: the
store verbs and SQLite ``COMMIT`` are timed, and the same loop is repeated on a store opened
with ``synchronous=NORMAL`` (diagnostic) to show what the commit's flush costs.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

from bench.common import (
    Figure,
    Report,
    TimedStore,
    bench_settings,
    percentiles,
    profiled_sqlite_store,
)
from indexgate.locks import AcquireRequest
from indexgate.service import Origin, Service, policy_from
from indexgate.store import open_store
from indexgate.schemas.records import ReleaseReason

REDIS = {"host": "127.0.0.1", "port": 6379, "db": 13}


def _service_ops(service: Service, branch: str, ops: int, tag: str) -> list[float]:
    """ms per acquire + release; refuses to time an op that did not take the lock."""
    times: list[float] = []
    origin = Origin(actor="bench")
    for i in range(ops):
        job = f"lk-{tag}-{i:05d}"
        request = AcquireRequest(job_id=job, holder="bench", resource_types=(None,), reason="bench")
        t0 = time.perf_counter()
        got = service.acquire(branch, request, origin)
        service.release(branch, job, ReleaseReason.COMPLETED, origin)
        times.append((time.perf_counter() - t0) * 1000)
        if got.status != "applied":
            raise RuntimeError(f"acquire {i} was {got.status}: {got.detail}")
    return times


def _redis_ops(ops: int, tag: str) -> list[float]:
    import redis

    client = redis.Redis(**REDIS)
    name = f"bench:lock:{tag}"
    times: list[float] = []
    try:
        for _ in range(ops):
            t0 = time.perf_counter()
            lock = client.lock(name, timeout=60)
            if not lock.acquire(blocking=False):
                raise RuntimeError(f"redis lock {name} was held by someone else")
            lock.release()
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        client.delete(name)
        client.close()
    return times


def _store(settings, name: str, synchronous: str = "FULL"):
    if os.environ.get("MONGODB_URL"):
        return open_store(settings)
    return profiled_sqlite_store(settings.data_dir / name, synchronous=synchronous)


def _remembered(state) -> int:
    """Finished jobs the aggregate still carries (whatever the schema calls them)."""
    if state is None:
        return 0
    finished = getattr(state, "finished", None)
    ended = [job for job in state.jobs if getattr(job, "ended_at", None) is not None]
    return len(finished or ()) + len(ended)


def run(report: Report, folder: Path, broker: str, ops: int = 500) -> list[float]:
    settings = bench_settings(folder, broker)
    tag = uuid.uuid4().hex[:8]
    branch = f"bench/locks-{tag}"
    sqlite = not os.environ.get("MONGODB_URL")
    kind = "SQLite" if sqlite else "MongoDB"
    inner = _store(settings, "indexgate.db")
    store = TimedStore(inner)
    service = Service(store, policy_from(settings))
    _service_ops(service, f"{branch}-warm", 20, f"warm-{tag}")
    _redis_ops(20, f"warm-{tag}")
    store.seconds.clear()
    if sqlite:
        inner.commit_s, inner.commits = 0.0, 0
    ours = _service_ops(service, branch, ops, tag)
    theirs = _redis_ops(ops, tag)
    state = inner.load(branch)
    doc_kb = len(state.model_dump_json()) / 1024 if state else 0.0
    remembered = _remembered(state)
    mine, base = percentiles(ours), percentiles(theirs)
    split = ", ".join(f"{verb} {seconds * 1000 / ops:.3f}" for verb, seconds in sorted(store.seconds.items()))
    parts = [f"store verbs per acquire+release (ms): {split}",
             f"rules + pydantic copies outside the store "
             f"{mine['mean'] - sum(store.seconds.values()) * 1000 / ops:.3f} ms",
             f"the branch remembered {remembered} finished jobs ({doc_kb:.0f} KB) at the end"]
    if sqlite:
        parts.insert(0, f"SQLite COMMIT {inner.commit_s * 1000 / ops:.3f} ms of the {mine['mean']:.3f} ms mean "
                        f"({inner.commits / ops:.0f} commits per op, synchronous=FULL)")
    inner.close()
    note = "; ".join(parts)
    first, last = percentiles(ours[:50]), percentiles(ours[-50:])

    # the lock path alone: finished jobs forgotten at once, so the aggregate holds one lock
    lean_store = _store(settings, "lean.db")
    lean_service = Service(lean_store, replace(policy_from(settings), job_retention_s=0))
    _service_ops(lean_service, f"{branch}-warm", 20, f"warm-{tag}")
    lean = percentiles(_service_ops(lean_service, branch, ops, tag))
    lean_store.close()

    normal = None
    if sqlite:
        fast = _store(settings, "normal.db", synchronous="NORMAL")
        fast_service = Service(fast, policy_from(settings))
        _service_ops(fast_service, f"{branch}-warm", 20, f"warm-{tag}")
        normal = percentiles(_service_ops(fast_service, branch, ops, tag))
        fast.close()

    met = mine["mean"] / base["mean"] <= 2
    report.add(Figure(f"lock acquire+release via service, mean ({ops} ops, {kind})", mine["mean"], "ms",
                      "redis-py Lock acquire+release mean", base["mean"], "ratio <= 2", met, note))
    report.add(Figure("lock acquire+release via service, p99", mine["p99"], "ms", "redis-py Lock p99", base["p99"],
                      "informational", True))
    report.add(Figure(f"lock acquire+release, ops {ops - 49}-{ops} on one branch", last["mean"], "ms",
                      "ops 1-50 on that branch", first["mean"], "informational (no growth with history)", True,
                      f"{remembered} finished jobs remembered by the branch after {ops} ops ({doc_kb:.0f} KB)"))
    report.add(Figure("diagnostic: lock path with no finished jobs remembered", lean["mean"], "ms",
                      "as shipped, mean", mine["mean"], "informational", True, "job_retention_s=0"))
    if normal:
        report.add(Figure("diagnostic: lock path, SQLite synchronous=NORMAL", normal["mean"], "ms",
                          "synchronous=FULL (as shipped) mean", mine["mean"], "informational", True))
    report.samples["lock acquire+release via service (ms)"] = ours
    report.samples["redis-py lock acquire+release (ms)"] = theirs
    return ours
