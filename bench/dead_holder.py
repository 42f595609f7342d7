"""Dead holder: how long after a silent job's heartbeat deadline writes are allowed again.

A job is started (``service.start``, the path a ``com.oms.indexing.started`` event takes)
with a short heartbeat interval and never heartbeats. Its lock is dead at
``last_heartbeat + missed_heartbeats x interval``; the permission check computes that at
each call, so no sweep has to run first. ``service.check`` is polled every 5 ms from before
the deadline until it answers allowed; the figure is the delay from the deadline to that
answer, over several runs. The check must deny before the deadline (verified each run).

The baseline is what a sweep-based design would make writers wait in the worst case: the
heartbeat sweep period (``heartbeat_sweep_interval_s``), which here only tidies up.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from bench.common import Figure, Report, bench_settings, percentiles
from indexgate.events.decode import event_key
from indexgate.clock import utcnow
from indexgate.locks import heartbeat_deadline
from indexgate.service import Origin, Service
from indexgate.schemas.payloads import StartedData

INTERVAL_S = 0.2
POLL_S = 0.005


def run(report: Report, folder: Path, broker: str, runs: int = 10) -> list[float]:
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    delays: list[float] = []
    early: list[str] = []
    for n in range(runs):
        branch = f"bench/dead-{uuid.uuid4().hex[:8]}"
        job = f"dead-{n}"
        data = StartedData(job_id=job, branch=branch, resource_types=["object_type"], heartbeat_interval_s=INTERVAL_S)
        key = event_key("bench", f"dead-{uuid.uuid4().hex}")
        out = service.start(data, Origin(actor="bench", key=key, time=utcnow()))
        if out.status != "applied":
            raise RuntimeError(f"run {n}: start was {out.status}: {out.detail}")
        lock = service.store.load(branch).locks[0]
        deadline = heartbeat_deadline(lock, service.policy)
        if service.check(branch, "object_type").allowed and utcnow() < deadline:
            early.append(job)
        give_up = time.monotonic() + 10 * INTERVAL_S * service.policy.missed_heartbeats
        while True:
            decision = service.check(branch, "object_type")
            now = utcnow()
            if decision.allowed:
                if now < deadline:
                    early.append(job)
                delays.append((now - deadline).total_seconds() * 1000)
                break
            if time.monotonic() > give_up:
                delays.append(float("inf"))
                break
            time.sleep(POLL_S)
    service.store.close()
    stats = percentiles(delays)
    sweep_ms = settings.heartbeat_sweep_interval_s * 1000
    note = (f"{runs} jobs with heartbeat_interval_s={INTERVAL_S} that never heartbeat; deadline = last heartbeat + "
            f"{service.policy.missed_heartbeats} x interval; check polled every {POLL_S * 1000:.0f} ms, so up to "
            f"{POLL_S * 1000:.0f} ms of each delay is the polling step")
    if early:
        note += f"; ALLOWED BEFORE THE DEADLINE in {len(early)} run(s): {', '.join(early)}"
    met = stats["max"] <= 1000 and not early
    report.add(Figure(f"dead holder: deadline -> writes allowed, max ({runs} runs)", stats["max"], "ms",
                      "heartbeat sweep interval", sweep_ms, "<= 1 s", met, note))
    report.add(Figure("dead holder: deadline -> writes allowed, p50", stats["p50"], "ms",
                      "heartbeat sweep interval", sweep_ms, "informational", True))
    return delays
