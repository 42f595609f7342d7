"""Permission check: ``service.check`` in process, on a branch holding a few locks.

The hot path of every write in OMS: load the branch aggregate, decide with the lock rules at
this instant (dead locks never bind). Measured for a resource type that is free (allowed,
the common case: every lock is looked at and none binds) and for one that is locked
(denied: the answer also builds the holder's view and message).

The baseline, in the same run and on the same SQLite file, is the bare read the check can
not avoid: ``SELECT doc FROM branches WHERE branch = ?`` on a plain ``sqlite3`` connection
(on MongoDB, when ``MONGODB_URL`` is set: the store's ``load``). The same check is then
timed on the branch after 500 more jobs locked and finished on it (informational: the
branch remembers finished jobs as its duplicate guard, and every check parses them).
"""

from __future__ import annotations

import gc
import os
import sqlite3
import uuid
from pathlib import Path

from bench.common import Figure, Report, bench_settings, percentiles, timed
from indexgate.locks import AcquireRequest
from indexgate.service import Origin, Service
from indexgate.schemas.records import BranchState, ReleaseReason

LOCKED_TYPES = ("object_type", "link_type", "action_type", "interface")
RETAINED_JOBS = 500


def run(report: Report, folder: Path, broker: str, samples: int = 5000) -> list[float]:
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    branch = f"bench/check-{uuid.uuid4().hex[:8]}"
    for n, resource_type in enumerate(LOCKED_TYPES):
        out = service.acquire(branch, AcquireRequest(job_id=f"check-{n}", holder="bench", resource_types=(resource_type,),
                                                     reason="bench"), Origin(actor="bench"))
        if out.status != "applied":
            raise RuntimeError(f"could not set up lock {resource_type}: {out.detail}")
    if not service.check(branch, "property_type").allowed or service.check(branch, "object_type").allowed:
        raise RuntimeError("the check does not answer as expected on the benchmark branch")

    if os.environ.get("MONGODB_URL"):
        baseline_name = "store.load of the branch"
        bare = lambda: service.store.load(branch)  # noqa: E731
        conn = None
    else:
        baseline_name = "bare SELECT doc FROM branches (same file)"
        conn = sqlite3.connect(settings.resolved_store_url[len("sqlite:///"):], isolation_level=None)
        bare = lambda: conn.execute("SELECT doc FROM branches WHERE branch = ?", (branch,)).fetchone()  # noqa: E731

    allowed = lambda: service.check(branch, "property_type")  # noqa: E731
    denied = lambda: service.check(branch, "object_type")  # noqa: E731
    for fn in (bare, allowed, denied):
        timed(fn, 200)  # warm caches and the connection
    # interleave in slices so drift on the shared machine hits all three alike
    got: dict[str, list[float]] = {"bare": [], "allowed": [], "denied": []}
    gc_counts = gc.get_stats()
    for _ in range(10):
        got["bare"] += timed(bare, samples // 10)
        got["allowed"] += timed(allowed, samples // 10)
        got["denied"] += timed(denied, samples // 10)
    collections = sum(s["collections"] for s in gc.get_stats()) - sum(s["collections"] for s in gc_counts)
    state = service.store.load(branch)
    doc = state.model_dump_json()
    parse = percentiles(timed(lambda: BranchState.model_validate_json(doc), samples // 5))

    # the same branch after a busy week: RETAINED_JOBS more jobs locked and finished on it
    # (another resource type), through the real path; the branch remembers what policy says
    for n in range(RETAINED_JOBS):
        job = f"done-{n}"
        service.acquire(branch, AcquireRequest(job_id=job, holder="bench", resource_types=("history",),
                                               reason="bench"), Origin(actor="bench"))
        service.release(branch, job, ReleaseReason.COMPLETED, Origin(actor="bench"))
    busy_doc = service.store.load(branch).model_dump_json()
    timed(allowed, 50)
    busy = percentiles(timed(allowed, samples // 5))
    if conn is not None:
        conn.close()
    service.store.close()

    base, ok, no = percentiles(got["bare"]), percentiles(got["allowed"]), percentiles(got["denied"])
    note = (f"{len(LOCKED_TYPES)} locks on the branch; p50 allowed {ok['p50']:.3f} ms = bare read "
            f"{base['p50']:.3f} ms + pydantic parse of the {len(doc) / 1024:.1f} KB aggregate {parse['p50']:.3f} ms "
            f"+ the store's transaction and the rule; {collections} garbage collections during the "
            f"{3 * samples} timed calls")
    report.add(Figure(f"permission check p50, allowed ({samples} samples)", ok["p50"], "ms", f"{baseline_name} p50",
                      base["p50"], "informational", True))
    report.add(Figure("permission check p99, allowed", ok["p99"], "ms", f"{baseline_name} p99", base["p99"],
                      "p99 < 1 ms", ok["p99"] < 1, note))
    report.add(Figure("permission check p99, denied (builds the holder's message)", no["p99"], "ms",
                      f"{baseline_name} p99", base["p99"], "p99 < 1 ms", no["p99"] < 1, note if no["p99"] >= 1 else ""))
    report.add(Figure(f"permission check p99, allowed, after {RETAINED_JOBS} more jobs finished on the branch",
                      busy["p99"], "ms", "same check before them", ok["p99"], "informational", True,
                      f"p50 {busy['p50']:.3f} ms; the aggregate every check parses is {len(busy_doc) / 1024:.1f} KB, "
                      f"was {len(doc) / 1024:.1f} KB"))
    report.samples["permission check, allowed (ms)"] = got["allowed"]
    return got["allowed"]
