"""SIGTERM on real worker processes, on the real Redis and RabbitMQ: a clean, bounded stop.

What ``docker stop`` / Kubernetes do to a worker: SIGTERM, then SIGKILL after a grace
period. The worker's warm shutdown stops the intake at once, lets the tasks in flight
finish and exits 0; a task still running after ``INDEXGATE_SHUTDOWN_TIMEOUT_S`` is cut off
(``workers.shutdown``: cold shutdown) and goes back to the broker, so the next worker
applies it, once. Events are counted as the chaos rows count them (``bench.chaos.common``:
every event by its id in the store's inbox and audit trail). The only timings asserted are
the bounds the issue names: exit within the shutdown bound (plus a margin for the cold
shutdown of a stuck task).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bench.chaos.common import Ledger, Published, Row, account, wait_applied
from bench.chaos.procs import Workers, children
from bench.chaos.stream import SOURCE, JobStream, finish
from indexgate.events.brokers import transport_for
from indexgate.events.decode import event_key
from indexgate.errors import ConfigError
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.app import STALL_ENV, STALLED_FILE
from indexgate.testing.processes import PROJECT_ROOT, start_worker, wait_ready
from tests.conftest import AMQP_URL, REDIS_URL, isolated_settings, require_reachable

MID_STREAM_BOUND_S = 10  # INDEXGATE_SHUTDOWN_TIMEOUT_S of the mid-stream test: it must exit 0 within it
STUCK_BOUND_S = 4  # ... of the stuck-task test, whose task sleeps far longer
COLD_MARGIN_S = 20  # generous: the cold shutdown after the bound (about 1.5 s measured here)
PROBE_SLEEP_MS = 40  # bench.chaos.probe: each event task lingers up to this before and after its effect


@pytest.fixture(params=["redis", "rabbitmq"])
def settings(request: pytest.FixtureRequest, tmp_path: Path):
    url = {"redis": REDIS_URL, "rabbitmq": AMQP_URL}[request.param]
    require_reachable(url)
    settings = isolated_settings(tmp_path / "data", url)
    settings.ensure_data_dirs()
    yield settings
    from indexgate.testing.broker_names import delete_run_names

    delete_run_names(settings)


@pytest.mark.slow
def test_sigterm_mid_stream_exits_0_within_the_bound_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = {"CHAOS_PROBE_DIR": str(probe_dir), "CHAOS_PROBE_SLEEP_MS": str(PROBE_SLEEP_MS)}
    workers = Workers(settings, app_module="bench.chaos.probe", shutdown_timeout_s=str(MID_STREAM_BOUND_S))
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    stream = JobStream(publisher, service.store, Ledger(), random.Random(7), branches=2, in_flight=6)
    try:
        first = workers.start(env=env)
        workers.wait_ready()
        deadline = time.monotonic() + 60
        while not (len(stream.ledger) >= 30 and _busy(first, probe_dir)):  # an event task is running now
            assert time.monotonic() < deadline, workers.tail()
            stream.step()
            time.sleep(0.002)
        code, seconds = workers.term_whole(first, timeout_s=MID_STREAM_BOUND_S + COLD_MARGIN_S,
                                           while_waiting=stream.step)  # the funnel keeps publishing
        assert code == 0 and seconds <= MID_STREAM_BOUND_S, (code, seconds, workers.tail())
        assert not _markers(probe_dir), "an event task was cut off instead of finishing"
        assert not workers.log_lines("cold shutdown"), workers.tail()
        workers.start(env=env)  # the replacement finishes the stream
        workers.wait_ready()
        stream.run_until(lambda: len(stream.ledger) >= 80, timeout_s=60)
        row = Row("sigterm")
        finish(row, stream, settings, service)
        assert (row.lost, row.applied_twice, row.stuck) == (0, 0, 0), row.notes
        assert row.applied_once == row.published >= 80, row.notes
        assert workers.crashes() == (0, []), workers.tail()
    finally:
        workers.stop_all()
        publisher.close()
        service.store.close()


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["pre", "post"])
def test_a_task_stuck_past_the_bound_is_cut_off_and_applied_once_by_the_next_worker(
        settings: Settings, phase: str) -> None:
    """``pre``: stuck before its effect; ``post``: committed, stuck before its ack. Events
    published once the shutdown began are not read by the stopping worker (its intake
    stopped first): they wait for the next one. (Before the fix in ``StreamStep.close``
    the Redis pump read on in some runs only: the order of a worker's steps varies.)"""
    ledger = Ledger()
    stuck_job = f"stuck-{uuid.uuid4().hex[:8]}"
    publisher = Publisher(settings)
    service = Service.from_settings(settings)
    transport = transport_for(settings)
    stalled = settings.data_dir / STALLED_FILE
    doomed = start_worker(settings, "stuck", app_module="indexgate.testing.app",
                          env={STALL_ENV: f"{phase}:300:{stuck_job}"}, shutdown_timeout_s=str(STUCK_BOUND_S))
    procs = [doomed]
    try:
        wait_ready(settings, [doomed])
        _started(publisher, ledger, stuck_job)
        _poll(stalled.exists, 60, "the task never started stalling")
        kids = children(doomed.pid)
        began = time.monotonic()
        doomed.send_signal(signal.SIGTERM)
        _poll(lambda: _intake_stopped(settings, transport, doomed.node), 30, "the intake went on reading")
        assert doomed.poll() is None, "the intake must stop at the start of the shutdown, not at its end"
        late = [f"late-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]  # sent while the worker is still stopping
        for job in late:
            _started(publisher, ledger, job)
        doomed.wait(timeout=STUCK_BOUND_S + COLD_MARGIN_S)
        seconds = time.monotonic() - began
        log = (settings.data_dir / "worker-stuck.log").read_text()
        assert seconds <= STUCK_BOUND_S + COLD_MARGIN_S, log
        assert doomed.returncode == 0, log  # cut off by the bound, still a clean exit (Celery keeps the warm code)
        assert "cold shutdown" in log, log  # the bound did it: the task itself would sleep 300 s
        for kid in kids:
            _poll(lambda: not Path(f"/proc/{kid}").exists(), 10, f"pool process {kid} outlived its worker")
        assert _unread(settings, transport) == len(late), "the stopping worker read events after SIGTERM"
        procs.append(start_worker(settings, "next"))
        wait_ready(settings, procs[1:])
        applied = wait_applied(service.store, ledger, timeout_s=120)
        counts = account(service, ledger)
        assert len(applied) == len(ledger) and (counts.lost, counts.applied_twice) == (0, 0), counts.notes
        assert counts.applied_once == len(ledger)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        transport.close()
        publisher.close()
        service.store.close()


@pytest.mark.parametrize("value", ["0", "-1", "301", "soon", ""])
def test_a_shutdown_bound_that_is_no_positive_number_up_to_the_task_time_limit_refuses(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("INDEXGATE_SHUTDOWN_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="INDEXGATE_SHUTDOWN_TIMEOUT_S"):
        Settings.from_env()


def test_the_shutdown_bound_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().shutdown_timeout_s == 30
    monkeypatch.setenv("INDEXGATE_SHUTDOWN_TIMEOUT_S", "12.5")
    assert Settings.from_env().shutdown_timeout_s == 12.5


def test_compose_gives_the_worker_a_grace_period_above_the_bound_and_a_healthcheck() -> None:
    """docker-compose.yml as written (no Docker engine here: it is parsed, not run)."""
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= Settings().shutdown_timeout_s + 10, grace
    check = worker["healthcheck"]
    assert check["test"][0] == "CMD-SHELL", check
    # compose turns $$ into $, so the container's shell expands $HOSTNAME: Celery's default node name
    assert "celery -A indexgate.workers inspect ping -d celery@$$HOSTNAME" in check["test"][1], check


def _started(publisher: Publisher, ledger: Ledger, job: str) -> None:
    token = ledger.new_token()
    publisher.publish_funnel(funnel_event("com.oms.indexing.started", {
        "job_id": job, "branch": f"shutdown/{job}", "resource_types": ["object_type"]}, source=SOURCE, event_id=token))
    ledger.add(Published(key=event_key(SOURCE, token), token=token, type="com.oms.indexing.started", job=job))


def _unread(settings: Settings, transport) -> int:
    """Intake events nobody has taken yet: stream entries never read (Redis), messages
    ready in the intake queue (RabbitMQ)."""
    status = transport.status()
    if "stream" in status:
        return int(status["stream"]["unread"])
    return transport.queue_depth(settings.intake_queue)[0]


def _intake_stopped(settings: Settings, transport, node: str) -> bool:
    """Redis: the worker's pump no longer beats (it stamps the readers' set at every cycle,
    every 0.1 s at most); RabbitMQ: the intake queue has no consumer any more."""
    if not hasattr(transport, "redis"):
        return transport.queue_depth(settings.intake_queue)[1] == 0
    from indexgate.events.brokers.redis_stream import readers_key

    def beat() -> float | None:
        scores = transport.redis.zrange(readers_key(settings), 0, -1, withscores=True)
        return next((score for name, score in scores if name.decode().startswith(f"{node}@")), None)

    first = beat()
    time.sleep(0.5)
    return first is not None and beat() == first


def _busy(proc, probe_dir: Path) -> bool:
    return any((probe_dir / str(pid)).exists() for pid in children(proc.pid))


def _markers(probe_dir: Path) -> list[str]:
    return [p.name for p in probe_dir.iterdir() if not p.name.endswith(".tmp")]


def _poll(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
