"""Scenarios ``broker_restart`` (Redis) and ``broker_restart_rabbitmq``: the broker goes
away mid-stream and comes back; nothing may be lost.

- Redis: our own ``redis-server`` on a free port with ``--appendonly yes --appendfsync
  always`` in a temp dir; restarted alternately by SIGKILL and by SHUTDOWN, then started
  again on the same dir and port (the AOF brings the queues and kombu's unacked set back).
  ``broker_restart_kombu`` is the same with the funnel publishing with plain kombu to the
  topic exchange (the kombu door: kombu's list, moved into the stream by the workers).
  Right before each kill a burst of ``BURST`` jobs starts, so Redis dies with fresh events
  in it - on the kombu row some still on kombu's list (the row's notes count them).
- RabbitMQ: our own node (own name, ports and data dir: the shared broker on 5672 is never
  touched), ``rabbitmqctl stop_app`` / ``start_app``; durable queues, persistent messages.

One real worker (prefork, 2 pool processes) consumes a job stream into SQLite. The funnel
side publishes each event until the broker takes it (same id on every attempt), with
publisher confirms on RabbitMQ as a careful funnel would (``events.publisher`` itself does
not ask for confirms: see the findings). On Redis the events travel in the intake stream
(``events.brokers.redis_stream``) and the production settings hold, except
``intake_claim_idle_s``: 5 s here instead of 60 s, so that entries whose hand-off task
died with Redis are handed off again within the run rather than a minute later.
"""

from __future__ import annotations

import random
import time

from kombu import Connection

from bench.chaos.common import Ledger, Row
from bench.chaos.kombu_funnel import KombuFunnel
from bench.chaos.procs import Workers
from bench.chaos.servers import (
    RabbitNode,
    RedisServer,
    delivery_settings,
    scratch,
)
from bench.chaos.stream import JobStream, finish
from bench.common import bench_settings
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.testing.broker_names import delete_run_names

CLAIM_IDLE_S = 5.0
DOWN_S = 1.5  # how long the broker stays away each time
BURST = 8  # Redis: jobs started at once right before each kill


def run(broker: str = "redis", short: bool = True, seed: int = 21) -> Row:
    return _redis_restarts("broker_restart", short, seed, kombu=False)


def run_kombu(broker: str = "redis", short: bool = True, seed: int = 23) -> Row:
    """Redis restarts while the funnel publishes with plain kombu to the topic exchange."""
    return _redis_restarts("broker_restart_kombu", short, seed, kombu=True)


def _redis_restarts(name: str, short: bool, seed: int, kombu: bool) -> Row:
    restarts = 2 if short else 10
    row = Row(name)
    with scratch(name.replace("_", "-")) as folder:
        server = RedisServer(folder / "redis")
        server.start()
        try:
            settings = bench_settings(folder / "data", server.url, intake_claim_idle_s=CLAIM_IDLE_S)

            at_kill = {"kombu list": 0, "stream": 0}

            def restart(n: int) -> str:
                for place, count in waiting_at(server, settings).items():
                    at_kill[place] += count
                if n % 2 == 0:
                    server.sigkill()
                    how = "SIGKILL"
                else:
                    server.shutdown()
                    how = "SHUTDOWN"
                time.sleep(DOWN_S)
                server.start()
                return how

            publisher = KombuFunnel(server.url, settings.funnel_exchange) if kombu else Publisher(settings)
            _exercise(row, settings, publisher, restart, restarts, seed, burst=BURST)
            if kombu:
                row.note(publisher.describe())
                row.figures["kombu_modes"] = dict(publisher.modes)
            row.figures["waiting_at_kill"] = at_kill
            row.note(f"events waiting at the kills, summed: {at_kill['kombu list']} on kombu's list (not yet moved), "
                     f"{at_kill['stream']} in the intake stream (not yet acked); the funnel publishes between "
                     f"restarts only (each restart is synchronous), the last {BURST} starts right before each kill")
        finally:
            server.stop()
        row.note(f"redis-server --appendonly yes --appendfsync always on port {server.port}; "
                 f"intake_claim_idle_s={CLAIM_IDLE_S} for this run (production 60 s: an event whose hand-off "
                 "task died with Redis is applied about a minute late, not lost)")
    return row


