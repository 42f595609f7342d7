"""Soak over many distinct branches: one job per branch (started, heartbeats, completed)
through one real worker, while its RSS and the store's size are sampled.

``python -m bench soak --branches 100000``: the worker must not keep anything per branch it
has seen (its RSS flat after the warm-up, as in ``bench.soak``), and the store keeps per
branch only its aggregate (the fencing counter and the finished job it remembers) and the
job's reference row, while retention prunes the per-event rows (inbox keys, audit
entries). Jobs go in waves of ``WAVE`` branches: the wave's starts, then its heartbeats,
then its completions, each step published at once and waited for (a funnel sends a job's
heartbeats only after its start).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from bench.common import Figure, Report, SeenWatcher, completed, event_key, heartbeat, started
from bench.soak import has_psutil, soaking

WAVE = 200
HEARTBEATS = 2


def run(report: Report, folder: Path, broker: str, branches: int = 100_000) -> list[float]:
    if not has_psutil():
        return []
    tag = uuid.uuid4().hex[:8]
    sent = 0
    with soaking(folder, broker) as soak:
        for first in range(0, branches, WAVE):
            jobs = [(f"soakb-{tag}-{n}", f"bench/soakb-{tag}-{n:06d}") for n in range(first, min(first + WAVE, branches))]
            steps = [[started(job, branch, ["object_type"], heartbeat_interval_s=3600) for job, branch in jobs]]
            for _ in range(HEARTBEATS):
                steps.append([heartbeat(job, (sent := sent + 1), tag) for job, _ in jobs])
            steps.append([completed(job) for job, _ in jobs])
            for events in steps:
                for event in events:
                    soak.publisher.publish_funnel(event)
                SeenWatcher(soak.service.store, [event_key(e) for e in events]).wait_all(120, 0.005)
                soak.applied["n"] += len(events)
            soak.marks.append((soak.applied["n"], time.perf_counter()))
    soak.pruner.prune_all(soak.settings)
    meter = soak.sampler.meter
    rows, used, applied = meter.rows(), meter.sample()[0], soak.applied["n"]
    soak.summarize(report, f"{applied} events on {branches} distinct branches (one job each: started, "
                           f"{HEARTBEATS} heartbeats, completed)", store_goals=False)
    if rows.get("branches"):
        report.add(Figure("soak: store bytes kept per branch, after a last retention run", used / rows["branches"],
                          "B/branch", "bytes kept per event", used / max(1, applied), "informational", True,
                          f"once every inbox key and audit entry is pruned, what stays is the branch aggregate "
                          f"(fencing counter, the finished job it remembers for job_retention_s) and the job's "
                          f"reference row, with their index entries; rows then: "
                          f"{', '.join(f'{k} {v}' for k, v in rows.items())}; {used / 2**20:.1f} MB in use"))
    return [rss / 2**20 for _, _, rss in soak.sampler.samples]
