"""Switch blackout: 100 shadow switches through the real broker, worker and store.

Each round registers a shadow build, completes it and requests the switch, all as funnel
CloudEvents over the broker; a real ``celery -A workers worker`` (prefork, default
concurrency) runs the switch. The blackout (switch lock held: writes denied) and the whole
switch duration are read from the build record the worker wrote. The reference is the
seed design's switch, which blocked writes for 10 s.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Figure, Report, bench_settings, percentiles, wait_until
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.errors import IndexgateError
from indexgate.testing.indexes import write_index
from indexgate.service import Service
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import worker_processes

SEED_BLACKOUT_MS = 10_000.0
BRANCH = "bench/switch"


def run(report: Report, folder: Path, broker: str, switches: int = 100) -> list[float]:
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    location = write_index(folder / "index", 1_000)
    blackouts: list[float] = []
    durations: list[float] = []

    def state(job: str) -> str | None:
        try:
            return service.shadows.status(job)["state"]
        except IndexgateError:
            return None

    try:
        with worker_processes(settings, count=1, concurrency=None):
            for n in range(switches):
                job = f"switch-{n}"
                publisher.publish_funnel(funnel_event("com.oms.indexing.started", {
                    "job_id": job, "branch": BRANCH, "resource_types": ["object_type", "link_type"],
                    "indexing_mode": "shadow", "index_type": "SEARCH_INDEX"}))
                # prefork runs events in parallel: a completion overtaking its start would be
                # recorded for an unknown job, so a funnel sends it only once it built the index
                wait_until(lambda: state(job) == "PREPARING")
                publisher.publish_funnel(funnel_event("com.oms.indexing.completed", {
                    "job_id": job, "record_count": 1_000, "index_size_bytes": 10_000, "location": location}))
                wait_until(lambda: state(job) == "BUILT")
                publisher.publish_funnel(funnel_event("com.oms.shadow.switch.requested", {"job_id": job}))
                status = wait_until(lambda: (s := service.shadows.status(job))["blackout_ms"] is not None and s)
                if status["state"] != "ACTIVE":
                    raise RuntimeError(f"switch {n} did not succeed: {status}")
                blackouts.append(status["blackout_ms"])
                durations.append(status["switch_duration_ms"])
    finally:
        publisher.close()
        delete_run_names(settings)
    stats = percentiles(blackouts)
    for key in ("p50", "p99", "max"):
        report.add(Figure(f"switch blackout {key} ({switches} switches)", stats[key], "ms",
                          "seed switch blackout", SEED_BLACKOUT_MS, "p99 < 50 ms", stats["p99"] < 50))
    report.add(Figure("switch duration p99 (validation..record)", percentiles(durations)["p99"], "ms",
                      "seed switch blackout", SEED_BLACKOUT_MS, "informational", True))
    report.samples["switch blackout (ms)"] = blackouts
    return blackouts
