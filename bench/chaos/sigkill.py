"""Scenarios ``sigkill`` and ``sigkill_whole``: SIGKILL workers mid-event under a stream.

Two real ``celery -A bench.chaos.probe worker`` processes (prefork, 2 pool processes each;
the probe only marks which event a pool process is in, see ``probe.py``) consume a stream
of jobs (started -> heartbeats -> end) from the broker into one SQLite store. A killer
thread waits until a pool process is inside an intake task (``indexgate.<kind>``), waits a random
moment, and SIGKILLs:

- ``sigkill``: that pool process. The parent sees the worker lost and, with
  ``task_reject_on_worker_lost``, requeues the unacked message at once (any broker);
- ``sigkill_whole`` (Redis), ``sigkill_whole_kombu`` (Redis, the funnel publishing with
  plain kombu to the topic exchange: the kombu door) and ``sigkill_whole_rabbitmq``: the
  whole worker (parent and pool), then starts a replacement. Nothing requeues from inside. RabbitMQ returns a dead
  connection's unacked messages at once. On Redis the dead worker's intake stream entries
  stay pending and the other worker claims them after ``intake_claim_idle_s`` (3 s in this
  run, 60 s in production); its unacked hand-off tasks come back only after the visibility
  timeout, by which time they are duplicates.

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

from bench.chaos.common import Ledger, Row
from bench.chaos.kombu_funnel import KombuFunnel
from bench.chaos.procs import Workers, alive, children
from bench.chaos.servers import (
    broker_url,
    delivery_settings,
    scratch,
)
from bench.chaos.stream import JobStream, finish
from bench.common import bench_settings
from indexgate.events.publisher import Publisher
from indexgate.service import Service
from indexgate.testing.broker_names import delete_run_names

CLAIM_IDLE_S = 3.0  # Redis whole-worker kills: the dead worker's entries come back within the run
PROBE_SLEEP_MS = 40


def run(broker: str = "redis", short: bool = True, seed: int = 11) -> Row:
    """Pool processes SIGKILLed mid-event on ``broker``."""
    return _run("sigkill", broker, whole=False, target=20 if short else 100, seed=seed)


def run_whole(broker: str = "redis", short: bool = True, seed: int = 12) -> Row:
    """Whole workers SIGKILLed mid-event on ``broker``."""
    return _run("sigkill_whole", broker, whole=True, target=4 if short else 20, seed=seed,
                intake_claim_idle_s=CLAIM_IDLE_S)


def run_whole_kombu(broker: str = "redis", short: bool = True, seed: int = 14) -> Row:
    """Whole workers SIGKILLed mid-event on Redis while the funnel publishes with plain kombu."""
    return _run("sigkill_whole_kombu", "redis", whole=True, target=4 if short else 20, seed=seed, kombu=True,
                intake_claim_idle_s=CLAIM_IDLE_S)


def run_whole_rabbitmq(broker: str = "rabbitmq", short: bool = True, seed: int = 13) -> Row:
    """Whole workers SIGKILLed mid-event on RabbitMQ, whatever ``broker`` says."""
    return _run("sigkill_whole_rabbitmq", "rabbitmq", whole=True, target=4 if short else 20, seed=seed)


def _run(name: str, broker: str, whole: bool, target: int, seed: int, kombu: bool = False, term: bool = False,
         **overrides: float) -> Row:
    """``overrides``: settings for this run (e.g. a short ``intake_claim_idle_s``); ``kombu``:
    the funnel publishes with plain kombu to the topic exchange instead of indexgate's
    publisher; ``term``: SIGTERM whole workers instead (``sigterm.py``)."""
    limit_s = 60 + (10 if term else 6) * target  # a SIGTERM cycle waits for the exit, then for the replacement
    row = Row(name)
    rng = random.Random(seed)
    with scratch(name) as folder, broker_url(broker, folder) as url:
        settings = bench_settings(folder / "data", url, **overrides)
        probe_dir = folder / "probe"
        probe_dir.mkdir()
        env = {"CHAOS_PROBE_DIR": str(probe_dir), "CHAOS_PROBE_SLEEP_MS": str(PROBE_SLEEP_MS)}
        workers = Workers(settings, app_module="bench.chaos.probe")
        service = Service.from_settings(settings)
        publisher = KombuFunnel(url, settings.funnel_exchange) if kombu else Publisher(settings)
        ledger = Ledger()
        stream = JobStream(publisher, service.store, ledger, rng, branches=4, in_flight=8)
        stats = Counter()
        shutdowns: list[float] = []  # term: seconds from each SIGTERM to the worker's exit
        stop = threading.Event()
        errors: list[BaseException] = []

        def killer() -> None:
            try:
                kill_loop(workers, probe_dir, rng, target, stats, stop, env, whole=whole, term=term,
                          shutdowns=shutdowns)
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
            finish(row, stream, settings, service)
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
        how = "SIGTERMs (warm shutdown, waited for until the worker exited)" if term else "SIGKILLs"
        more = "SIGTERMs" if term else "kills"
        row.note(f"{stats['mid_event']} mid-event {how} of a {what} (phases {phases}: pre = before the effect, "
                 f"run = in decode/store, post = committed, not yet acked); {stats['idle']} more {more} found the "
                 f"process already idle; {stream.started} jobs on 4 branches, 2 workers x 2 pool processes, "
                 f"{url.split('://')[0]}")
        if term:
            row.figures["shutdown_s"] = shutdowns
            row.figures["claimed_again"] = len(workers.log_lines(r"handing off \d+ intake entries again"))
            row.figures["cold"] = len(workers.log_lines("cold shutdown"))
        if kombu:
            row.note(publisher.describe())
            row.figures["kombu_modes"] = dict(publisher.modes)
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
              stop: threading.Event, env: dict[str, str], whole: bool, term: bool = False,
              shutdowns: list[float] | None = None) -> None:
    """``term``: SIGTERM the whole worker and wait for its exit instead of a SIGKILL; a kill
    is mid-event if the marker read right after the signal still names the task."""
    while stats["mid_event"] < target and not stop.is_set():
        busy = _busy(workers, probe_dir)
        if not busy:
            time.sleep(0.002)
            continue
        pid, before, parent = rng.choice(busy)
        time.sleep(rng.uniform(0, 1.2 * PROBE_SLEEP_MS / 1000))  # somewhere in pre / run / post
        proc = next(p for p in workers.procs if p.pid == parent)
        marker = probe_dir / str(pid)
        if term:
            after = _term_whole(workers, proc, marker, stats, shutdowns if shutdowns is not None else [])
        else:
            if whole:
                workers.kill_whole(proc)
            else:
                workers.kill_child(pid)
                deadline = time.monotonic() + 10
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.005)
            after = _take_marker(marker)
        if after and after.split()[1] == before.split()[1]:
            stats["mid_event"] += 1
            stats[f"phase:{after.split()[0]}"] += 1
            stats["term" if term else "whole" if whole else "child"] += 1
        else:
            stats["idle"] += 1
        t0 = time.monotonic()
        if whole or term:
            workers.start(env=env)
            workers.wait_ready()
            stats["restart_ms"] += int((time.monotonic() - t0) * 1000)
        else:  # the parent forks a replacement pool process
            deadline = time.monotonic() + 10
            while len(children(parent)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            stats["respawn_ms"] += int((time.monotonic() - t0) * 1000)
        time.sleep(rng.uniform(0, 0.15))  # let the stream move on between kills


def _take_marker(marker: Path) -> str:
    """A pool process's marker, removed ("" if there is none)."""
    try:
        text = marker.read_text()
        marker.unlink()
    except OSError:
        return ""
    return text


def _term_whole(workers: Workers, proc, marker: Path, stats: Counter, shutdowns: list[float]) -> str:
    """SIGTERM ``proc``, read the marker right after the signal (what the pool process was
    in when it landed), wait for the exit; a marker still there afterwards is a task the
    shutdown cut off instead of finishing."""
    at_signal: list[str] = []

    def look() -> None:
        if not at_signal:
            try:
                at_signal.append(marker.read_text())
            except OSError:  # no marker: the pool process was idle
                at_signal.append("")

    code, seconds = workers.term_whole(proc, while_waiting=look)
    stats[f"exit:{code}"] += 1
    shutdowns.append(round(seconds, 2))
    if _take_marker(marker):
        stats["cut_off"] += 1
    return at_signal[0] if at_signal else ""
