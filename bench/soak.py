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

Retention runs meanwhile (``bench.soak_store.Pruner``: the beat job's use case, with a
``KEEP_S`` retention so the soak reaches its steady state in seconds), and the store's bytes
in use are sampled with the RSS: the store must stop growing with the events once the
first rows pass their retention (bytes per event, beside the bytes per event before).
``--branches N`` runs the jobs on N distinct branches instead (``bench.soak_branches``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from bench.soak_store import Pruner, StoreMeter, kept_for_good, slope as bytes_slope
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.workers.app import create_app
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import worker_processes

BATCH = 200
SAMPLE_S = 1.0


KEEP_S = 10.0  # retention of inbox keys, audit entries, dead letters during a soak
PRUNE_EVERY_S = 1.0


class RssSampler(threading.Thread):
    def __init__(self, procs, progress, meter: StoreMeter | None = None) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.procs = procs
        self.progress = progress
        self.meter = meter
        self.samples: list[tuple[float, int, int]] = []  # (t, events applied, rss bytes)
        self.split: list[tuple[int, int]] = []  # (main, pool children) rss bytes
        self.store: list[tuple[int, int]] = []  # (bytes in use, bytes on disk) of the store
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.is_set():
            main, children = worker_rss(self.procs)
            self.samples.append((time.monotonic() - t0, self.progress(), main + children))
            self.split.append((main, children))
            self.store.append(self.meter.sample() if self.meter else (0, 0))
            self.done.wait(SAMPLE_S)


@dataclass
class Soak:
    """One soak in progress: the worker, its clients, the samplers and what was applied."""

    settings: Settings
    service: Service
    publisher: Publisher
    sampler: RssSampler
    pruner: Pruner
    cpu_meter: CpuMeter
    applied: dict[str, int] = field(default_factory=lambda: {"n": 0})
    marks: list[tuple[int, float]] = field(default_factory=list)  # (events applied, perf_counter)
    cpu: dict[str, float] = field(default_factory=dict)

    def summarize(self, report: Report, what: str, store_goals: bool = True) -> None:
        summarize(report, self.sampler, self.applied["n"], self.marks,
                  create_app(self.settings).conf.task_soft_time_limit or 0, what, self.cpu, self.pruner, store_goals)


@contextmanager
def soaking(folder: Path, broker: str) -> Iterator[Soak]:
    """A real worker on ``broker`` with RSS and store sampling and retention running; the
    samplers stop (and ``cpu`` is set) when the block ends."""
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    try:
        with worker_processes(settings, count=1, concurrency=None) as procs:
            applied = {"n": 0}
            soak = Soak(settings, service, publisher, RssSampler(procs, lambda: applied["n"], StoreMeter(settings)),
                        Pruner(settings, KEEP_S, PRUNE_EVERY_S), CpuMeter(procs).start(), applied)
            soak.sampler.start()
            soak.pruner.start()
            try:
                yield soak
            finally:
                soak.sampler.done.set()
                soak.pruner.done.set()
                soak.sampler.join(5)
                soak.pruner.join(10)
            soak.cpu = soak.cpu_meter.stop()
    finally:
        publisher.close()
        service.store.close()
        delete_run_names(settings)


def has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("  (psutil not installed: no soak; pip install -e '.[bench]')")
        return False
    return True


def run(report: Report, folder: Path, broker: str, events: int = 20_000, cycle: int = 100) -> list[float]:
    if not has_psutil():
        return []
    tag = uuid.uuid4().hex[:8]
    branch = f"bench/soak-{tag}"
    jobs = 0
    with soaking(folder, broker) as soak:
        service, publisher, applied, marks = soak.service, soak.publisher, soak.applied, soak.marks
        job, published, previous = None, 0, None
        marks.append((0, time.perf_counter()))
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
        state = service.store.load(branch)
        doc_kb = len(state.model_dump_json()) / 1024 if state else 0.0

    sampler, applied, marks = soak.sampler, soak.applied, soak.marks
    soak.summarize(report, f"{applied['n']} events ({jobs} jobs of {cycle} events on one branch)")
    report.add(Figure("soak: events/s, last fifth of the events", _rate(marks, applied["n"], 0.8, 1.0), "ev/s",
                      "events/s, first fifth", _rate(marks, applied["n"], 0.0, 0.2), "informational", True,
                      f"{jobs} jobs cycled on one branch; its aggregate, rewritten by every event, was "
                      f"{doc_kb:.1f} KB at the end"))
    return [rss / 2**20 for _, _, rss in sampler.samples]


def _rate(marks: list[tuple[int, float]], total: int, lo: float, hi: float) -> float:
    inside = [(n, t) for n, t in marks if lo * total <= n <= hi * total]
    if len(inside) < 2:
        return float("nan")
    (n0, t0), (n1, t1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def summarize(report: Report, sampler: RssSampler, total: int, marks, soft_limit: float, what: str, cpu,
              pruner: Pruner, store_goals: bool = True) -> None:
    """The RSS figure (growth after the warm-up) and the store-bytes figures (bytes per event
    once retention prunes, beside the bytes per event before it did), for either soak; with
    ``store_goals`` False (new branches keep adding aggregates) the store figures are only
    informational."""
    samples = sampler.samples
    warm = [rss for _, n, rss in samples if 0.2 * total <= n < 0.4 * total]
    if len(warm) < 2:  # a short soak: the first samples after the warm-up
        warm = [rss for _, n, rss in samples if n >= 0.2 * total][:3]
    tail = [rss for _, _, rss in samples[-max(1, len(samples) // 5):]]
    warm_mb = sum(warm) / len(warm) / 2**20 if warm else float("nan")
    tail_mb = sum(tail) / len(tail) / 2**20
    growth = tail_mb / warm_mb - 1 if warm else float("nan")

    def slope(values: list[int], since: int = 0) -> float:
        """MB per 10,000 events, least squares over the samples after the warm-up (and ``since``)."""
        points = [(n, v) for i, ((_, n, _), v) in enumerate(zip(samples, values)) if n >= 0.2 * total and i >= since]
        return bytes_slope(points) * 10_000 / 2**20

    totals = [r for _, _, r in samples]
    third = max(3, len(samples) // 3)
    trend = (f"after the warm-up RSS changes by {slope(totals):+.2f} MB per 10,000 events (main process "
             f"{slope([m for m, _ in sampler.split]):+.2f}, pool children {slope([c for _, c in sampler.split]):+.2f}; "
             f"least squares), over the last third of the samples by {slope(totals, since=len(samples) - third):+.2f}")
    duration = samples[-1][0] if samples else 0.0
    if duration < soft_limit + 60:
        trend += (f"; the soak lasted {duration:.0f} s, less than task_soft_time_limit ({soft_limit} s) + 60 s: "
                  "the worker's main process keeps a cancelled timer entry per finished task until its time "
                  "limit would have fired, so its RSS still grows with the event rate until then (a 100,000-event "
                  "soak levels off after ~250 s); a soak past that point measures steady state")
    note = (f"{what}, {len(samples)} RSS samples of the worker tree (main + pool children, shared pages counted in "
            f"each); warm-up mean from {len(warm)} samples, final mean from {len(tail)}; {trend}; "
            f"{CpuMeter.describe(cpu)}")
    if len(samples) < 10:
        note += "; fewer than 10 samples: run a longer soak for a meaningful growth figure"
    report.add(Figure(f"soak: worker RSS after {total} events", tail_mb, "MB", "RSS after warm-up (20-40 % of events)",
                      warm_mb, "growth < 10 %", growth < 0.10, note))
    _store_figure(report, sampler, pruner, store_goals)


def _store_figure(report: Report, sampler: RssSampler, pruner: Pruner, goals: bool) -> None:
    points = [(t, n, used, disk) for (t, n, _), (used, disk) in zip(sampler.samples, sampler.store) if used]
    if not points:
        return
    before = [(n, used) for t, n, used, _ in points if 1.0 <= t < KEEP_S]  # nothing old enough to prune yet
    steady = [(n, used) for t, n, used, _ in points if t >= 2 * KEEP_S + 5]
    baseline, slope_after = bytes_slope(before), bytes_slope(steady)
    window_s = KEEP_S + PRUNE_EVERY_S / 2  # a row is pruned by the first run after it passes KEEP_S
    per_event, per_windowed = kept_for_good([(t, n, used) for t, n, used, _ in points], window_s, 2 * KEEP_S + 5)
    flat = abs(per_event) < 0.05 * baseline if baseline == baseline and baseline > 0 else False
    kept = "informational: every event wave adds branches whose aggregates stay (bytes kept per branch below)"
    growth = (steady[-1][1] - steady[0][1]) / 2**20 if len(steady) > 1 else float("nan")
    disk_mb = [disk / 2**20 for *_, disk in points]
    report.add(Figure("soak: store bytes each event keeps for good, with retention", per_event, "B/ev",
                      "bytes per event before retention pruned anything (same run)", baseline,
                      "flat (|value| < 5 % of the baseline)" if goals else kept, flat or not goals,
                      f"SQLite bytes in use (pages less the free list), {len(steady)} samples from "
                      f"{2 * KEEP_S + 5:.0f} s on fitted to the events inside the last {window_s:.1f} s "
                      f"({per_windowed:.0f} B each: they are still kept) and the events applied so far (this "
                      f"figure); the plain slope over the events applied is {slope_after:+.0f} B/ev, moved by the "
                      f"event rate (the window holds more events when it rises); retention {KEEP_S:.0f} s for inbox keys, audit entries and "
                      f"dead letters, run every {PRUNE_EVERY_S:.0f} s by the benchmark (the beat job's use case); "
                      f"{pruner.describe()}; in use at the end {points[-1][2] / 2**20:.2f} MB, on disk (file + WAL) "
                      f"{disk_mb[-1]:.2f} MB, at most {max(disk_mb):.2f} MB; rows at the end: "
                      f"{', '.join(f'{k} {v}' for k, v in sampler.meter.rows().items())}"))
    events, used_mb = points[-1][1], points[-1][2] / 2**20
    steady_mb = [used / 2**20 for _, used in steady]
    projected_mb = baseline * events / 2**20
    report.add(Figure(f"soak: store bytes in use after {events} events, with retention", used_mb, "MB",
                      "the same events without retention (bytes per event before pruning x events)", projected_mb,
                      "informational (the slope above is the goal)", True,
                      f"in use from {2 * KEEP_S + 5:.0f} s on: {min(steady_mb, default=0):.2f}-"
                      f"{max(steady_mb, default=0):.2f} MB, {growth:+.2f} MB from the first of those samples to the "
                      f"last while {steady[-1][0] - steady[0][0] if steady else 0} events were applied; the store "
                      f"holds the last {KEEP_S:.0f} s of "
                      "events, so its size follows the event rate, not the events applied so far"))
