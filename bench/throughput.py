"""Throughput: funnel heartbeats through broker -> intake -> worker -> store, beside no-op
Celery tasks through the same broker and the same worker.

One real ``celery -A workers worker`` (prefork, default concurrency) serves both phases.
A job is started first (``com.oms.indexing.started``) so every heartbeat refreshes a live
lock, the real write path. Then:

- baseline: N ``indexgate.noop`` tasks sent with ``app.send_task`` (the app's own settings:
  acks late, prefetch 1, task events; on RabbitMQ without waiting for a publisher confirm
  per send, like the heartbeats' publisher), timed from the first send until the task queue is
  drained and nothing of it is unacked. On Redis that is exact: ``LLEN`` of the queue key
  plus the entries of kombu's ``unacked`` hash that belong to this queue. On RabbitMQ
  AMQP shows only the ready count (``queue_declare(passive=True)``), so "drained" there
  means ready = 0 with at most the worker's prefetch (concurrency x 1 = 2 no-ops, well
  under a millisecond of work) still running: an error far below the polling step.
- heartbeats: N ``com.oms.indexing.heartbeat`` events published as the funnel does
  (``Publisher.publish_funnel``), timed from the first publish until every event's
  ``source|id`` is ``seen`` in the store (checked oldest first, each key about once).

Both sides poll every 5 ms, after their last publish. Where the time goes is measured in
the same run, not guessed: the CPU seconds of the worker's main process (consumer +
intake), its pool children, the broker server and this process during each phase, and an
in-process replay of the worker's apply path (decode, validate, ``catalog.apply``) on a
store of the same kind with its verbs and SQLite ``COMMIT`` timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.common import (
    CpuMeter,
    Figure,
    Report,
    SeenWatcher,
    TimedStore,
    bench_settings,
    event_key,
    heartbeat,
    profiled_sqlite_store,
    started,
    wait_until,
)
from indexgate.events.brokers import IntakeMode, transport_for
from indexgate.events.decode import RawMessage
from indexgate.events.intake import ingest
from indexgate.events.publisher import Publisher, encode
from indexgate.service import Service, policy_from
from indexgate.settings import Settings
from indexgate.workers.app import create_app
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import (
    PROJECT_ROOT,
    settings_env,
    stop,
    wait_ready,
    worker_processes,
)

BRANCH = "bench/throughput"
POLL_S = 0.005


class QueueDrain:
    """How many of the task queue's messages are not finished (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.queue = settings.task_queue
        self.url = settings.resolved_broker_url
        self.redis = None
        self.conn = None
        if self.url.startswith("redis"):
            import redis

            self.redis = redis.Redis.from_url(self.url)
        else:
            from kombu import Connection

            self.conn = Connection(self.url)

    def pending(self) -> int:
        if self.redis is not None:
            keys = [self.queue] + [f"{self.queue}\x06\x16{p}" for p in (3, 6, 9)]
            waiting = sum(self.redis.llen(k) for k in keys)
            if waiting:
                return waiting
            mine = 0
            for raw in self.redis.hvals("unacked"):
                try:
                    _, exchange, routing_key = json.loads(raw)
                except (ValueError, TypeError):
                    continue
                mine += self.queue in (exchange, routing_key)
            return mine
        _, ready, _ = self.conn.default_channel.queue_declare(queue=self.queue, passive=True)
        return ready

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
        if self.conn is not None:
            self.conn.release()


def _noop_phase(app, drain: QueueDrain, n: int, timeout_s: float) -> tuple[float, float]:
    """(processed per s, published per s)."""
    t0 = time.perf_counter()
    for _ in range(n):
        app.send_task("indexgate.noop")
    t_pub = time.perf_counter()
    wait_until(lambda: drain.pending() == 0, timeout_s, POLL_S)
    t_end = time.perf_counter()
    return n / (t_end - t0), n / (t_pub - t0)


