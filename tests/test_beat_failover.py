"""One beat sends, the others wait; SIGKILL the sender and another takes over within 3 lease
intervals; a sweep sent under the lost lease changes nothing. Real ``celery beat``
processes, a real worker on the real Redis, one SQLite store shared by all of them.

Which beat sends is read from what each logs at INFO for every job it sends (Celery's
"Scheduler: Sending due task ..."); the lease's holder names the process (``host:pid``).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from indexgate.beat_schedule import SWEEP_HEARTBEATS
from indexgate.clock import poll, utcnow
from indexgate.leases import BEAT
from indexgate.schemas.records import Lease
from indexgate.service import Service
from indexgate.testing.processes import start_beat, start_worker, stop, wait_ready
from indexgate.workers.app import create_app
from tests.conftest import REDIS_URL, isolated_settings, require_reachable
from tests.test_service import start

pytestmark = pytest.mark.slow

INTERVAL_S = 1.0  # the lease interval of these runs (production default 10 s)
SENT = "Scheduler: Sending due task"
EVERY_SECOND = {name: INTERVAL_S for name in ("beat_lease_interval_s", "heartbeat_sweep_interval_s",
                                                "health_sweep_interval_s", "ttl_sweep_interval_s",
                                                "outbox_relay_interval_s")}


def sent(log: Path) -> int:
    return log.read_text(errors="replace").count(SENT)


def live_lease(service: Service) -> Lease | None:
    lease = service.leases.current(BEAT)
    return lease if lease is not None and lease.alive(utcnow()) else None


def held_by(lease: Lease, proc: subprocess.Popen) -> bool:
    return lease.holder.endswith(f":{proc.pid}")


def dying_lock(service: Service, job: str) -> None:
    """A lock whose holder never heartbeats: dead after 3 x 1 s."""
    assert start(service, job, f"type-{job}", heartbeat_interval_s=1, time=utcnow()).status == "applied"


def released(service: Service, job: str) -> bool:
    return not any(view.lock.job_id == job for view in service.list_locks())


def test_two_beats_one_sends_sigkill_it_and_the_other_takes_over(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, **EVERY_SECOND)
    service = Service.from_settings(settings)
    worker = start_worker(settings, "sweeper", concurrency=1, loglevel="INFO")
    beats = {}
    try:
        wait_ready(settings, [worker])
        beats = {tag: start_beat(settings, tag) for tag in ("a", "b")}
        logs = {tag: settings.data_dir / f"beat-{tag}.log" for tag in beats}
        first = poll(lambda: live_lease(service), 60)
        assert first is not None, "no beat took the lease"
        holder = next(tag for tag, proc in beats.items() if held_by(first, proc))
        other = next(tag for tag in beats if tag != holder)

        # exactly one sends: over 6 intervals the holder sent every job, the other none
        assert poll(lambda: sent(logs[holder]) >= 6 * len(EVERY_SECOND) - 6, 60)
        assert sent(logs[other]) == 0 and "waiting" in logs[other].read_text()
        dying_lock(service, "job-before")
        assert poll(lambda: released(service, "job-before"), 30), "the holder's sweeps released no dead lock"

        # SIGKILL the holder: the other sends within 3 intervals, under the next token
        beats[holder].kill()
        killed_at = time.monotonic()
        beats[holder].wait()
        assert poll(lambda: sent(logs[other]) > 0, 30, every_s=0.01), "the waiting beat never took over"
        took_s = time.monotonic() - killed_at
        assert took_s <= 3 * INTERVAL_S, f"takeover took {took_s:.2f} s"
        second = live_lease(service)
        assert second is not None and held_by(second, beats[other]) and second.token == first.token + 1
        dying_lock(service, "job-after")
        assert poll(lambda: released(service, "job-after"), 30), "the new holder's sweeps released no dead lock"

        # a sweep sent under the first token (a lost lease) changes nothing; the current one works
        beats[other].send_signal(signal.SIGTERM)  # stops cleanly: gives the lease up, token stays
        assert beats[other].wait(timeout=30) == 0
        dying_lock(service, "job-fenced")
        assert poll(lambda: any(v.lock.job_id == "job-fenced" and str(v.health) == "critical"
                                for v in service.list_locks()), 30)
        app = create_app(settings)
        try:
            app.send_task(SWEEP_HEARTBEATS, kwargs={"lease_token": first.token}, queue=settings.task_queue)
            worker_log = settings.data_dir / "worker-sweeper.log"
            assert poll(lambda: "Fenced" in worker_log.read_text(errors="replace"), 30), worker_log.read_text()[-2000:]
            assert not released(service, "job-fenced")
            app.send_task(SWEEP_HEARTBEATS, kwargs={"lease_token": second.token}, queue=settings.task_queue)
            assert poll(lambda: released(service, "job-fenced"), 30)
        finally:
            app.close()
    finally:
        for proc in [*beats.values(), worker]:
            stop(proc)
        service.store.close()


def test_up_with_embedded_beat_next_to_a_separate_beat_sends_once(tmp_path: Path) -> None:
    """``indexgate up`` is ``worker -B``: its embedded beat competes for the same lease."""
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, **EVERY_SECOND)
    service = Service.from_settings(settings)
    worker = start_worker(settings, "up", concurrency=1, beat=True, loglevel="INFO")
    beat = start_beat(settings, "separate")
    try:
        wait_ready(settings, [worker])
        assert poll(lambda: live_lease(service), 60)
        logs = [settings.data_dir / "worker-up.log", settings.data_dir / "beat-separate.log"]
        assert poll(lambda: max(sent(log) for log in logs) >= 5 * len(EVERY_SECOND), 60)
        counts = [sent(log) for log in logs]
        assert min(counts) == 0, f"both beats sent jobs: {counts}"
    finally:
        for proc in (beat, worker):
            stop(proc)
        service.store.close()
