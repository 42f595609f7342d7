"""Soak: N funnel events through one real worker while its memory is sampled.

The events are heartbeats for a live job and, every ``cycle`` events, a job cycle: the job
completes and the next one starts (on the same branch, as a busy branch sees). Publishing is
flow-controlled, at most two batches outstanding, so the worker runs at its own pace without
a backlog piling up in the broker. Every ~1 s the resident set size (RSS) of the worker's
process tree (main process + pool children, psutil) is sampled with the number of events
applied so far.

Growth = mean RSS of the last 20 % of samples / mean RSS of the samples taken while the
events from 20 % to 40 % were applied (the warm-up, imports and first allocations, is the
first 20 %). The throughput of the first and last fifth of the events is reported beside
it (the branch aggregate every event rewrites also carries the finished jobs it remembers).

Measured while writing this suite (tracemalloc in the worker's main process, and a
100,000-event soak): the main process grows by ~0.5 KB per task for as long as the task
time limits (``task_soft_time_limit`` 240 s, ``task_time_limit`` 300 s): billiard/kombu
schedule a timeout entry per task, and a cancelled entry stays in the timer heap until it
would have fired. RSS then levels off (at ~250 s there: +33 MB at ~250 events/s), so the
growth figure of a soak shorter than that measures this fill, not a leak.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from bench.common import (
    CpuMeter,
    Figure,
    Report,
    SeenWatcher,
    bench_settings,
    completed,
    event_key,
    heartbeat,
    started,
    wait_until,
    worker_rss,
)
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.workers.app import create_app
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import worker_processes

BATCH = 200
SAMPLE_S = 1.0


class RssSampler(threading.Thread):
    def __init__(self, procs, progress) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.procs = procs
        self.progress = progress
        self.samples: list[tuple[float, int, int]] = []  # (t, events applied, rss bytes)
        self.split: list[tuple[int, int]] = []  # (main, pool children) rss bytes
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.is_set():
            main, children = worker_rss(self.procs)
            self.samples.append((time.monotonic() - t0, self.progress(), main + children))
            self.split.append((main, children))
            self.done.wait(SAMPLE_S)


def run(report: Report, folder: Path, broker: str, events: int = 20_000, cycle: int = 100) -> list[float]:
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("  (psutil not installed: no soak; pip install -e '.[bench]')")
        return []
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    tag = uuid.uuid4().hex[:8]
    branch = f"bench/soak-{tag}"
    applied = {"n": 0}
    marks: list[tuple[int, float]] = []  # (events applied, perf_counter)
    jobs = 0
    try:
        with worker_processes(settings, count=1, concurrency=None) as procs:
            sampler = RssSampler(procs, lambda: applied["n"])
            meter = CpuMeter(procs).start()
            sampler.start()
            job, published, previous = None, 0, None
            marks.append((0, time.perf_counter()))
            try:
                while published < events:
                    batch = []
                    while len(batch) < BATCH and published < events:
                        if job is None or published % cycle == 0:
                            # prefork runs events in parallel, so like a funnel the soak sends the
                            # next job's start only once the previous job's end is applied (its lock
                            # would refuse the start) and heartbeats only once the start is
                            for event in ([completed(job)] if job else []) + [
                                    started(f"soak-{tag}-{jobs}", branch, ["object_type"], heartbeat_interval_s=3600)]:
                                publisher.publish_funnel(event)
                                wait_until(lambda: service.store.seen(event_key(event)), 60, 0.002)
                                published += 1
                                applied["n"] += 1
                            job = f"soak-{tag}-{jobs}"
                            jobs += 1
                            continue
                        batch.append(heartbeat(job, published, tag))
                        published += 1
                    for event in batch:
                        publisher.publish_funnel(event)
                    if previous is not None:
                        previous.wait_all(120, 0.005)
                        applied["n"] += len(previous.keys)
                        marks.append((applied["n"], time.perf_counter()))
                    previous = SeenWatcher(service.store, [event_key(e) for e in batch])
                if previous is not None:
                    previous.wait_all(120, 0.005)
                    applied["n"] += len(previous.keys)
                    marks.append((applied["n"], time.perf_counter()))
            finally:
                sampler.done.set()
                sampler.join(5)
            cpu = meter.stop()
            state = service.store.load(branch)
            doc_kb = len(state.model_dump_json()) / 1024 if state else 0.0
    finally:
        publisher.close()
        service.store.close()
        delete_run_names(settings)

    samples = sampler.samples
    total = applied["n"]
    warm = [rss for _, n, rss in samples if 0.2 * total <= n < 0.4 * total]
    if len(warm) < 2:  # a short soak: the first samples after the warm-up
        warm = [rss for _, n, rss in samples if n >= 0.2 * total][:3]
    tail = [rss for _, _, rss in samples[-max(1, len(samples) // 5):]]
    warm_mb = sum(warm) / len(warm) / 2**20 if warm else float("nan")
    tail_mb = sum(tail) / len(tail) / 2**20
    growth = tail_mb / warm_mb - 1 if warm else float("nan")

    def rate(lo: float, hi: float) -> float:
        inside = [(n, t) for n, t in marks if lo * total <= n <= hi * total]
        if len(inside) < 2:
            return float("nan")
        (n0, t0), (n1, t1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")

    first_rate, last_rate = rate(0.0, 0.2), rate(0.8, 1.0)

    def slope(values: list[int], since: int = 0) -> float:
        """MB per 10,000 events, least squares over the samples after the warm-up (and ``since``)."""
        points = [(n, v) for i, ((_, n, _), v) in enumerate(zip(samples, values)) if n >= 0.2 * total and i >= since]
        if len(points) < 3:
            return float("nan")
        mean_n = sum(n for n, _ in points) / len(points)
        mean_v = sum(v for _, v in points) / len(points)
        var = sum((n - mean_n) ** 2 for n, _ in points)
        return sum((n - mean_n) * (v - mean_v) for n, v in points) / var * 10_000 / 2**20 if var else float("nan")

    totals = [r for _, _, r in samples]
    third = max(3, len(samples) // 3)
    trend = (f"after the warm-up RSS changes by {slope(totals):+.2f} MB per 10,000 events (main process "
             f"{slope([m for m, _ in sampler.split]):+.2f}, pool children {slope([c for _, c in sampler.split]):+.2f}; "
             f"least squares), over the last third of the samples by {slope(totals, since=len(samples) - third):+.2f}")
    soft_limit = create_app(settings).conf.task_soft_time_limit or 0
    duration = samples[-1][0] if samples else 0.0
    if duration < soft_limit + 60:
        trend += (f"; the soak lasted {duration:.0f} s, less than task_soft_time_limit ({soft_limit} s) + 60 s: "
                  "the worker's main process keeps a cancelled timer entry per finished task until its time "
                  "limit would have fired, so its RSS still grows with the event rate until then (a 100,000-event "
                  "soak levels off after ~250 s); a soak past that point measures steady state")
    note = (f"{total} events ({jobs} jobs of {cycle} events on one branch), {len(samples)} RSS samples of the worker "
            f"tree (main + pool children, shared pages counted in each); warm-up mean from {len(warm)} samples, "
            f"final mean from {len(tail)}; {trend}; {CpuMeter.describe(cpu)}")
    if len(samples) < 10:
        note += "; fewer than 10 samples: run a longer soak for a meaningful growth figure"
    met = growth < 0.10
    report.add(Figure(f"soak: worker RSS after {total} events", tail_mb, "MB", "RSS after warm-up (20-40 % of events)",
                      warm_mb, "growth < 10 %", met, note))
    report.add(Figure("soak: events/s, last fifth of the events", last_rate, "ev/s", "events/s, first fifth",
                      first_rate, "informational", True,
                      f"{jobs} jobs cycled on one branch; its aggregate, rewritten by every event, was "
                      f"{doc_kb:.1f} KB at the end"))
    report.context["soak_rss_mb (s:events:total:main:children)"] = ", ".join(
        f"{t:.0f}:{n}:{rss / 2**20:.1f}:{m / 2**20:.1f}:{c / 2**20:.1f}"
        for (t, n, rss), (m, c) in zip(samples, sampler.split))
    return [rss / 2**20 for _, _, rss in samples]