def _heartbeat_phase(publisher: Publisher, service: Service, events: list, timeout_s: float) -> tuple[float, float]:
    watcher = SeenWatcher(service.store, [event_key(e) for e in events])
    t0 = time.perf_counter()
    for event in events:
        publisher.publish_funnel(event)
    t_pub = time.perf_counter()
    t_end = watcher.wait_all(timeout_s, POLL_S)
    return len(events) / (t_end - t0), len(events) / (t_pub - t0)


def heartbeat_rate(settings: Settings, service: Service, publisher: Publisher, procs, n: int,
                   job: str | None = None) -> tuple[float, float, dict[str, float]]:
    """Start a job (unless given) and push ``n`` heartbeats through a running worker:
    (events/s processed, events/s published, CPU split)."""
    tag = uuid.uuid4().hex[:8]
    if job is None:
        job = f"tp-{tag}"
        start = started(job, BRANCH, ["object_type"], heartbeat_interval_s=3600)
        publisher.publish_funnel(start)
        wait_until(lambda: service.store.seen(event_key(start)), 60, POLL_S)
    events = [heartbeat(job, i, tag) for i in range(n)]
    meter = CpuMeter(procs, _port(settings)).start()
    rate, pub_rate = _heartbeat_phase(publisher, service, events, max(60.0, n / 20))
    return rate, pub_rate, meter.stop()


def _port(settings: Settings) -> int:
    return 6379 if settings.resolved_broker_url.startswith("redis") else 5672


def profile_apply(folder: Path, n: int = 500, synchronous: str = "FULL") -> dict[str, float]:
    """The worker's apply path for heartbeats, in this process, without any broker: per
    event ms in total and per store verb, and in SQLite ``COMMIT``."""
    settings = Settings(data_dir=folder / f"profile-{synchronous.lower()}")
    settings.ensure_data_dirs()
    inner = profiled_sqlite_store(settings.data_dir / "indexgate.db", synchronous=synchronous)
    store = TimedStore(inner)
    service = Service(store, policy_from(settings))
    tag = uuid.uuid4().hex[:8]
    job = f"profile-{tag}"

    def raw(event) -> RawMessage:
        message = encode(event)
        return RawMessage.build(message.headers, message.content_type, message.body, event.get_type())

    ingest(service, settings, raw(started(job, BRANCH, ["object_type"], heartbeat_interval_s=3600)))
    messages = [raw(heartbeat(job, i, tag)) for i in range(n)]
    store.seconds.clear()
    store.calls.clear()
    inner.commit_s, inner.commits = 0.0, 0
    t0 = time.perf_counter()
    for message in messages:
        ingest(service, settings, message)
    total = time.perf_counter() - t0
    inner.close()
    per = {f"{verb} ms": seconds * 1000 / n for verb, seconds in store.seconds.items()}
    per["commit ms"] = inner.commit_s * 1000 / n
    per["total ms"] = total * 1000 / n
    per["python ms"] = per["total ms"] - sum(v * 1000 / n for v in store.seconds.values())
    return per


def describe_profile(p: dict[str, float]) -> str:
    save = p.get("save ms", 0.0)
    return (f"in-process apply of one heartbeat (no broker) {p['total ms']:.2f} ms: SQLite COMMIT "
            f"{p['commit ms']:.2f} ms, rest of save {save - p['commit ms']:.2f} ms, load "
            f"{p.get('load ms', 0):.2f} ms, seen/branch_of_job {p.get('seen ms', 0) + p.get('branch_of_job ms', 0):.2f} "
            f"ms, decode+validate+rule (Python) {p['python ms']:.2f} ms")


def _sender(settings: Settings):
    """The app the noop tasks are sent with: the worker's own configuration, except that on
    RabbitMQ it does not wait for a publisher confirm per task (the funnel publisher of the
    heartbeats does not either; with confirms the sending, not the worker, bounded the
    baseline: 0.5 ms per confirmed publish on this machine)."""
    app = create_app(settings)
    options = dict(app.conf.broker_transport_options or {})
    if options.pop("confirm_publish", None) is not None:
        app.conf.broker_transport_options = options
    return app


