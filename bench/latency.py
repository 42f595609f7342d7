"""Latency: a heartbeat's publish -> its effect visible in the store, at half the maximum rate.

A real worker (prefork, default concurrency) serves a live job. Heartbeats are published as
the funnel does, paced at half the heartbeat throughput measured by the throughput suite
in the same run, or at half of what a short burst measured here just before reaches, if
that is less (the machine is shared: pacing above what the worker reaches now would measure
a growing backlog). If the worker still falls behind the pace, the note says so.
A separate thread polls the store every millisecond for the ``source|id`` of every
outstanding event; the latency of an event is from just before its publish call until the
poll that first finds it applied (so it includes up to one polling step).

The baseline is the broker's own round trip in the same run: a raw kombu publish
(persistent, as the funnel publishes) and consume on the same broker, one at a time. A
heartbeat crosses the broker twice (funnel event - a stream entry on Redis - then the
intake's hand-off task), so a ratio near 2 means the worker adds little of its own.
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
    bench_settings,
    event_key,
    heartbeat,
    percentiles,
    started,
    wait_until,
)
from bench.throughput import BRANCH, heartbeat_rate
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import open_store
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import worker_processes

POLL_S = 0.001
MAX_PHASE_S = 10.0  # the paced phase lasts at most this long


class AppliedPoller(threading.Thread):
    """Polls the store for outstanding keys; records ms from publish to first seen."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="applied-poller")
        self.store = open_store(settings)
        self.outstanding: dict[str, float] = {}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last_seen = 0.0

    def expect(self, key: str, t_pub: float) -> None:
        with self.lock:
            self.outstanding[key] = t_pub

    def pending(self) -> int:
        with self.lock:
            return len(self.outstanding)

    def run(self) -> None:
        try:
            while not self.done.is_set():
                with self.lock:
                    items = list(self.outstanding.items())
                for key, t_pub in items:
                    if self.store.seen(key):
                        now = time.perf_counter()
                        with self.lock:
                            self.outstanding.pop(key, None)
                        self.latencies.append((now - t_pub) * 1000)
                        self.last_seen = now
                time.sleep(POLL_S)
        finally:
            self.store.close()


def kombu_round_trips(settings: Settings, n: int) -> list[float]:
    """ms per raw kombu publish (persistent) -> consume -> ack on the same broker."""
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    samples: list[float] = []
    received: list[float] = []
    exchange = Exchange(f"{settings.funnel_exchange}.rtt", type="direct", durable=True)
    queue = Queue(f"{settings.intake_queue}.rtt", exchange, routing_key="rtt", durable=True)

    def on_message(body, message) -> None:
        received.append(time.perf_counter())
        message.ack()

    with Connection(settings.resolved_broker_url) as conn:
        channel = conn.channel()
        queue(channel).declare()
        producer = Producer(conn.channel(), exchange=exchange)
        try:
            with Consumer(channel, queues=[queue], callbacks=[on_message], accept=["json"]):
                deadline = time.monotonic() + 60
                for i in range(n):
                    t0 = time.perf_counter()
                    producer.publish({"n": i}, routing_key="rtt", delivery_mode=2)
                    while len(received) <= i:
                        if time.monotonic() > deadline:
                            raise TimeoutError("raw kombu round trips did not finish within 60 s")
                        try:
                            conn.drain_events(timeout=1)
                        except TimeoutError:
                            pass
                    samples.append((received[i] - t0) * 1000)
        finally:
            queue(conn.channel()).delete()
            exchange(conn.channel()).delete()
    return samples[5:]  # the first few open connections and declare


def run(report: Report, folder: Path, broker: str, rate: float | None = None, events: int = 1000) -> list[float]:
    settings = bench_settings(folder, broker)
    service = Service.from_settings(settings)
    publisher = Publisher(settings)
    poller = AppliedPoller(settings)
    tag = uuid.uuid4().hex[:8]
    job = f"lat-{tag}"
    try:
        with worker_processes(settings, count=1, concurrency=None) as procs:
            start = started(job, BRANCH, ["object_type"], heartbeat_interval_s=3600)
            publisher.publish_funnel(start)
            wait_until(lambda: service.store.seen(event_key(start)), 60, 0.005)
            # the machine is shared: check the worker still reaches that rate now, else pace
            # at half of what it reaches now (so the figure is latency, not a growing backlog)
            now_rate = heartbeat_rate(settings, service, publisher, procs, 400, job=job)[0]
            source = "throughput suite" if rate else "burst measured here"
            if rate is None or now_rate < rate:
                if rate is not None:
                    source = f"burst measured here just before; the throughput suite had {rate:.0f}/s"
                rate = now_rate
            pace = rate / 2
            n = max(100, min(events, int(pace * MAX_PHASE_S)))
            batch = [heartbeat(job, i, tag) for i in range(n)]
            poller.start()
            meter = CpuMeter(procs).start()
            t0 = time.perf_counter()
            for i, event in enumerate(batch):
                delay = t0 + i / pace - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t_pub = time.perf_counter()
                poller.expect(event_key(event), t_pub)
                publisher.publish_funnel(event)
            achieved = n / (time.perf_counter() - t0)
            wait_until(lambda: poller.pending() == 0, 60, 0.01)
            kept = n / (poller.last_seen - t0)
            cpu = meter.stop()
            round_trips = kombu_round_trips(settings, min(n, 500) + 5)  # same worker up, idle
    finally:
        poller.done.set()
        publisher.close()
        if poller.is_alive():
            poller.join(5)
        delete_run_names(settings)
    lat, rtt = percentiles(poller.latencies), percentiles(round_trips)
    context = (f"{n} heartbeats paced at {pace:.0f}/s (half of {rate:.0f}/s, {source}), published at "
               f"{achieved:.0f}/s, applied at {kept:.0f}/s; polled every {POLL_S * 1000:.0f} ms; "
               f"{CpuMeter.describe(cpu)}")
    if kept < 0.95 * achieved:
        context = ("THE WORKER FELL BEHIND THE PACE (a backlog built up, so these are queueing times, not "
                   "latencies of an idle-enough worker; see the rest of the machine's CPU): " + context)
    p99_met = lat["p99"] < 20
    per_event = ""
    if "worker main" in cpu:
        per_event = (f"per heartbeat the worker's main process used {cpu['worker main'] * 1000 / n:.2f} ms CPU and "
                     f"the pool {cpu['pool children'] * 1000 / n:.2f} ms, both on every event's path; ")
    limit = "" if p99_met else (
        f"{per_event}two broker hops at the raw round trip p50 ({rtt['p50']:.2f} ms each) leave "
        f"{lat['p50'] - 2 * rtt['p50']:.2f} ms of the p50 to the worker and store; {context}")
    report.add(Figure("heartbeat publish->applied p50", lat["p50"], "ms", "raw kombu round trip p50", rtt["p50"],
                      "informational", True, context))
    report.add(Figure("heartbeat publish->applied p99", lat["p99"], "ms", "raw kombu round trip p99", rtt["p99"],
                      "p99 < 20 ms", p99_met, limit))
    report.add(Figure("heartbeat publish->applied max", lat["max"], "ms", "raw kombu round trip max", rtt["max"],
                      "informational", True))
    report.samples["heartbeat publish->applied (ms)"] = poller.latencies
    report.samples["raw kombu publish->consume round trip (ms)"] = round_trips
    return poller.latencies
