"""``/metrics`` of a real ``indexgate serve`` after a scripted scenario on a real worker.

A prefork worker (two pool children) on the real Redis counts in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, wiped at its start); ``indexgate serve``
merges those files (``INDEXGATE_WORKER_METRICS_DIR``) and reads the store and the broker at
scrape time. After grant, heartbeat, death, switch and dead letter, every listed metric
has the value the scenario implies; counters are summed over both pool children.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.api import api_process
from indexgate.testing.processes import start_worker, stop, wait_ready
from indexgate.workers.app import create_app
from tests import ops_kit
from tests.ops_kit import redis_settings  # noqa: F401 (a fixture)
from tests.conftest import REDIS_URL, isolated_settings

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition as {(name, labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_metrics_after_grant_heartbeat_death_switch_dead_letter(redis_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    stale = folder / "counter_999999.db"
    stale.write_bytes(b"left by an earlier run")
    worker = start_worker(redis_settings, "metrics", concurrency=2, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    service = Service.from_settings(redis_settings)
    try:
        wait_ready(redis_settings, [worker])
        assert not stale.exists(), "the worker wipes its metrics folder at start"
        scenario = ops_kit.Scenario.new()
        ops_kit.run(redis_settings, service, scenario, tmp_path)
        with api_process(redis_settings, worker_metrics_dir=str(folder)) as url:
            assert httpx.get(f"{url}/v1/check", params={"branch": scenario.live_branch,
                                                        "resource_type": "object_type"}).json()["allowed"] is False
            before = samples(httpx.get(f"{url}/metrics").text)
            sent_at = time.time()
            app = create_app(redis_settings)
            app.send_task("indexgate.sweep_heartbeats")
            ops_kit.wait_for(lambda: not any(v.lock.job_id == scenario.dying_job for v in service.list_locks()),
                             what="the sweep to release the dead lock")
            ops_kit.wait_for(lambda: value(samples(httpx.get(f"{url}/metrics").text),
                                           "indexgate_sweep_last_run_timestamp_seconds", sweep="sweep_heartbeats"),
                             what="the sweep's last-run gauge")
            after = samples(httpx.get(f"{url}/metrics").text)
            app.close()
    finally:
        stop(worker)
        service.store.close()

    # worker side, merged from the pool children's files
    assert value(before, "indexgate_events_total", type="indexing.started", outcome="applied") == 3
    assert value(before, "indexgate_events_total", type="indexing.heartbeat", outcome="applied") == 1
    assert value(before, "indexgate_events_total", type="indexing.completed", outcome="applied") == 1
    assert value(before, "indexgate_events_total", type="shadow.switch", outcome="switched") == 1
    assert value(before, "indexgate_events_total", type="unknown", outcome="dead_lettered") == 1
    assert value(before, "indexgate_dead_letters_total", type="unknown") == 1
    assert value(before, "indexgate_switches_total", outcome="switched") == 1
    assert value(before, "indexgate_switch_blackout_seconds_count") == 1
    assert 0 < value(before, "indexgate_switch_blackout_seconds_sum") < 1
    assert value(before, "indexgate_switch_duration_seconds_count") == 1
    assert value(before, "indexgate_switch_duration_seconds_sum") >= value(before, "indexgate_switch_blackout_seconds_sum")
    # state at scrape time
    assert value(before, "indexgate_store_up") == 1 and value(before, "indexgate_broker_up") == 1
    assert value(before, "indexgate_locks", health="healthy", kind="INDEXING") == 1
    assert value(before, "indexgate_locks", health="critical", kind="INDEXING") == 1
    assert value(before, "indexgate_locks", health="warning", kind="INDEXING") == 0
    assert value(before, "indexgate_locks_past_eta") == 0
    assert value(before, "indexgate_lock_oldest_age_seconds") > 0
    assert value(before, "indexgate_lock_time_to_deadline_min_seconds") < 0  # the dead one is past its deadline
    assert value(before, "indexgate_shadow_builds", state="ACTIVE") == 1
    assert value(before, "indexgate_shadow_builds", state="BUILDING") == 0
    assert value(before, "indexgate_active_indexes") == 1
    assert value(before, "indexgate_beat_lease_held") == 0  # no beat in this scenario
    assert value(before, "indexgate_intake_backlog") == 0 and value(before, "indexgate_intake_unacked") == 0
    assert value(before, "indexgate_intake_alerts", alert="no_reader") == 0
    assert value(before, "indexgate_sweep_interval_seconds", sweep="sweep_heartbeats") == 30
    assert value(before, "indexgate_api_checks_total", answer="denied") == 1
    # after the sweep: the dead lock is gone, the sweep is timed and its last run recorded
    assert value(after, "indexgate_locks", health="critical", kind="INDEXING") == 0
    assert value(after, "indexgate_locks", health="healthy", kind="INDEXING") == 1
    assert value(after, "indexgate_sweep_duration_seconds_count", sweep="sweep_heartbeats") == 1
    assert sent_at <= value(after, "indexgate_sweep_last_run_timestamp_seconds", sweep="sweep_heartbeats") <= time.time()


def test_metrics_say_store_down_instead_of_zeros(tmp_path: Path) -> None:
    """A store that cannot answer is ``indexgate_store_up 0`` and no lock gauges, not 'no locks'."""
    settings = isolated_settings(tmp_path, REDIS_URL, initialize=False)
    with api_process(settings) as url:
        found = samples(httpx.get(f"{url}/metrics").text)
    assert value(found, "indexgate_store_up") == 0
    assert not any(name == "indexgate_locks" for name, _ in found)
    assert value(found, "indexgate_api_store_errors_total", error="StoreNotInitialized") >= 1


def test_a_locked_store_shows_as_store_errors_and_store_down(redis_settings: Settings, tmp_path: Path) -> None:
    """SQLite write-locked by another process: the worker's tasks retry and count
    ``indexgate_store_errors_total`` (reads still answer in WAL mode, so ``indexgate_store_up``
    stays 1: the IndexgateWorkerStoreErrors alert covers this case); once released the event
    is applied."""
    import sqlite3

    from indexgate.events.decode import event_key
    from indexgate.events.publisher import Publisher, funnel_event

    folder = tmp_path / "metrics"
    worker = start_worker(redis_settings, "locked", concurrency=1, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)},
                          sqlite_busy_timeout_s="0.2", store_retry_max_s="1")
    service = Service.from_settings(redis_settings)
    try:
        wait_ready(redis_settings, [worker])
        with api_process(redis_settings, worker_metrics_dir=str(folder)) as url:
            locker = sqlite3.connect(redis_settings.data_dir / "indexgate.db", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            event = funnel_event("com.oms.indexing.started", {"job_id": "job-locked", "branch": "ops/locked",
                                                              "resource_types": ["object_type"]}, source="funnel")
            publisher = Publisher(redis_settings)
            publisher.publish_funnel(event)
            publisher.close()
            ops_kit.wait_for(lambda: (value(samples(httpx.get(f"{url}/metrics").text), "indexgate_store_errors_total",
                                            task="indexgate.indexing.started") or 0) >= 1, what="a store error")
            down = samples(httpx.get(f"{url}/metrics").text)
            locker.execute("ROLLBACK")
            locker.close()
            ops_kit.wait_for(lambda: service.store.seen(event_key("funnel", event.get_id())), what="the retried start")
            up = samples(httpx.get(f"{url}/metrics").text)
    finally:
        stop(worker)
        service.store.close()
    assert value(down, "indexgate_store_errors_total", task="indexgate.indexing.started") >= 1
    assert value(down, "indexgate_events_total", type="indexing.started", outcome="applied") is None
    assert value(up, "indexgate_store_up") == 1
    assert value(up, "indexgate_events_total", type="indexing.started", outcome="applied") == 1
