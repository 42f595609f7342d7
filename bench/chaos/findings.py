"""``python -m bench.chaos.findings [name ...]``: reproduce each production issue the chaos
runs found, one small program per issue, printing the evidence.

Fast and deterministic (the default): ``eta_overflow``, ``time_overflow``,
``concurrent_duplicate``, ``key_ambiguity``, ``dead_release_audit``,
``oversized_dead_letter``, ``unconfirmed_publisher``.
With real processes (name them): ``redis_whole_kill`` (about a minute),
``redis_restart_crash`` (about a minute), ``restore_cadence`` (about two minutes).

Nothing here changes production code; the issues are described in the chaos report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.chaos.common import quiet_logs
from bench.chaos.servers import RedisServer, scratch
from indexgate.events.decode import RawMessage, event_key
from indexgate.events.intake import ingest
from indexgate.locks import AcquireRequest
from indexgate.service import Origin, Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.schemas.records import AuditKind, ReleaseReason


def _service(folder: Path, **overrides) -> tuple[Service, Settings]:
    settings = Settings(data_dir=folder, **overrides)
    initialize_store(settings)
    return Service.from_settings(settings), settings


def _send(service: Service, settings: Settings, type_: str, data: dict, source: str = "funnel",
          event_id: str | None = None, **attrs):
    event = {"specversion": "1.0", "id": event_id or uuid.uuid4().hex, "source": source, "type": type_,
             "data": data, **attrs}
    raw = RawMessage.build({}, "application/cloudevents+json", json.dumps(event).encode())
    return ingest(service, settings, raw)


def eta_overflow() -> bool:
    """A heartbeat with a huge ETA: an internal error (OverflowError) before the payload bound; since,
    refused as invalid. Either way the heartbeat is dropped, so a live job's lock dies at its deadline."""
    with scratch("finding") as folder:
        service, settings = _service(folder)
        _send(service, settings, "com.oms.indexing.started",
              {"job_id": "j", "branch": "b", "resource_types": ["t"], "heartbeat_interval_s": 0.3, "ttl_s": 600})
        results = {}
        for eta in (1e9, 1e11, 1e12, 1e300, float("inf")):
            out = _send(service, settings, "com.oms.indexing.heartbeat", {"job_id": "j", "estimated_remaining_s": eta})
            results[eta] = f"{out.status}: {out.detail[:70]}"
        for n in range(4):  # the funnel keeps heartbeating every 0.3 s, always with the same silly ETA
            time.sleep(0.3)
            _send(service, settings, "com.oms.indexing.heartbeat", {"job_id": "j", "estimated_remaining_s": 1e12})
        allowed = service.check("b", "t").allowed
    for eta, text in results.items():
        print(f"  estimated_remaining_s={eta:g}: {text}")
    print(f"  after 1.2 s of heartbeats (deadline 0.9 s) carrying estimated_remaining_s=1e12: write allowed = "
          f"{allowed}{' (the live job lost its lock: every such heartbeat was dead-lettered)' if allowed else ''}")
    return any("internal error" in text for text in results.values())


def time_overflow() -> bool:
    """A valid RFC 3339 time at the edge of the calendar must be a malformed event, not an internal error."""
    with scratch("finding") as folder:
        service, settings = _service(folder)
        out = _send(service, settings, "com.oms.indexing.heartbeat", {"job_id": "x"},
                    time="0001-01-01T00:00:00+14:00")
    print(f"  time=0001-01-01T00:00:00+14:00 -> {out.status}: {out.detail}")
    return out.detail.startswith("internal error")


def concurrent_duplicate() -> bool:
    """Two deliveries of one heartbeat in parallel (two pool processes) both pass the
    ``already_applied`` check and both extend the lock: the duplicate is applied twice."""
    with scratch("finding") as folder:
        service, settings = _service(folder)
        _send(service, settings, "com.oms.indexing.started",
              {"job_id": "j", "branch": "b", "resource_types": ["t"], "ttl_s": 60})
        barrier = threading.Barrier(2, timeout=10)

        class Racing:  # the real store; both deliveries read the inbox before either commits
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def seen(self, key):
                answer = self.inner.seen(key)
                barrier.wait()
                return answer

        twins = [Service(Racing(Service.from_settings(settings).store), service.policy) for _ in range(2)]
        event = {"specversion": "1.0", "id": "hb-1", "source": "funnel", "type": "com.oms.indexing.heartbeat",
                 "data": {"job_id": "j", "estimated_remaining_s": 900}}
        raw = RawMessage.build({}, "application/cloudevents+json", json.dumps(event).encode())
        outcomes = []
        threads = [threading.Thread(target=lambda s=s: outcomes.append(ingest(s, settings, raw).status))
                   for s in twins]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        key = event_key("funnel", "hb-1")
        extended = [e for e in service.store.audit(100) if e.kind is AuditKind.EXTENDED and e.cause == key]
    print(f"  outcomes {outcomes}; EXTENDED entries caused by funnel|hb-1: {len(extended)} in "
          f"{len({e.at for e in extended})} commits")
    return len({e.at for e in extended}) > 1


