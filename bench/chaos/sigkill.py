"""Scenarios ``sigkill`` and ``sigkill_whole``: SIGKILL workers mid-event under a stream.

Two real ``celery -A bench.chaos.probe worker`` processes (prefork, 2 pool processes each;
the probe only marks which event a pool process is in, see ``probe.py``) consume a stream
of jobs (started -> heartbeats -> end) from the broker into one SQLite store. A killer
thread waits until a pool process is inside an ``indexgate.intake`` task, waits a random
moment, and SIGKILLs:

- ``sigkill``: that pool process. The parent sees the worker lost and, with
  ``task_reject_on_worker_lost``, requeues the unacked message at once (any broker);
- ``sigkill_whole``: the whole worker (parent and pool), then starts a replacement.
  Nothing requeues from inside; RabbitMQ returns a dead connection's unacked messages at
  once. It runs on RabbitMQ only: on Redis the consumer's BRPOP removes a message from the
  list before kombu records it as unacked, so a worker killed in between loses it (and
  kombu restores truly unacked messages only at a consumer's first poll or every
  ``unacked_restore_interval x unacked_restore_throttle`` = 100 s by default, once they
  are older than ``visibility_timeout``). ``findings.py redis_whole_kill`` shows both.

A kill counts as *mid-event* only if the dead process's marker still names the task it
was in (phase ``pre``: before the effect, ``run``: inside decode/store, ``post``: after the
commit, before the ack). Kills that found the process already idle are reported apart.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from bench.chaos.common import (
    Ledger,
    Row,
    Workers,
    account,
    alive,
    broker_diagnosis,
    broker_url,
    children,
    delivery_settings,
    scratch,
    settle,
    wait_applied,
)
from bench.chaos.stream import JobStream
from bench.common import bench_settings
from events.publisher import Publisher
from indexgate.service import Service
from workers.broker_names import delete_run_names

VISIBILITY_TIMEOUT_S = 2.0  # Redis whole-worker kills only (findings.py); see the trade-off there
PROBE_SLEEP_MS = 40


def run(broker: str = "redis", short: bool = True, seed: int = 11) -> Row:
    """Pool processes SIGKILLed mid-event on ``broker``."""
    return _run("sigkill", broker, whole=False, target=20 if short else 100, seed=seed)


def run_whole(broker: str = "redis", short: bool = True, seed: int = 12) -> Row:
    """Whole workers SIGKILLed mid-event, on RabbitMQ whatever ``broker`` says: on Redis a
    whole-worker kill can lose the message its consumer had just popped (kombu's BRPOP
    moves it out of the list before it is recorded as unacked; see findings.py)."""
    row = _run("sigkill_whole", "rabbitmq", whole=True, target=4 if short else 20, seed=seed)
    if broker == "redis":
        row.note("run on RabbitMQ although --broker redis: on Redis a SIGKILLed worker loses, with high "
                 "probability under load, a message its consumer had popped (BRPOP) but not yet recorded in "
                 "kombu's unacked hash; `python -m bench.chaos.findings redis_whole_kill` reproduces it")
    return row


def _run(name: str, broker: str, whole: bool, target: int, seed: int, visibility_timeout_s: float | None = None
         ) -> Row:
    limit_s = 60 + 6 * target
    row = Row(name)
    rng = random.Random(seed)
    with scratch(name) as folder, broker_url(broker, folder) as url:
        extra = {} if visibility_timeout_s is None else {"redis_visibility_timeout_s": visibility_timeout_s}
        settings = bench_settings(folder / "data", url, **extra)
        probe_dir = folder / "probe"
        probe_dir.mkdir()
        env = {"CHAOS_PROBE_DIR": str(probe_dir), "CHAOS_PROBE_SLEEP_MS": str(PROBE_SLEEP_MS)}
        workers = Workers(settings, app_module="bench.chaos.probe")
        service = Service.from_settings(settings)
        publisher = Publisher(settings)
        ledger = Ledger()
        stream = JobStream(publisher, service.store, ledger, rng, branches=4, in_flight=8)
        stats = Counter()
        stop = threading.Event()
        errors: list[BaseException] = []

        def killer() -> None:
            try:
                wait = (visibility_timeout_s or 0) + 0.5 if url.startswith("redis") and whole else 0.0
                kill_loop(workers, probe_dir, rng, target, stats, stop, env, whole=whole, wait_before_restart_s=wait)
            except BaseException as exc:  # surfaced below; never a silent harness failure
                errors.append(exc)
            finally:
                stop.set()

        try:
            for _ in range(2):
                workers.start(env=env)
            workers.wait_ready()
            thread = threading.Thread(target=killer, name="chaos-killer", daemon=True)
            thread.start()
            stream.run_until(lambda: stop.is_set(), timeout_s=limit_s)
            stop.set()
            thread.join(timeout=60)
            if errors:
                raise errors[0]
            drained = stream.drain(timeout_s=30)
            applied = wait_applied(service.store, ledger, timeout_s=20)
            settle(settings)
            counts = account(service, ledger, all_jobs_ended=drained)
            row.take(counts)
            if counts.lost:
                row.note(broker_diagnosis(settings, set(ledger.events) - applied))
            if not drained:
                row.note(f"{len(stream.jobs)} job(s) could not be ended in time (an event of theirs was never applied)")
        finally:
            stop.set()
            workers.stop_all()
            publisher.close()
            service.store.close()
            delete_run_names(settings)
        row.runs = stats["mid_event"]
        row.crashes, found = workers.crashes()
        row.notes += found[:5]
        phases = {k[6:]: v for k, v in stats.items() if k.startswith("phase:")}
        what = "whole worker (parent + pool)" if whole else "pool process"
        row.note(f"{stats['mid_event']} mid-event SIGKILLs of a {what} (phases {phases}: pre = before the effect, "
                 f"run = in decode/store, post = committed, not yet acked); {stats['idle']} more kills found the "
                 f"process already idle; {stream.started} jobs on 4 branches, 2 workers x 2 pool processes, "
                 f"{url.split('://')[0]}")
        row.note("holds because: " + delivery_settings(settings) + "; and the inbox key (source|id) is written in "
                 "the effect's transaction, so a redelivery is a no-op")
        row.figures.update(stats)
    return row


def _busy(workers: Workers, probe_dir: Path) -> list[tuple[int, str, int]]:
    """(pool pid, marker, parent pid) of pool processes inside an intake task right now."""
    out = []
    for proc in workers.live():
        for pid in children(proc.pid):
            try:
                text = (probe_dir / str(pid)).read_text()
            except OSError:
                continue
            out.append((pid, text, proc.pid))
    return out


def kill_loop(workers: Workers, probe_dir: Path, rng: random.Random, target: int, stats: Counter,
              stop: threading.Event, env: dict[str, str], whole: bool, wait_before_restart_s: float = 0.0) -> None:
    while stats["mid_event"] < target and not stop.is_set():
        busy = _busy(workers, probe_dir)
        if not busy:
            time.sleep(0.002)
            continue
        pid, before, parent = rng.choice(busy)
        time.sleep(rng.uniform(0, 1.2 * PROBE_SLEEP_MS / 1000))  # somewhere in pre / run / post
        proc = next(p for p in workers.procs if p.pid == parent)
        if whole:
            workers.kill_whole(proc)
        else:
            workers.kill_child(pid)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
        marker = probe_dir / str(pid)
        try:
            after = marker.read_text()
            marker.unlink()
        except OSError:
            after = ""
        if after and after.split()[1] == before.split()[1]:
            stats["mid_event"] += 1
            stats[f"phase:{after.split()[0]}"] += 1
            stats["whole" if whole else "child"] += 1
        else:
            stats["idle"] += 1
        t0 = time.monotonic()
        if whole:
            time.sleep(wait_before_restart_s)  # Redis: unacked messages restorable once older than the timeout
            workers.start(env=env)
            workers.wait_ready()
            stats["restart_ms"] += int((time.monotonic() - t0) * 1000)
        else:  # the parent forks a replacement pool process
            deadline = time.monotonic() + 10
            while len(children(parent)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            stats["respawn_ms"] += int((time.monotonic() - t0) * 1000)
        time.sleep(rng.uniform(0, 0.15))  # let the stream move on between kills