def _measure(settings: Settings, procs, app, n: int) -> dict:
    """Warm up, then the noop phase and the heartbeat phase on the running worker."""
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    drain = QueueDrain(settings)
    try:
        # warm both paths (pool children import, open the store, declare queues); this also
        # proves this run's worker consumes (another run's worker may answer wait_ready's ping)
        tag = uuid.uuid4().hex[:8]
        job = f"tp-{tag}"
        start = started(job, BRANCH, ["object_type"], heartbeat_interval_s=3600)
        publisher.publish_funnel(start)
        wait_until(lambda: service.store.seen(event_key(start)), 60, POLL_S)
        _heartbeat_phase(publisher, service, [heartbeat(job, i, f"warm-{tag}") for i in range(50)], 60)
        _noop_phase(app, drain, 50, 60)

        meter = CpuMeter(procs, _port(settings)).start()
        noop_rate, noop_pub = _noop_phase(app, drain, n, max(60.0, n / 20))
        noop_cpu = meter.stop()
        hb_rate, hb_pub, hb_cpu = heartbeat_rate(settings, service, publisher, procs, n, job=job)
    finally:
        drain.close()
        publisher.close()
        service.store.close()
    return {"noop": noop_rate, "noop_pub": noop_pub, "noop_cpu": noop_cpu,
            "hb": hb_rate, "hb_pub": hb_pub, "hb_cpu": hb_cpu, "stream": transport_for(settings).mode is IntakeMode.PUMP}


def confirmed_publish_ms(settings: Settings, n: int = 300) -> float:
    """RabbitMQ: ms per publisher-confirmed persistent publish, which the intake does once
    per funnel event (``confirm_publish``) and waits for, one at a time, in the consumer."""
    from kombu import Connection, Exchange, Queue

    with Connection(settings.resolved_broker_url, transport_options={"confirm_publish": True}) as conn:
        queue = Queue(f"{settings.task_queue}.confirm", Exchange(f"{settings.task_queue}.confirm", type="direct"),
                      routing_key="c", durable=True)
        producer = conn.Producer()
        queue(conn.default_channel).declare()
        try:
            t0 = time.perf_counter()
            for i in range(n):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key="c", delivery_mode=2)
            return (time.perf_counter() - t0) * 1000 / n
        finally:
            queue(conn.default_channel).delete()
            queue.exchange(conn.default_channel).delete()


def _limits(m: dict, n: int, prof: dict | None, confirm_ms: float | None) -> str:
    hb, noop = m["hb_cpu"], m["noop_cpu"]
    parts = []
    if "worker main" in hb and hb["worker main"] > 0:
        per_hb, per_noop = hb["worker main"] * 1000 / n, noop["worker main"] * 1000 / n
        how = ("the intake thread reads the stream in batches and hands each batch to the pool as one "
               "intake task (indexgate.<kind>), which the consumer thread then takes and dispatches"
               if m.get("stream") else
               "one Celery consumer thread takes each funnel event, hands the events that arrive together to the "
               "pool as one intake task per event kind (one publisher confirm each), then takes that task and "
               "dispatches it")
        parts.append(
            f"the worker's main process is the serial stage ({how}); its CPU per noop / per heartbeat, "
            f"{per_noop:.2f} / "
            f"{per_hb:.2f} ms = {per_noop / per_hb:.2f}, predicts the ratio, and at {per_hb:.2f} ms it tops out "
            f"near {1000 / per_hb:.0f} heartbeats/s even with a whole core to itself (it was busy "
            f"{hb['worker main'] / hb['wall']:.0%} of the phase; pool children {hb['pool children'] * 1000 / n:.2f} "
            f"ms per heartbeat; machine busy {hb.get('machine', 0.0) / hb['wall']:.2f} of {os.cpu_count()} cores)")
    if confirm_ms is not None:
        parts.append(f"on RabbitMQ each hand-off waits for a publisher confirm, {confirm_ms:.2f} ms per "
                     "persistent publish measured in this run, in the consumer thread; the funnel publisher "
                     "(events.publisher) waits for one per event too")
    if prof:
        parts.append(describe_profile(prof))
    if m["hb_pub"] < 1.5 * m["hb"]:
        parts.append(f"the publisher reached only {m['hb_pub']:.0f} ev/s, so it bounds the figure too")
    parts.append(f"heartbeat phase {CpuMeter.describe(hb)}; noop phase {CpuMeter.describe(noop)}")
    return "; ".join(parts)


