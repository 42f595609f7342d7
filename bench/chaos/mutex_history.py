"""Scenario ``mutex_history``: racing processes, stop-the-world pauses, and a checker over
the whole recorded history.

Four real processes share one SQLite store and call ``Service`` directly (no broker): in a
loop with random delays each one acquires locks for new jobs on one branch (one or two
resource types, or branch-wide; short TTLs; heartbeat interval 0.1-0.3 s, so a lock dies
0.3-0.9 s after its last heartbeat), heartbeats and releases its jobs, and asks the
permission check. Meanwhile the parent SIGSTOPs a random racer for longer than any
heartbeat deadline (1.1-2 s), then SIGCONTs it: the paused racer's locks die, others take
them over, and the racer wakes up believing it still holds them.

Recorded: every grant, from the audit trail (ACQUIRED: lock, job, resource type, fencing
token, granted_at = the entry's ``at``) and every release (RELEASED ``at``); the lock data
of every committed state (each racer's store wrapper logs the locks it saved, by branch
version), so a lock's death is ``min(expires_at, last_heartbeat + missed x interval)`` of
its last committed data; every permission check with the wall-clock window around it.

The checker proves, over every pair of conflicting grants of different jobs, that their
validity intervals [granted_at, min(release, death)) do not overlap; that fencing tokens
strictly increase in commit order; that no check allowed a write while a conflicting lock
committed before the check was valid throughout it; and that no check denied a write
naming a lock already dead when the check began.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from bench.chaos.common import Row, all_audit, stuck_locks
from bench.chaos.servers import scratch
from indexgate.clock import utcnow
from indexgate.errors import TransientError
from indexgate.locks import AcquireRequest, conflicts
from indexgate.service import Origin, Service
from indexgate.store import initialize_store
from indexgate.settings import Settings
from indexgate.schemas.payloads import HeartbeatData
from indexgate.schemas.records import AuditKind, ReleaseReason

BRANCH = "mutex/branch"
TYPES = ["object_type", "link_type", "action_type"]
RACERS = 4


class RecordingStore:
    """The real SqliteStore; after each successful ``save`` it logs the locks it committed."""

    def __init__(self, inner, log_path: Path) -> None:
        self._inner = inner
        self._log = open(log_path, "a", buffering=1)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def save(self, state, audit, inbox_key=None) -> int:
        version = self._inner.save(state, audit, inbox_key)
        self._log.write(json.dumps({"branch": state.branch, "version": version, "locks": [
            {"lock_id": l.lock_id, "expires_at": l.expires_at.isoformat(), "last_heartbeat": l.last_heartbeat.isoformat(),
             "interval": l.heartbeat_interval_s, "auto_release": l.auto_release} for l in state.locks]}) + "\n")
        return version


def racer(index: int, folder: str, seconds: float, seed: int, stop) -> None:
    rng = random.Random(seed * 100 + index)
    settings = Settings(data_dir=Path(folder))
    base = Service.from_settings(settings)
    service = Service(RecordingStore(base.store, Path(folder) / f"snapshots-{index}.jsonl"), base.policy)
    ops = open(Path(folder) / f"ops-{index}.jsonl", "a", buffering=1)
    held: list[str] = []
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        n += 1
        origin = Origin(actor=f"racer-{index}", key=f"racer-{index}-op-{n}")
        roll = rng.random()
        t0 = utcnow()
        record: dict = {"racer": index}
        try:
            if roll < 0.25 or not held:
                job = f"r{index}-{n}"
                pick = rng.random()
                types = (None,) if pick < 0.2 else tuple(rng.sample(TYPES, 1 if pick < 0.75 else 2))
                outcome = service.acquire(BRANCH, AcquireRequest(
                    job_id=job, holder=f"racer-{index}", resource_types=types, reason="race",
                    ttl_s=rng.uniform(0.5, 3.0), heartbeat_interval_s=rng.uniform(0.1, 0.3)), origin)
                if outcome.status == "applied":
                    held.append(job)
                record.update(op="acquire", job=job, status=outcome.status)
            elif roll < 0.75:
                job = rng.choice(held)
                outcome = service.heartbeat(HeartbeatData(job_id=job), origin)
                record.update(op="heartbeat", job=job, status=outcome.status)
            elif roll < 0.8:  # holders keep their locks a while: pauses then hit live locks
                job = held.pop(rng.randrange(len(held)))
                outcome = service.release(BRANCH, job, ReleaseReason.COMPLETED, origin)
                record.update(op="release", job=job, status=outcome.status)
            else:
                resource_type = rng.choice(TYPES + [None])
                decision = service.check(BRANCH, resource_type)
                record.update(op="check", resource_type=resource_type, allowed=decision.allowed,
                              blocking=decision.blocking_lock.lock_id if decision.blocking_lock else None)
        except TransientError as exc:
            record.update(op="error", error=type(exc).__name__)
        record.update(t0=t0.isoformat(), t1=utcnow().isoformat())
        ops.write(json.dumps(record) + "\n")
        time.sleep(rng.uniform(0, 0.015))


def run(broker: str = "redis", short: bool = True, seed: int = 51) -> Row:
    del broker  # no broker: the racers call the service directly
    seconds = 15.0 if short else 60.0
    row = Row("mutex_history")
    rng = random.Random(seed)
    with scratch("mutex") as folder:
        Settings(data_dir=folder).ensure_data_dirs()
        initialize_store(Settings(data_dir=folder))
        ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
        stop = ctx.Event()
        procs = [ctx.Process(target=racer, args=(i, str(folder), seconds, seed, stop), name=f"racer-{i}")
                 for i in range(RACERS)]
        for proc in procs:
            proc.start()
        pauses: list[float] = []
        deaths = 0
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end - 2.5:
                time.sleep(rng.uniform(0.2, 0.6))
                victim = rng.choice(procs)
                pause = rng.uniform(1.1, 2.0)  # > 3 x 0.3 s, the longest heartbeat deadline
                os.kill(victim.pid, signal.SIGSTOP)
                try:
                    time.sleep(pause)
                finally:
                    os.kill(victim.pid, signal.SIGCONT)
                pauses.append(pause)
        finally:
            stop.set()
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                    proc.join()
            deaths = sum(1 for p in procs if p.exitcode not in (0, None) and p.exitcode != -signal.SIGKILL)
        result = check_history(folder)
        service = Service.from_settings(Settings(data_dir=folder))
        stuck = stuck_locks(service, set(), all_jobs_ended=False)  # in force past the deadline: never
        service.store.close()
    row.stuck = len(stuck)
    row.notes += [f"STUCK {s}" for s in stuck[:3]]
    row.runs = len(pauses)
    row.crashes = deaths
    row.figures.update(result)
    row.note(f"{RACERS} racer processes for {seconds:.0f} s against one SQLite store; {len(pauses)} SIGSTOP pauses "
             f"of {min(pauses, default=0):.1f}-{max(pauses, default=0):.1f} s (heartbeat deadlines 0.3-0.9 s)")
    row.note(f"checked {result['operations']} operations ({result['ops']}); {result['grants']} grants, "
             f"{result['pairs']} conflicting pairs of grants compared, {result['checks']} permission checks")
    row.note(f"conflicts (overlapping validity of conflicting grants): {result['conflicts']}; fencing token "
             f"regressions: {result['token_regressions']}; checks that allowed a write under a valid conflicting "
             f"lock: {result['check_allowed_under_lock']}; checks denying with an already dead lock: "
             f"{result['check_denied_by_dead_lock']}; tokens 1..{result['last_token']}")
    if result["examples"]:
        row.note(f"VIOLATIONS e.g. {result['examples'][:3]}")
    row.note(f"releases by reason: {result['taken_over']} (TTL_EXPIRED / HEARTBEAT_MISSED: a dead lock released "
             f"when another racer took its place or its job ended late); racers' transient errors: {result['errors']}")
    if result["released_after_death"]:
        row.note(f"{result['released_after_death']} lock(s) were recorded RELEASED 'completed' after they had already "
                 "died (TTL or heartbeat deadline), so the audit trail overstates how long they bound anyone (safety "
                 "unaffected: a dead lock binds nobody); locks.release_job should release them as dead")
    return row


def check_history(folder: Path) -> dict:
    settings = Settings(data_dir=folder)
    service = Service.from_settings(settings)
    policy = service.policy
    audit = [e for e in all_audit(service.store) if e.branch == BRANCH]
    state = service.store.load(BRANCH)
    service.store.close()
    data: dict[str, tuple[int, dict]] = {}  # lock_id -> (version, data of its last committed state)
    for path in folder.glob("snapshots-*.jsonl"):
        for line in path.read_text().splitlines():
            snap = json.loads(line)
            for lock in snap["locks"]:
                if lock["lock_id"] not in data or data[lock["lock_id"]][0] < snap["version"]:
                    data[lock["lock_id"]] = (snap["version"], lock)
    for lock in (state.locks if state else []):  # the final state is the last word on live locks
        data[lock.lock_id] = (10**9, {"expires_at": lock.expires_at.isoformat(),
                                      "last_heartbeat": lock.last_heartbeat.isoformat(),
                                      "interval": lock.heartbeat_interval_s, "auto_release": lock.auto_release})
    released = {e.lock_id: e.at for e in audit if e.kind is AuditKind.RELEASED}
    taken_over = dict(Counter(e.reason for e in audit if e.kind is AuditKind.RELEASED))
    far = datetime.max.replace(tzinfo=utcnow().tzinfo)
    grants = []
    last_token = 0
    regressions = 0
    examples: list[str] = []
    for entry in audit:
        if entry.kind is not AuditKind.ACQUIRED:
            continue
        if entry.fencing_token <= last_token:
            regressions += 1
            examples.append(f"token {entry.fencing_token} after {last_token}")
        last_token = max(last_token, entry.fencing_token)
        lock = data.get(entry.lock_id, (0, None))[1]
        if lock is None:
            examples.append(f"no committed data for lock {entry.lock_id}")
            death = far
        else:
            hb_deadline = datetime.fromisoformat(lock["last_heartbeat"]) + timedelta(
                seconds=lock["interval"] * policy.missed_heartbeats)
            death = min(datetime.fromisoformat(lock["expires_at"]), hb_deadline) if lock["auto_release"] else far
        end = min(released.get(entry.lock_id, far), death)
        grants.append((entry.at, end, entry.resource_type, entry.job_id, entry.lock_id, entry.fencing_token, death))
    release_entries = {e.lock_id: e for e in audit if e.kind is AuditKind.RELEASED}
    late = [g[4] for g in grants if g[4] in release_entries and release_entries[g[4]].reason in ("completed", "failed",
            "cancelled") and release_entries[g[4]].at > g[6]]
    conflicts_found = pairs = 0
    for i, a in enumerate(grants):
        for b in grants[i + 1:]:
            if a[3] == b[3] or not conflicts(a[2], b[2]):
                continue  # the same job, or resource types that do not conflict
            pairs += 1
            if a[0] < b[1] and b[0] < a[1]:  # [start, end) intervals overlap
                conflicts_found += 1
                examples.append(f"{a[4]} (token {a[5]}, {a[2]}, valid {a[0].time()}..{a[1].time()}) overlaps "
                                f"{b[4]} (token {b[5]}, {b[2]}, valid {b[0].time()}..{b[1].time()})")
    ops = []
    for path in folder.glob("ops-*.jsonl"):
        ops += [json.loads(line) for line in path.read_text().splitlines()]
    by_lock = {g[4]: g for g in grants}
    allowed_bad = denied_bad = 0
    checks = [op for op in ops if op["op"] == "check"]
    commit_by = _commit_bounds(ops)
    for op in checks:
        t0, t1 = datetime.fromisoformat(op["t0"]), datetime.fromisoformat(op["t1"])
        if op["allowed"]:
            for start, end, rt, job, lock_id, token, _death in grants:
                committed = commit_by.get(job)
                if committed and committed <= t0 and end >= t1 and conflicts(rt, op["resource_type"]):
                    allowed_bad += 1
                    examples.append(f"check {op['resource_type']} allowed at {t0.time()} under {lock_id}")
                    break
        elif op["blocking"] in by_lock and by_lock[op["blocking"]][6] <= t0:  # dead (not released: the
            denied_bad += 1                                                       # check may predate that commit)
            examples.append(f"check denied at {t0.time()} by {op['blocking']}, dead since "
                            f"{by_lock[op['blocking']][6].time()}")
    counts = Counter(op["op"] for op in ops)
    return {"operations": len(ops) + len(grants), "ops": dict(counts), "grants": len(grants), "pairs": pairs,
            "checks": len(checks), "conflicts": conflicts_found + allowed_bad + denied_bad,
            "token_regressions": regressions, "check_allowed_under_lock": allowed_bad,
            "check_denied_by_dead_lock": denied_bad, "last_token": last_token, "examples": examples,
            "taken_over": taken_over, "errors": counts.get("error", 0), "released_after_death": len(late)}


def _commit_bounds(ops: list[dict]) -> dict[str, datetime]:
    """job -> a time by which its grant was surely committed (its acquire call returned)."""
    return {op["job"]: datetime.fromisoformat(op["t1"]) for op in ops
            if op["op"] == "acquire" and op["status"] == "applied"}