def key_ambiguity() -> bool:
    """``source|id`` is ambiguous when a source contains '|': a different event is taken for a duplicate."""
    with scratch("finding") as folder:
        service, settings = _service(folder)
        _send(service, settings, "com.oms.indexing.started", {"job_id": "j1", "branch": "b"}, source="a|b",
              event_id="c")
        out = _send(service, settings, "com.oms.indexing.started", {"job_id": "j2", "branch": "other"}, source="a",
                    event_id="b|c")
    print(f"  event (source 'a|b', id 'c') applied; event (source 'a', id 'b|c'), another job on another branch: "
          f"{out.status} - {out.detail}")
    return out.status == "duplicate"


def dead_release_audit() -> bool:
    """A lock that already died is recorded as released 'completed' at the job's end."""
    with scratch("finding") as folder:
        service, _ = _service(folder)
        service.acquire("b", AcquireRequest(job_id="j", holder="h", resource_types=("t",), reason="r", ttl_s=0.2,
                                            heartbeat_interval_s=60), Origin("funnel"))
        time.sleep(0.4)
        allowed = service.check("b", "t").allowed
        service.release("b", "j", ReleaseReason.COMPLETED, Origin("funnel"))
        entry = next(e for e in service.store.audit(10) if e.kind is AuditKind.RELEASED)
    print(f"  TTL 0.2 s; writes allowed at 0.4 s: {allowed}; then the audit says: released '{entry.reason}' at "
          f"{entry.at.time()} (expired at {entry.detail['expires_at'][11:]})")
    return entry.reason == "completed"


def oversized_dead_letter() -> bool:
    """A body over INDEXGATE_MAX_EVENT_BYTES is dead-lettered - and stored whole."""
    with scratch("finding") as folder:
        service, settings = _service(folder, max_event_bytes=1024)
        body = b"x" * 5_000_000
        ingest(service, settings, RawMessage.build({}, "application/cloudevents+json", body))
        letter = service.store.dead_letters(1)[0]
        size = (folder / "indexgate.db").stat().st_size + sum(p.stat().st_size for p in folder.glob("*.db-wal"))
    print(f"  limit 1024 bytes, body 5,000,000 bytes: dead letter keeps {len(letter.body)} bytes; store files "
          f"{size} bytes")
    return len(letter.body) >= 5_000_000


def unconfirmed_publisher() -> bool:
    """events.publisher connects without publisher confirms, also on RabbitMQ."""
    from indexgate.events.brokers import transport_for
    from indexgate.events.publisher import Publisher

    settings = Settings(data_dir=Path(tempfile.gettempdir()), broker_url="amqp://guest:guest@127.0.0.1:5672//")
    publisher = Publisher(settings)
    options = dict(publisher.connection.transport_options)
    print(f"  Celery's producer (events.brokers transport_options): {transport_for(settings).transport_options()}; "
          f"events.publisher.Publisher connection: {options or '{}'} - no confirm_publish, so publish_entries() "
          "returns before RabbitMQ has the message and the entry is marked published anyway")
    return "confirm_publish" not in options


def redis_whole_kill() -> bool:
    """Whole workers SIGKILLed mid-event on Redis lost events while the intake read kombu
    lists (popped by BRPOP, never recorded as unacked); the intake stream loses none."""
    from bench.chaos.sigkill import CLAIM_IDLE_S, _run

    row = _run("sigkill_whole_redis", "redis", whole=True, target=6, seed=7, intake_claim_idle_s=CLAIM_IDLE_S)
    print(f"  {row.runs} whole-worker kills on Redis: published {row.published}, lost {row.lost}, "
          f"applied twice {row.applied_twice}, stuck {row.stuck}")
    for note in row.notes:
        if note.startswith(("LOST", "broker:")):
            print(f"  {note[:400]}")
    return row.lost > 0


