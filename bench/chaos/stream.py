"""A funnel's event stream for the chaos runs: many jobs, each started -> heartbeats ->
completed (sometimes failed or cancelled), several in flight at once on a few branches.

It behaves like a real funnel (README, "Ordering"): a job's heartbeats and its end are
sent only after its ``started`` was applied (the funnel builds the index first), so a
lock left behind at the end can only be the worker's fault. Heartbeats sometimes carry an
ETA beyond the remaining TTL, which makes the worker write an EXTENDED entry: a heartbeat
applied twice would show as two such commits. Publishing retries the *same* event (same
id) until the broker takes it, as an at-least-once funnel does across a broker restart.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from cloudevents.core.v1.event import CloudEvent

from bench.chaos.common import Counts, Ledger, Published, Row, account, wait_applied
from bench.chaos.servers import broker_diagnosis, settle
from indexgate.events.decode import event_key
from indexgate.events.publisher import Publisher, funnel_event
from indexgate.service import Service
from indexgate.settings import Settings

TYPES = ["object_type", "link_type", "action_type", "function_type", "interface_type"]
SOURCE = "chaos-funnel"


@dataclass
class Job:
    job_id: str
    started_key: str
    beats_left: int
    last_key: str = ""


def publish_retrying(publisher: Publisher, event: CloudEvent, timeout_s: float = 60) -> int:
    """Publish until the broker takes it; the number of failed attempts (0 normally)."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            publisher.publish_funnel(event)
            return failures
        except Exception:
            failures += 1
            if time.monotonic() > deadline:
                raise
            publisher.close()  # a fresh connection on the next attempt
            time.sleep(0.25)


class JobStream:
    def __init__(self, publisher: Publisher, store, ledger: Ledger, rng: random.Random, branches: int = 4,
                 in_flight: int = 6, beats: tuple[int, int] = (2, 5), heartbeat_interval_s: float = 60,
                 ttl_s: float = 600, prefix: str = "chaos") -> None:
        self.publisher = publisher
        self.store = store
        self.ledger = ledger
        self.rng = rng
        self.branches = [f"{prefix}/branch-{n}" for n in range(branches)]
        self.in_flight = in_flight
        self.beats = beats
        self.heartbeat_interval_s = heartbeat_interval_s
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.jobs: list[Job] = []
        self.started = 0
        self.publish_failures = 0

    def _send(self, type_: str, data: dict, job: str) -> str:
        token = self.ledger.new_token()
        event = funnel_event(type_, data, source=SOURCE, event_id=token)
        self.publish_failures += publish_retrying(self.publisher, event)
        key = event_key(SOURCE, token)
        self.ledger.add(Published(key=key, token=token, type=type_, job=job))
        return key

    def _start(self) -> None:
        self.started += 1
        job_id = f"{self.prefix}-{self.ledger.tag}-job-{self.started}"
        roll = self.rng.random()
        types = [] if roll < 0.1 else self.rng.sample(TYPES, 1 if roll < 0.7 else 2)  # [] = branch-wide
        key = self._send("com.oms.indexing.started", {
            "job_id": job_id, "branch": self.rng.choice(self.branches), "resource_types": types,
            "heartbeat_interval_s": self.heartbeat_interval_s, "ttl_s": self.ttl_s,
            "service_name": f"funnel-{self.rng.randrange(3)}", "reason": "chaos"}, job_id)
        self.jobs.append(Job(job_id, key, self.rng.randint(*self.beats)))

    def _advance(self, job: Job) -> bool:
        """Send the job's next event; True when the job has ended."""
        if not self.store.seen(job.last_key or job.started_key):
            return False  # one event of a job in flight at a time: a bounded backlog
        if job.beats_left > 0:
            job.beats_left -= 1
            data = {"job_id": job.job_id, "status": "healthy", "progress_percent": self.rng.uniform(0, 100)}
            if self.rng.random() < 0.4:
                data["estimated_remaining_s"] = self.ttl_s * 2  # beyond the TTL: an EXTENDED entry
            job.last_key = self._send(self.rng.choice(["com.oms.indexing.heartbeat", "com.oms.indexing.progress"]),
                                      data, job.job_id)
            return False
        roll = self.rng.random()
        if roll < 0.8:
            self._send("com.oms.indexing.completed", {"job_id": job.job_id, "record_count": 10}, job.job_id)
        elif roll < 0.9:
            self._send("com.oms.indexing.failed", {"job_id": job.job_id, "error": "chaos"}, job.job_id)
        else:
            self._send("com.oms.indexing.cancelled", {"job_id": job.job_id, "reason": "chaos"}, job.job_id)
        return True

    def burst(self, jobs: int) -> None:
        """Start ``jobs`` more jobs at once, beyond the usual number in flight."""
        for _ in range(jobs):
            self._start()

    def step(self, allow_new: bool = True) -> int:
        """Top up the jobs in flight and advance each one event; how many were sent."""
        before = len(self.ledger)
        while allow_new and len(self.jobs) < self.in_flight:
            self._start()
        self.jobs = [job for job in self.jobs if not self._advance(job)]
        return len(self.ledger) - before

    def run_until(self, done: Callable[[], bool], timeout_s: float, pause_s: float = 0.01,
                  tick: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.step()
            if tick:
                tick()
            time.sleep(pause_s)

    def drain(self, timeout_s: float, pause_s: float = 0.02, tick: Callable[[], None] | None = None) -> bool:
        """End every job in flight (no new ones); False if that did not happen in time."""
        deadline = time.monotonic() + timeout_s
        while self.jobs and time.monotonic() < deadline:
            self.step(allow_new=False)
            if tick:
                tick()
            time.sleep(pause_s)
        return not self.jobs


def finish(row: Row, stream: "JobStream", settings: Settings, service: Service, drain_s: float = 30,
           applied_s: float = 20, tick: Callable[[], None] | None = None) -> Counts:
    """The end of every stream scenario: end the jobs in flight, wait for the effects and
    for the broker to settle, count into ``row``, and say where lost events are."""
    drained = stream.drain(timeout_s=drain_s, tick=tick)
    applied = wait_applied(service.store, stream.ledger, timeout_s=applied_s, alive=tick)
    settle(settings)
    counts = account(service, stream.ledger, all_jobs_ended=drained)
    row.take(counts)
    if counts.lost:
        row.note(broker_diagnosis(settings, set(stream.ledger.events) - applied))
    if not drained:
        row.note(f"{len(stream.jobs)} job(s) could not be ended in time (an event of theirs was never applied)")
    return counts
