"""``indexgate demo``: the lock scenario end to end, with short intervals, no servers.

A real Celery worker (solo pool, in this process) and a real embedded beat run against the
embedded ``filesystem://`` broker and a SQLite store in a temporary folder. The demo plays
the funnel (publishing CloudEvents through the same binding a real funnel uses) and a
developer (asking the permission check), and prints what happened as a timeline. It
checks its own story and exits non-zero if any step did not happen as told.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Callable

from celery.beat import EmbeddedService
from celery.contrib.testing.worker import start_worker

from indexgate.events.publisher import Publisher, funnel_event
from indexgate.clock import poll
from indexgate.errors import IndexgateError
from indexgate.service import Service
from indexgate.store import initialize_store
from indexgate.settings import Settings
from indexgate.schemas.records import AuditKind
from indexgate.testing.indexes import write_index  # the demo builds throwaway indexes, as tests do

BRANCH = "feature/user-schema"
INTERVAL_S = 1.0


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.failures: list[str] = []

    def say(self, actor: str, text: str) -> None:
        print(f"+{time.monotonic() - self.t0:6.2f}s  {actor:<9} {text}", flush=True)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            self.say("DEMO", f"!! expected: {what}")


def run_demo(data_dir: str | None = None) -> int:
    with ExitStack() as stack:
        folder = Path(data_dir) if data_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        settings = Settings(
            data_dir=folder, broker_url=None, store_url=None,
            heartbeat_sweep_interval_s=1.0, ttl_sweep_interval_s=5.0, health_sweep_interval_s=0.5,
            outbox_relay_interval_s=5.0,
        )
        settings.ensure_data_dirs()
        initialize_store(settings)  # what `indexgate setup` does; the worker would do it too
        from indexgate.workers.app import create_app

        app = create_app(settings)
        stack.enter_context(start_worker(app, pool="solo", perform_ping_check=False, loglevel="ERROR",
                                         shutdown_timeout=10))
        beat = EmbeddedService(app, max_interval=0.5, thread=True)
        beat.start()
        stack.callback(beat.stop)
        publisher = Publisher(settings)
        stack.callback(publisher.close)
        return _scenario(Service.from_settings(settings), publisher, Timeline())


def _scenario(service: Service, publisher: Publisher, tl: Timeline) -> int:
    seen: set[str] = set()

    def worker_news() -> None:
        for entry in reversed(service.store.audit(200)):
            if entry.entry_id in seen or entry.kind is AuditKind.HEALTH_CHANGED and entry.reason == "":
                continue
            seen.add(entry.entry_id)
            token = f" token={entry.fencing_token}" if entry.fencing_token else ""
            tl.say("WORKER", f"{entry.kind.upper():<14} {entry.resource_type or entry.branch or '-'}"
                             f" job={entry.job_id}{token} by {entry.actor}: {entry.reason or ''}")

    def send(type_: str, data: dict, mode: str = "structured", event_id: str | None = None) -> str:
        event = funnel_event(type_, data, source="funnel-service", event_id=event_id)
        publisher.publish_funnel(event, mode=mode)  # type: ignore[arg-type]
        tl.say("FUNNEL", f"publishes {type_.rsplit('.', 1)[-1]} ({mode}) {short(data)}")
        return event.get_id()

    def locks_of(job: str):
        return [v for v in service.list_locks(BRANCH) if v.lock.job_id == job]

    tl.say("DEMO", f"worker + beat on the embedded broker; heartbeat interval {INTERVAL_S:.0f} s, "
                   f"dead after {service.policy.missed_heartbeats} missed")
    send("com.oms.indexing.started", {"job_id": "job-1", "branch": BRANCH, "resource_types": ["object_type", "link_type"],
                                      "indexing_mode": "traditional", "service_name": "funnel-service",
                                      "heartbeat_interval_s": INTERVAL_S, "ttl_s": 600,
                                      "reason": "search index rebuild after schema change"})
    granted = poll(lambda: len(locks_of("job-1")) == 2 and locks_of("job-1"), 15)
    worker_news()
    tl.expect(bool(granted), "job-1 granted two locks with fencing tokens")

    send("com.oms.indexing.heartbeat", {"job_id": "job-1", "service_name": "funnel-service", "status": "healthy",
                                        "progress_percent": 40, "estimated_remaining_s": 90}, mode="binary")
    poll(lambda: any(v.lock.progress_percent == 40 for v in locks_of("job-1")), 15)
    denied = service.check(BRANCH, "object_type", "write")
    tl.say("DEVELOPER", f"may I write object_type? -> {'ALLOWED' if denied.allowed else 'DENIED'}: {denied.message}")
    tl.expect(not denied.allowed and "ETA" in denied.message and "funnel-service" in denied.message,
              "write on object_type denied with holder and ETA")
    other = service.check(BRANCH, "action_type", "write")
    tl.say("DEVELOPER", f"may I write action_type? -> {'ALLOWED' if other.allowed else 'DENIED'}: {other.message}")
    tl.expect(other.allowed, "write on another resource type allowed")

    tl.say("FUNNEL", "crashes: no more heartbeats")
    last = max(v.lock.last_heartbeat for v in locks_of("job-1"))
    deadline = last + timedelta(seconds=INTERVAL_S * service.policy.missed_heartbeats)
    tl.say("DEMO", f"job-1's heartbeat deadline is {deadline:%H:%M:%S.%f}"[:-3] + "; asking every 50 ms")
    freed = poll(lambda: service.check(BRANCH, "object_type", "write").allowed, timeout_s=10, every_s=0.05)
    lag_ms = (service.clock() - deadline).total_seconds() * 1000
    tl.say("DEVELOPER", f"may I write object_type? -> {'ALLOWED' if freed else 'DENIED'} "
                        f"({lag_ms:.0f} ms after the deadline; the lock is dead, no sweep needed)")
    tl.expect(bool(freed) and lag_ms <= 1000, "object_type free within 1 s of the heartbeat deadline")
    released = poll(lambda: not locks_of("job-1"), timeout_s=10)
    worker_news()
    tl.expect(bool(released), "beat's heartbeat sweep released job-1's locks (HEARTBEAT_MISSED)")

    start_id = send("com.oms.indexing.started", {"job_id": "job-2", "branch": BRANCH, "resource_types": ["object_type"],
                                                 "service_name": "funnel-service", "heartbeat_interval_s": 5})
    poll(lambda: locks_of("job-2"), 15)
    worker_news()
    tokens = [v.lock.fencing_token for v in locks_of("job-2")]
    tl.expect(bool(tokens) and min(tokens) > max(v.lock.fencing_token for v in granted or []),
              "job-2's fencing token is higher than job-1's")
    send("com.oms.indexing.started", {"job_id": "job-2", "branch": BRANCH, "resource_types": ["object_type"],
                                      "service_name": "funnel-service"}, event_id=start_id)
    publisher.publish_raw("com.oms.indexing.heartbeat", _raw(b'{"specversion": "1.0", "id": "broken"'))
    tl.say("FUNNEL", "sends a duplicate of job-2's start, and a truncated JSON event")
    poll(lambda: service.store.dead_letters(1), 15)
    letters = service.store.dead_letters(1)
    tl.say("WORKER", f"DEAD-LETTERED  {letters[0].reason if letters else '(none)'}")
    tl.expect(bool(letters), "the malformed event was dead-lettered with its reason")
    send("com.oms.indexing.completed", {"job_id": "job-2", "record_count": 10_000, "index_size_bytes": 52_428_800})
    done = poll(lambda: not locks_of("job-2"), 15)
    worker_news()
    tl.expect(bool(done), "job-2 released on completion")
    acquired = [e for e in service.store.audit(500, BRANCH) if e.kind is AuditKind.ACQUIRED and e.job_id == "job-2"]
    tl.expect(len(acquired) == 1, "the duplicate start changed nothing (one grant for job-2)")
    tl.say("DEMO", f"summary {service.summary()}; audit entries on {BRANCH}: {len(service.store.audit(500, BRANCH))}")
    _shadow_scenario(service, send, worker_news, tl)
    if tl.failures:
        tl.say("DEMO", f"FAILED: {len(tl.failures)} step(s) did not happen as expected")
        return 1
    tl.say("DEMO", "done: every step happened as expected")
    return 0


def _shadow_scenario(service: Service, send: Callable, worker_news: Callable[[], None], tl: Timeline) -> None:
    """A shadow build while writes stay allowed, then the switch and its measured blackout."""
    folder = Path(service.shadows.policy.links_dir or ".").parent / "demo-indexes"
    tl.say("DEMO", "--- shadow index: build beside the live one, switch in for milliseconds ---")
    for n, job in enumerate(("search-v1", "search-v2"), start=1):
        send("com.oms.indexing.started", {"job_id": job, "branch": BRANCH, "resource_types": ["object_type", "link_type"],
                                          "indexing_mode": "shadow", "index_type": "SEARCH_INDEX",
                                          "service_name": "funnel-service", "heartbeat_interval_s": 5})
        poll(lambda: _state(service, job) == "PREPARING", 15)
        send("com.oms.indexing.heartbeat", {"job_id": job, "service_name": "funnel-service", "status": "healthy",
                                            "progress_percent": 50, "record_count": 5_000 * n})
        poll(lambda: _state(service, job) == "BUILDING", 15)
        during = service.check(BRANCH, "object_type", "write")
        tl.say("DEVELOPER", f"may I write object_type while {job} builds? -> {'ALLOWED' if during.allowed else 'DENIED'}")
        tl.expect(during.allowed, f"writes allowed while {job} is BUILDING")
        location = write_index(folder / job, 10_000 * n)
        send("com.oms.indexing.completed", {"job_id": job, "record_count": 10_000 * n,
                                            "index_size_bytes": 50_000_000 * n, "location": location})
        poll(lambda: _state(service, job) == "BUILT", 15)
        send("com.oms.shadow.switch.requested", {"job_id": job})
        poll(lambda: _state(service, job) == "ACTIVE" and service.shadows.status(job)["blackout_ms"] is not None, 15)
        worker_news()
        status = service.shadows.status(job)
        pointer = service.shadows.current(BRANCH, "SEARCH_INDEX")
        tl.say("WORKER", f"SWITCHED       {status['shadow_index_id']} active (token {pointer.fencing_token if pointer else '-'}): "
                         f"writes blocked {status['blackout_ms']} ms, switch {status['switch_duration_ms']} ms "
                         f"(the old way froze the branch for ~30 min)")
        tl.expect(pointer is not None and pointer.shadow_index_id == status["shadow_index_id"],
                  f"{job} is the active index after its switch")
    backups = service.store.load_index(f"{BRANCH}|SEARCH_INDEX")
    tl.say("DEMO", f"backup kept for rollback: {[b.shadow_index_id for b in backups.backups] if backups else []}")


def _state(service: Service, job: str) -> str | None:
    try:
        return service.shadows.status(job)["state"]
    except IndexgateError:
        return None


def short(data: dict) -> str:
    keys = ("job_id", "resource_types", "progress_percent", "estimated_remaining_s", "record_count")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data)


def _raw(body: bytes):
    from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

    return RabbitMQMessage(headers={}, content_type="application/cloudevents+json", body=body)
