"""Several real worker processes race for the same locks: never two conflicting grants.

Three ``celery -A workers worker`` processes (prefork, two children each: six appliers)
consume from real Redis and share one SQLite store. Many jobs ask for overlapping locks at
once (typed and branch-wide), and some complete, all published before the race starts.
The audit trail, in commit order, is then replayed: at every grant no live conflicting lock
may exist, and fencing tokens must strictly increase.
"""

from __future__ import annotations

import random
import time

import pytest

from indexgate.events.publisher import Publisher, funnel_event
from indexgate.locks import conflicts
from indexgate.service import Service
from indexgate.schemas.records import AuditKind
from tests.conftest import (
    REDIS_URL,
    isolated_settings,
    require_reachable,
    worker_processes,
)
from indexgate.testing.broker_names import delete_run_names

pytestmark = pytest.mark.slow

BRANCH = "race/branch"
ROUNDS = 5
JOBS_PER_ROUND = 20
TYPES = ["object_type", "link_type", "action_type", None]


def wait_until(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "workers did not finish the round"
        time.sleep(0.1)


def test_concurrent_workers_never_grant_conflicting_locks(tmp_path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    settings.ensure_data_dirs()
    rng = random.Random(7)
    publisher = Publisher(settings)
    service = Service.from_settings(settings)
    published = 0

    def decided() -> set[str]:
        return {e.job_id for e in service.store.audit(10_000, BRANCH) if e.kind in (AuditKind.ACQUIRED, AuditKind.REFUSED)}

    try:
        with worker_processes(settings, count=3, concurrency=2):
            for r in range(ROUNDS):
                jobs = [f"job-{r}-{n}" for n in range(JOBS_PER_ROUND)]
                for job in jobs:  # all starts of a round are in the queue before anyone is decided
                    wanted = rng.choice(TYPES)
                    publisher.publish_funnel(funnel_event("com.oms.indexing.started", {
                        "job_id": job, "branch": BRANCH, "resource_types": [wanted] if wanted else [],
                        "service_name": f"funnel-{rng.randrange(4)}"}))
                published += len(jobs)
                wait_until(lambda: set(jobs) <= decided())
                for job in jobs:  # then every job ends, winners release
                    publisher.publish_funnel(funnel_event("com.oms.indexing.completed", {"job_id": job}))
                published += len(jobs)
                wait_until(lambda: not service.list_locks(BRANCH))
    finally:
        publisher.close()
        delete_run_names(settings)

    history = list(reversed(service.store.audit(10_000, BRANCH)))  # commit order
    live: dict[str, tuple[str | None, str]] = {}
    last_token = 0
    grants = refusals = 0
    for entry in history:
        if entry.kind is AuditKind.ACQUIRED:
            clash = [lid for lid, (rt, job) in live.items() if job != entry.job_id and conflicts(rt, entry.resource_type)]
            assert not clash, f"conflicting grant {entry.lock_id} while {clash} were live"
            assert entry.fencing_token > last_token, "fencing tokens must strictly increase"
            last_token = entry.fencing_token
            live[entry.lock_id] = (entry.resource_type, entry.job_id)
            grants += 1
        elif entry.kind is AuditKind.RELEASED:
            live.pop(entry.lock_id)
        elif entry.kind is AuditKind.REFUSED:
            refusals += 1
    decided_jobs = [e.job_id for e in history if e.kind in (AuditKind.ACQUIRED, AuditKind.REFUSED)]
    assert len(decided_jobs) == len(set(decided_jobs)) == ROUNDS * JOBS_PER_ROUND, "each job decided exactly once"
    assert grants >= ROUNDS and refusals >= ROUNDS, "every round must have had winners and losers"
    print(f"\nrace: {ROUNDS * JOBS_PER_ROUND} jobs, {published} events, 3 worker processes x 2: "
          f"{grants} grants, {refusals} refusals, 0 conflicting grants, tokens 1..{last_token}")