def run(report: Report, folder: Path, broker: str, heartbeats: int = 3000, profile: bool = True,
        diagnose: bool = False) -> float:
    settings = bench_settings(folder, broker)
    n = heartbeats
    try:
        with worker_processes(settings, count=1, concurrency=None, app_module="indexgate.testing.app") as procs:
            m = _measure(settings, procs, _sender(settings), n)
        variant = None
        if diagnose:
            with _events_off_worker(settings) as procs:
                app = _sender(settings)
                app.conf.task_send_sent_event = False
                variant = _measure(settings, procs, app, n)
        confirm_ms = None if settings.resolved_broker_url.startswith("redis") else confirmed_publish_ms(settings)
    finally:
        delete_run_names(settings)
    prof = profile_apply(folder, 500) if profile else None
    note = _limits(m, n, prof, confirm_ms)
    label = f"({n} events, {settings.resolved_broker_url.split(':')[0]})"
    hb_rate, noop_rate = m["hb"], m["noop"]
    ratio_met = hb_rate / noop_rate >= 0.8
    report.add(Figure(f"heartbeats/s broker->intake->worker->store {label}", hb_rate, "ev/s",
                      "noop tasks/s, same broker+worker", noop_rate, "ratio >= 0.8", ratio_met,
                      "" if ratio_met else note))
    report.add(Figure(f"heartbeats/s, absolute {label}", hb_rate, "ev/s", "noop tasks/s, same broker+worker",
                      noop_rate, ">= 1000 ev/s", hb_rate >= 1000,
                      "" if hb_rate >= 1000 else "same limits as the line above"))
    report.add(Figure("heartbeat publish rate (funnel publisher)", m["hb_pub"], "ev/s", "noop send_task rate",
                      m["noop_pub"], "informational", True))
    if prof:
        report.add(Figure("in-process apply of one heartbeat (no broker)", prof["total ms"], "ms",
                          "of which SQLite COMMIT", prof["commit ms"], "informational", True, describe_profile(prof)))
    if variant:
        report.add(Figure("diagnostic: heartbeats/s, worker with task events off", variant["hb"], "ev/s",
                          "heartbeats/s, worker as configured", hb_rate, "informational", True,
                          f"noop tasks/s with task events off {variant['noop']:.0f} (as configured "
                          f"{noop_rate:.0f}); heartbeat phase {CpuMeter.describe(variant['hb_cpu'])}"))
    report.context["heartbeats_per_s"] = f"{hb_rate:.1f}"
    return hb_rate


@contextmanager
def _events_off_worker(settings: Settings) -> Iterator[list[subprocess.Popen]]:
    """Diagnostic only: the same worker, with Celery task events off (``events_off_app``)."""
    argv = [sys.executable, "-m", "celery", "-A", "bench.throughput:events_off_app", "worker", "-P", "prefork",
            "-l", "WARNING", "-n", f"evoff-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"]
    log = open(settings.data_dir / "worker-events-off.log", "w")
    proc = subprocess.Popen(argv, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    try:
        wait_ready(settings, [proc])
        yield [proc]
    finally:
        stop(proc)
        log.close()


def __getattr__(name: str):
    """``events_off_app``, built on first access only (by the diagnostic worker)."""
    if name == "events_off_app":
        app = create_app(Settings())
        app.conf.worker_send_task_events = False
        app.conf.task_send_sent_event = False
        globals()[name] = app
        return app
    raise AttributeError(name)