def run_rabbitmq(broker: str = "rabbitmq", short: bool = True, seed: int = 22) -> Row:
    restarts = 2 if short else 10
    row = Row("broker_restart_rabbitmq")
    if not RabbitNode.available():
        row.note("SKIPPED: rabbitmq-server is not installed here; the shared broker is never restarted")
        return row
    with scratch("broker-restart-rmq") as folder:
        node = RabbitNode(folder / "rabbitmq")
        node.start()
        try:
            settings = bench_settings(folder / "data", node.url)
            confirmed = Connection(node.url, transport_options={"confirm_publish": True})

            def restart(_n: int) -> str:
                node.stop_app()
                time.sleep(DOWN_S)
                node.start_app()
                return "stop_app/start_app"

            _exercise(row, settings, Publisher(settings, connection=confirmed), restart, restarts, seed)
        finally:
            node.stop()
        row.note(f"private node {node.node} on port {node.port}; durable queues, persistent messages, "
                 "publisher confirms on the funnel side")
    return row


def waiting_at(server: RedisServer, settings) -> dict[str, int]:
    """What the private Redis holds of the run's funnel events right now."""
    import redis

    from indexgate.events.brokers import redis_stream

    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for key in redis_stream.kombu_lists(settings.intake_queue):
            pipe.llen(key)
        pipe.xlen(redis_stream.stream_key(settings))
        *lists, stream = pipe.execute()
        return {"kombu list": sum(lists), "stream": stream}
    finally:
        client.close()


def _exercise(row: Row, settings, publisher: Publisher, restart, restarts: int, seed: int,
              burst: int = 0) -> None:
    """``burst``: start that many jobs at once right before each restart, so the broker dies
    with fresh events in it (on Redis: some still on kombu's list, not yet moved)."""
    rng = random.Random(seed)
    workers = Workers(settings)
    service = Service.from_settings(settings)
    ledger = Ledger()
    stream = JobStream(publisher, service.store, ledger, rng, branches=3, in_flight=6)
    hows = []
    replaced = []

    def supervise() -> None:
        """What docker-compose's ``restart: unless-stopped`` does: a dead worker is started again
        (its death still counts as a crash in the row)."""
        for proc in list(workers.procs):
            if proc.poll() is not None and proc.pid not in workers.stopped and proc.pid not in replaced:
                replaced.append(proc.pid)
                workers.start()

    try:
        workers.start()
        workers.wait_ready()
        for n in range(restarts):
            stream.run_until(lambda: False, timeout_s=rng.uniform(1.5, 3.0), tick=supervise)  # mid-stream
            stream.burst(burst)
            hows.append(restart(n))
        stream.run_until(lambda: False, timeout_s=2.0, tick=supervise)  # and afterwards
        finish(row, stream, settings, service, drain_s=25, applied_s=15, tick=supervise)
        row.note(f"workers that died and were started again by the harness (as a supervisor would): "
                 f"{len(replaced)}; reconnect lines in the logs: "
                 f"{len(workers.log_lines('(?i)connection to broker lost|Cannot connect|reconnect'))}")
        if replaced:
            row.note("the worker died on a Redis restart with 'Unrecoverable error: AttributeError(\"'NoneType' "
                     "object has no attribute 'hostname'\")' - celery 5.7 closes the connection after "
                     "collect() dropped its transport; kombu's Redis channel then restores its unacked messages "
                     "and needs a client (upstream bug; findings.py redis_restart_crash reproduces it without "
                     "indexgate)")
        row.figures["worker_deaths"] = len(replaced)
    finally:
        workers.stop_all()
        publisher.close()
        service.store.close()
        try:
            delete_run_names(settings)
        except Exception:
            pass
    row.runs = len(hows)
    row.crashes, found = workers.crashes()
    row.notes += found[:5]
    row.note(f"{len(hows)} broker restarts ({', '.join(hows)}), {DOWN_S} s down each; {stream.started} jobs; "
             f"{stream.publish_failures} publish attempts failed and were retried with the same id")
    row.note("holds because: " + delivery_settings(settings))
