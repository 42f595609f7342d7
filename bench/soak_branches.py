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

from bench.common import CpuMeter, Figure, Report, SeenWatcher, bench_settings, completed, event_key, heartbeat, started
from bench.soak import KEEP_S, PRUNE_EVERY_S, RssSampler, summarize
from bench.soak_store import Pruner, StoreMeter
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import worker_processes
from indexgate.workers.app import create_app

WAVE = 200
HEARTBEATS = 2


def run(report: Report, folder: Path, broker: str, branches: int = 100_000) -> list[float]:
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("  (psutil not installed: no soak; pip install -e '.[bench]')")
        return []
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    tag = uuid.uuid4().hex[:8]
    applied = {"n": 0}
    marks: list[tuple[int, float]] = []
    sent = 0
    try:
        with worker_processes(settings, count=1, concurrency=None) as procs:
            meter = StoreMeter(settings)
            sampler = RssSampler(procs, lambda: applied["n"], meter)
            pruner = Pruner(settings, KEEP_S, PRUNE_EVERY_S)
            cpu_meter = CpuMeter(procs).start()
            sampler.start()
            pruner.start()
            try:
                for first in range(0, branches, WAVE):
                    jobs = [(f"soakb-{tag}-{n}", f"bench/soakb-{tag}-{n:06d}")
                            for n in range(first, min(first + WAVE, branches))]
                    steps = [[started(job, branch, ["object_type"], heartbeat_interval_s=3600) for job, branch in jobs]]
                    for _ in range(HEARTBEATS):
                        steps.append([heartbeat(job, (sent := sent + 1), tag) for job, _ in jobs])
                    steps.append([completed(job) for job, _ in jobs])
                    for events in steps:
                        for event in events:
                            publisher.publish_funnel(event)
                        SeenWatcher(service.store, [event_key(e) for e in events]).wait_all(120, 0.005)
                        applied["n"] += len(events)
                    marks.append((applied["n"], time.perf_counter()))
            finally:
                sampler.done.set()
                pruner.done.set()
                sampler.join(5)
                pruner.join(10)
            cpu = cpu_meter.stop()
        pruner.prune_all(settings)
        rows = meter.rows()
        used = meter.sample()[0]
    finally:
        publisher.close()
        service.store.close()
        delete_run_names(settings)
    what = f"{applied['n']} events on {branches} distinct branches (one job each: started, {HEARTBEATS} heartbeats, completed)"
    summarize(report, sampler, applied["n"], marks, create_app(settings).conf.task_soft_time_limit or 0, what, cpu,
              pruner)
    if rows.get("branches"):
        report.add(Figure("soak: store bytes kept per branch, after a last retention run", used / rows["branches"],
                          "B/branch", "bytes kept per event", used / max(1, applied["n"]), "informational", True,
                          f"once every inbox key and audit entry is pruned, what stays is the branch aggregate "
                          f"(fencing counter, the finished job it remembers for job_retention_s) and the job's "
                          f"reference row, with their index entries; rows then: "
                          f"{', '.join(f'{k} {v}' for k, v in rows.items())}; {used / 2**20:.1f} MB in use"))
    return [rss / 2**20 for _, _, rss in sampler.samples]