def redis_restart_crash(trials: int = 6, transport: str = "") -> bool:
    """A plain Celery app (no indexgate code) with acks_late dies on a Redis restart
    (``redis_restart_patched`` runs the same on ``events.brokers.redis_kombu``: it survives)."""
    deaths = 0
    with scratch("finding") as folder:
        for trial in range(trials):
            server = RedisServer(folder / f"redis{trial}")
            server.start()
            env = {**os.environ, "PLAIN_BROKER": server.url, "PLAIN_TRANSPORT": transport}
            log = folder / f"worker{trial}.log"
            with open(log, "w") as out:
                worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.chaos.plain_app", "worker",
                                           "-P", "prefork", "-c2", "-l", "WARNING", "--without-mingle",
                                           "--without-gossip"], env=env, stdout=out, stderr=subprocess.STDOUT)
            from bench.chaos.plain_app import make_app

            app = make_app(server.url)  # the producer side, on this trial's server
            try:
                time.sleep(4)
                for restart in range(2):
                    end = time.monotonic() + 2
                    while time.monotonic() < end:
                        try:
                            app.send_task("plain.work", args=[1])
                        except Exception:
                            pass
                        time.sleep(0.005)
                    server.sigkill() if restart == 0 else server.shutdown()
                    time.sleep(1.5)
                    server.start()
                time.sleep(4)
                dead = worker.poll() is not None
                deaths += dead
                crash = [l for l in log.read_text().splitlines() if "Unrecoverable error" in l]
                app.close()
                print(f"  trial {trial}: worker {'DIED (exit %s)' % worker.returncode if dead else 'alive'} "
                      f"{crash[0][crash[0].index('Unrecoverable'):][:110] if crash else ''}")
            finally:
                if worker.poll() is None:
                    worker.terminate()
                    try:
                        worker.wait(15)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                server.stop()
    print(f"  {deaths} of {trials} plain Celery workers ({transport or 'kombu redis'}) died across two Redis restarts")
    return deaths > 0


def redis_restart_patched(trials: int = 6) -> bool:
    """The same plain app on indexgate's Redis transport: no worker dies (False = fixed)."""
    from indexgate.events.brokers.redis_kombu import TRANSPORT

    return redis_restart_crash(trials, transport=TRANSPORT)


def restore_cadence() -> bool:
    """On Redis a whole worker's unacked messages come back only at a consumer's first poll or
    every unacked_restore_interval x unacked_restore_throttle (10 s x 10), not at the timeout."""
    from bench.chaos.procs import Workers, children
    from bench.common import bench_settings
    from indexgate.events.publisher import Publisher, funnel_event
    from indexgate.testing.broker_names import delete_run_names

    with scratch("finding") as folder:
        server = RedisServer(folder / "redis")
        server.start()
        settings = bench_settings(folder / "data", server.url, redis_visibility_timeout_s=2.0)
        service = Service.from_settings(settings)
        publisher = Publisher(settings)
        workers = Workers(settings, app_module="bench.chaos.probe")
        env = {"CHAOS_PROBE_DIR": str(folder / "probe"), "CHAOS_PROBE_SLEEP_MS": "3000"}
        (folder / "probe").mkdir()
        try:
            survivor = workers.start(env={"CHAOS_PROBE_DIR": str(folder / "probe2")})
            (folder / "probe2").mkdir()
            victim = workers.start(env=env)
            workers.wait_ready()
            keys = []
            for n in range(6):
                event = funnel_event("com.oms.indexing.started", {"job_id": f"j{n}", "branch": f"b{n}"},
                                     source="funnel")
                publisher.publish_funnel(event)
                keys.append(event_key("funnel", event.get_id()))
            time.sleep(13.0)  # past the survivor's first periodic restore scan (10 s after it started)
            for n in range(6, 12):
                event = funnel_event("com.oms.indexing.started", {"job_id": f"j{n}", "branch": f"b{n}"},
                                     source="funnel")
                publisher.publish_funnel(event)
                keys.append(event_key("funnel", event.get_id()))
            time.sleep(1.0)  # the victim's pool processes sit in their 3 s probe pause, unacked
            held = len([p for p in children(victim.pid) if (folder / "probe" / str(p)).exists()])
            workers.kill_whole(victim)
            killed = time.monotonic()
            waited = None
            while time.monotonic() - killed < 150:
                if all(service.store.seen(k) for k in keys):
                    waited = time.monotonic() - killed
                    break
                time.sleep(0.5)
        finally:
            workers.stop_all()
            publisher.close()
            delete_run_names(settings)
            server.stop()
    print(f"  victim held {held} events mid-task when SIGKILLed 14 s after the survivor started; "
          f"visibility_timeout 2 s; the surviving worker applied them "
          f"{('after %.0f s' % waited) if waited else 'not within 150 s'}")
    del survivor
    return waited is None or waited > 10


FAST = [eta_overflow, time_overflow, concurrent_duplicate, key_ambiguity, dead_release_audit, oversized_dead_letter,
        unconfirmed_publisher]
SLOW = [redis_whole_kill, redis_restart_crash, redis_restart_patched, restore_cadence]


def main(argv: list[str]) -> int:
    quiet_logs()
    by_name = {f.__name__: f for f in FAST + SLOW}
    chosen = [by_name[name] for name in argv] if argv else FAST
    for finding in chosen:
        print(f"[{finding.__name__}] {finding.__doc__.split(chr(10))[0]}", flush=True)
        reproduced = finding()
        print(f"  -> {'REPRODUCED' if reproduced else 'not reproduced this time'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
