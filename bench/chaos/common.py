"""What every chaos scenario shares: the result row, the ledger of published events and
the accounting that turns the store's contents into the row's numbers, a private
``redis-server``, real (optionally instrumented) worker processes and process helpers.

Definitions (the same for every scenario):

- every published event has a unique id (``chaos-<run>-<n>``), so it is found by
  ``store.seen("source|id")`` or, if it was dead-lettered, in the dead letter's raw body
  (or headers, for binary mode and for hostile messages that have no usable id);
- *applied* = seen or dead-lettered; *lost* = neither;
- *applied twice* = one cause (``source|id``) with non-ignored audit entries from more
  than one commit (the entries of one commit share ``at``), or one job ACQUIRED in more
  than one commit;
- *locks stuck past deadline* = a stored lock still ``in_force`` at or after
  ``min(expires_at, heartbeat deadline)``, plus any lock still stored whose job's end
  event (completed / failed / cancelled) was sent, or every job of the run ended.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

from events import redis_stream
from indexgate import locks
from indexgate.clock import utcnow
from indexgate.locks import conflicts
from indexgate.service import Service
from indexgate.settings import Settings
from schemas.records import AuditEntry, AuditKind
from workers.broker_names import waiting_count
from workers.processes import answering, start_worker

TOKEN_RE = re.compile(r"chaos-[0-9a-f]{8}-\d{6}")
END_TYPES = {"com.oms.indexing.completed", "com.oms.indexing.failed", "com.oms.indexing.cancelled"}


# --- the row ---------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    runs: int = 0  # fault injections (kills, restarts, outages, pauses) or generated batches
    published: int = 0
    applied_once: int = 0
    lost: int = 0
    applied_twice: int = 0
    stuck: int = 0
    crashes: int = 0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)  # scenario-specific, for tests

    def note(self, text: str) -> None:
        self.notes.append(text)

    def take(self, counts: "Counts") -> None:
        self.published += counts.published
        self.applied_once += counts.applied_once
        self.lost += counts.lost
        self.applied_twice += counts.applied_twice
        self.stuck += counts.stuck
        self.notes += counts.notes


HEADER = ("scenario", "runs", "events published", "applied once", "lost", "applied twice",
          "locks stuck past deadline", "worker crashes")


def table(rows: list[Row]) -> str:
    cells = [HEADER] + [(r.scenario, r.runs, r.published, r.applied_once, r.lost, r.applied_twice, r.stuck,
                         r.crashes) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(HEADER))]
    lines = []
    for n, cell in enumerate(cells):
        lines.append(" | ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(cell, widths))))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the ledger and the accounting -----------------------------------------------------


def run_tag() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Published:
    key: str | None  # "source|id" when the message carries a usable id, else None
    token: str  # unique; the event id, or an x-chaos-token header for id-less messages
    type: str | None = None
    job: str | None = None
    category: str = "valid"  # hostile: what the generator meant it to be
    expect_dead: bool = False  # hostile: the generator built it to be dead-lettered


class Ledger:
    """Every event published in a run, by token."""

    def __init__(self) -> None:
        self.tag = run_tag()
        self.events: dict[str, Published] = {}
        self._n = 0

    def new_token(self) -> str:
        self._n += 1
        return f"chaos-{self.tag}-{self._n:06d}"

    def add(self, event: Published) -> None:
        assert event.token not in self.events, f"token {event.token} published twice in the ledger"
        self.events[event.token] = event

    def __len__(self) -> int:
        return len(self.events)

    def ended_jobs(self) -> set[str]:
        """Jobs whose end (completed / failed / cancelled) the funnel sent - applied or not: a
        lost end leaves a lock behind, which is then counted as stuck too."""
        return {e.job for e in self.events.values() if e.type in END_TYPES and e.job and not e.expect_dead}


def all_audit(store) -> list[AuditEntry]:
    """The whole audit trail, oldest first (commit order on SQLite)."""
    return list(reversed(store.audit(10**9)))


def dead_tokens(store) -> dict[str, str]:
    """token -> dead-letter reason, from the raw bodies (and headers) the letters keep."""
    import base64

    found: dict[str, str] = {}
    for letter in store.dead_letters(10**9):
        body = letter.body
        if letter.body_encoding == "base64":
            body = base64.b64decode(letter.body).decode("utf-8", "replace")
        for token in TOKEN_RE.findall(body) + TOKEN_RE.findall(" ".join(letter.headers.values())):
            found.setdefault(token, letter.reason)
    return found


def applied_tokens(store, ledger: Ledger, pending: Iterable[str] | None = None,
                   dead: dict[str, str] | None = None) -> set[str]:
    dead = dead_tokens(store) if dead is None else dead
    out = set()
    for token in (ledger.events if pending is None else pending):
        event = ledger.events[token]
        if token in dead or (event.key is not None and store.seen(event.key)):
            out.add(token)
    return out


def wait_applied(store, ledger: Ledger, timeout_s: float, every_s: float = 0.2,
                 alive: Callable[[], None] | None = None) -> set[str]:
    """Poll until every ledger event is applied or ``timeout_s`` passes; the applied set."""
    deadline = time.monotonic() + timeout_s
    applied: set[str] = set()
    while True:
        pending = [t for t in ledger.events if t not in applied]
        if pending:
            applied |= applied_tokens(store, ledger, pending)
        if len(applied) == len(ledger) or time.monotonic() > deadline:
            return applied
        if alive:
            alive()
        time.sleep(every_s)


@dataclass
class Counts:
    published: int = 0
    applied_once: int = 0
    lost: int = 0
    applied_twice: int = 0
    stuck: int = 0
    notes: list[str] = field(default_factory=list)


def account(service: Service, ledger: Ledger, all_jobs_ended: bool = False,
            now: datetime | None = None) -> Counts:
    """The row's numbers for one run, from the store alone (plus the ledger)."""
    store = service.store
    dead = dead_tokens(store)
    applied = applied_tokens(store, ledger, dead=dead)
    audit = all_audit(store)
    commits: dict[str, set] = defaultdict(set)
    acquired: dict[str, set] = defaultdict(set)
    for entry in audit:
        if entry.cause and entry.kind is not AuditKind.IGNORED:
            commits[entry.cause].add(entry.at)
        if entry.kind is AuditKind.ACQUIRED:
            acquired[entry.job_id].add(entry.at)
    twice_causes = {cause for cause, ats in commits.items() if len(ats) > 1}
    twice_jobs = {job for job, ats in acquired.items() if len(ats) > 1}
    by_key = {e.key: t for t, e in ledger.events.items() if e.key}
    twice_tokens = {by_key[c] for c in twice_causes if c in by_key}
    counts = Counts(published=len(ledger))
    counts.lost = len(ledger) - len(applied)
    counts.applied_once = len(applied - twice_tokens)
    counts.applied_twice = len(twice_tokens) + len(twice_causes - set(by_key)) + len(twice_jobs)
    if counts.lost:
        lost = sorted(set(ledger.events) - applied)
        kinds = defaultdict(int)
        for token in lost:
            kinds[ledger.events[token].type or ledger.events[token].category] += 1
        counts.notes.append(f"LOST {counts.lost}: {dict(kinds)}; e.g. {lost[:3]}")
    if twice_causes or twice_jobs:
        sample = sorted(twice_causes)[:3]
        detail = {c: sorted({str(e.kind) for e in audit if e.cause == c}) for c in sample}
        counts.notes.append(f"APPLIED TWICE: {len(twice_causes)} cause(s) in >1 commit {detail}; "
                            f"{len(twice_jobs)} job(s) acquired in >1 commit {sorted(twice_jobs)[:3]}")
    stuck = stuck_locks(service, ledger.ended_jobs(), all_jobs_ended, now)
    counts.stuck = len(stuck)
    if stuck:
        counts.notes.append(f"STUCK {len(stuck)}: {stuck[:3]}")
    return counts


def stuck_locks(service: Service, ended_jobs: set[str], all_jobs_ended: bool,
                now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    policy = service.policy
    out = []
    for state in service.store.branches_with_locks():
        for lock in state.locks:
            deadline = min(lock.expires_at, locks.heartbeat_deadline(lock, policy))
            if now >= deadline and locks.in_force(lock, now, policy):
                out.append(f"{lock.lock_id} (job {lock.job_id}) in force past its deadline {deadline.isoformat()}")
            elif all_jobs_ended or lock.job_id in ended_jobs:
                out.append(f"{lock.lock_id} (job {lock.job_id}) still held after its job ended")
    return out


def invariant_violations(service: Service, now: datetime | None = None) -> list[str]:
    """No two conflicting in-force locks now; per branch, in audit (commit) order, no grant
    while a conflicting lock of another job is live, and fencing tokens strictly increase."""
    now = now or utcnow()
    problems = []
    for state in service.store.branches_with_locks():
        live = [lock for lock in state.locks if locks.in_force(lock, now, service.policy)]
        for i, a in enumerate(live):
            for b in live[i + 1:]:
                if a.job_id != b.job_id and conflicts(a.resource_type, b.resource_type):
                    problems.append(f"branch {state.branch}: {a.lock_id} and {b.lock_id} conflict, both in force")
    live_by_branch: dict[str, dict[str, AuditEntry]] = defaultdict(dict)
    last_token: dict[str, int] = defaultdict(int)
    for entry in all_audit(service.store):
        if entry.branch is None:
            continue
        live = live_by_branch[entry.branch]
        if entry.kind is AuditKind.ACQUIRED:
            clash = [lid for lid, other in live.items()
                     if other.job_id != entry.job_id and conflicts(other.resource_type, entry.resource_type)]
            if clash:
                problems.append(f"branch {entry.branch}: grant {entry.lock_id} while {clash} live")
            if entry.fencing_token <= last_token[entry.branch]:
                problems.append(f"branch {entry.branch}: token {entry.fencing_token} after {last_token[entry.branch]}")
            last_token[entry.branch] = max(last_token[entry.branch], entry.fencing_token)
            live[entry.lock_id] = entry
        elif entry.kind is AuditKind.RELEASED:
            live.pop(entry.lock_id, None)
    return problems


# --- a private redis-server ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1, a free port and its own folder (AOF, fsync always).

    A private instance keeps chaos away from the shared Redis: kombu's unacked-message
    restore is per database, so a worker with a short visibility timeout on a shared
    database would also redeliver *other* runs' in-flight messages."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start: "
                                   f"{(self.folder / 'redis.log').read_text()[-800:]}")
            time.sleep(0.05)
        if os.environ.get("CHAOS_MONITOR"):  # debugging: every command the server runs
            with open(self.folder / f"monitor-{time.time():.0f}.log", "w") as out:
                self.monitor = subprocess.Popen(["redis-cli", "-p", str(self.port), "monitor"], stdout=out)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except Exception:
            return False

    def sigkill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)

    def shutdown(self) -> None:
        """SHUTDOWN (the AOF is fsynced on every write anyway), then wait for the exit."""
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5).shutdown()
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        if self.proc:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.sigkill()

    def stop(self) -> None:
        if getattr(self, "monitor", None) is not None:
            self.monitor.terminate()
            self.monitor.wait()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sigkill()


@contextmanager
def private_redis(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temp dir removed afterwards, even on failure."""
    path = Path(tempfile.mkdtemp(prefix=f"indexgate-chaos-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("CHAOS_KEEP"):  # debugging: keep logs, store and AOF
            print(f"  (kept {path})", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- worker processes ------------------------------------------------------------------


class Workers:
    """Real ``celery worker`` processes started by pid, each with its own log file, and a
    record of which processes *we* killed (every other death is a crash)."""

    def __init__(self, settings: Settings, app_module: str = "workers", **extra_env: str) -> None:
        self.settings = settings
        self.app_module = app_module
        self.extra_env = extra_env
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.killed: set[int] = set()  # pids we SIGKILLed (parents and pool children)
        self.stopped: set[int] = set()  # parents we stopped on purpose
        self._n = 0

    def start(self, pool: str = "prefork", concurrency: int | None = 2, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        self._n += 1
        tag = f"{self.app_module.split('.')[-1]}{self._n}"
        proc = start_worker(self.settings, tag, pool=pool, concurrency=concurrency, app_module=self.app_module,
                            env=env, **self.extra_env)
        self.procs.append(proc)
        self.logs.append(self.settings.data_dir / f"worker-{tag}.log")
        return proc

    def live(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait_ready(self, timeout_s: float = 60) -> None:
        from workers.app import create_app

        app = create_app(self.settings)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                live = self.live()
                if answering(app, live, 0.5) >= len(live) and all(len(children(p.pid)) > 0 for p in live):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers not ready after {timeout_s} s:\n{self.tail()}")
        finally:
            app.close()

    def kill_whole(self, proc: subprocess.Popen) -> list[int]:
        """SIGKILL a worker and its pool processes at once (a node or container dying)."""
        pids = [proc.pid, *children(proc.pid)]
        for pid in pids:
            self.killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=20)
        for pid in pids[1:]:
            reap_orphan(pid)
        return pids

    def kill_child(self, pid: int) -> None:
        self.killed.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.stopped.add(proc.pid)
                kids = children(proc.pid)
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.killed.add(proc.pid)
                    proc.kill()
                    proc.wait()
                for pid in kids:
                    reap_orphan(pid)

    def crashes(self) -> tuple[int, list[str]]:
        """Deaths we did not cause, and unhandled task errors, from the process table and logs.
        A worker that died on its own counts once (its log's last words are shown with it)."""
        found: list[str] = []
        count = 0
        for proc, log in zip(self.procs, self.logs):
            text = log.read_text(errors="replace") if log.exists() else ""
            fatal = [line.strip()[:300] for line in text.splitlines()
                     if "Unrecoverable error" in line or ("CRITICAL" in line and "Couldn't ack" not in line)]
            died = proc.poll() is not None and proc.pid not in self.killed and proc.pid not in self.stopped
            if died:
                count += 1
                found.append(f"worker {proc.pid} exited on its own with {proc.returncode} ({log.name})"
                             + (f": {fatal[0]}" if fatal else ""))
            else:
                count += len(fatal)
                found += [f"{log.name}: {line}" for line in fatal]
            for match in re.finditer(r"Process '[^']+' pid:(\d+) exited with '([^']+)'", text):
                if int(match.group(1)) not in self.killed:
                    count += 1
                    found.append(f"pool process {match.group(1)} died: {match.group(2)} ({log.name})")
            for line in text.splitlines():
                if "raised unexpected" in line:
                    count += 1
                    found.append(f"{log.name}: {line.strip()[:300]}")
        return count, found

    def tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs
                         if log.exists())

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for log in self.logs if log.exists()
                for line in log.read_text(errors="replace").splitlines() if rx.search(line)]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def reap_orphan(pid: int, timeout_s: float = 10) -> None:
    """Wait for a pool process of a dead worker to go (billiard children exit when their
    parent dies); SIGKILL it if it lingers, so no run leaves processes behind."""
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def quiet_logs() -> None:
    """The harness's own kombu/celery chatter stays out of the table."""
    import logging

    for name in ("kombu", "celery", "amqp", "events", "indexgate", "workers"):
        logging.getLogger(name).setLevel(logging.CRITICAL)



# --- brokers ---------------------------------------------------------------------------


@contextmanager
def broker_url(name: str, folder: Path) -> Iterator[str]:
    """``redis``: a private redis-server for this run (stopped afterwards); ``rabbitmq``:
    the shared local RabbitMQ (queues are per connection there, names are per run)."""
    from bench.common import BROKERS

    if name == "redis":
        with private_redis(folder / "redis") as server:
            yield server.url
    else:
        yield BROKERS.get(name, name)


def settle(settings: Settings, timeout_s: float = 30, quiet_s: float = 1.0) -> None:
    """Wait until the queues stay empty for ``quiet_s`` (late redeliveries run first)."""
    deadline = time.monotonic() + timeout_s
    empty_since = None
    while time.monotonic() < deadline:
        try:
            depth = waiting_count(settings)
        except Exception:
            depth = 1
        if depth == 0:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= quiet_s:
                return
        else:
            empty_since = None
        time.sleep(0.2)


def delivery_settings(settings: Settings) -> str:
    """The Celery settings the at-least-once claim rests on, as the worker really has them."""
    from workers.app import create_app

    app = create_app(settings)
    conf = app.conf
    task = app.tasks["indexgate.intake"]
    parts = [f"task_acks_late={conf.task_acks_late}", f"task_reject_on_worker_lost={conf.task_reject_on_worker_lost}",
             f"worker_prefetch_multiplier={conf.worker_prefetch_multiplier}",
             f"IndexgateTask.acks_late={task.acks_late}", f"reject_on_worker_lost={task.reject_on_worker_lost}",
             f"max_retries={task.max_retries}", f"broker_transport_options={dict(conf.broker_transport_options)}"]
    if redis_stream.uses_stream(settings):
        parts.append(f"intake: Redis stream {redis_stream.stream_key(settings)} read by consumer group "
                     f"{settings.intake_group}, each entry acked by the task after its commit, claimed again after "
                     f"intake_claim_idle_s={settings.intake_claim_idle_s}")
    app.close()
    return ", ".join(parts)


def broker_diagnosis(settings: Settings, tokens: Iterable[str]) -> str:
    """Where lost events are on a Redis broker: ready in a queue, in the intake stream
    (not yet acked), unacked in kombu's hash, or nowhere."""
    if not (settings.broker_url or "").startswith("redis"):
        return ""
    import base64
    import json

    import redis

    def text(raw: bytes) -> str:  # kombu's envelope keeps the body base64-encoded
        decoded = raw.decode("utf-8", "replace")
        try:
            envelope = json.loads(decoded)
            envelope = envelope[0] if isinstance(envelope, list) else envelope
            return decoded + base64.b64decode(envelope["body"]).decode("utf-8", "replace")
        except (ValueError, KeyError, TypeError):
            return decoded

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    ready = {name: [text(m) for m in client.lrange(name, 0, -1)]
             for name in (settings.intake_queue, settings.task_queue)}
    stream = redis_stream.stream_key(settings)
    ready[stream] = [b" ".join(fields.values()).decode("utf-8", "replace") for _ref, fields in client.xrange(stream)]
    unacked = {k.decode(): text(v) for k, v in client.hgetall("unacked").items()}
    where = {}
    for token in tokens:
        spots = [name for name, msgs in ready.items() if any(token in m for m in msgs)]
        spots += [f"unacked:{tag}" for tag, m in unacked.items() if token in m]
        where[token] = spots or ["nowhere"]
    return (f"broker: ready {({k: len(v) for k, v in ready.items()})}, unacked {len(unacked)}; "
            f"lost events found at {where}")


# --- a private RabbitMQ node -----------------------------------------------------------


class RabbitNode:
    """A RabbitMQ node of our own (name, ports, cookie, data in a temp dir, no plugins), so
    ``rabbitmqctl stop_app`` / ``start_app`` never touch the shared broker on 5672."""

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.node = f"chaos{self.port}@localhost"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def available(cls) -> bool:
        return Path(cls.SERVER).exists() and Path(cls.CTL).exists()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        f = self.folder
        return {**{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
                "HOME": str(f / "home"), "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(free_port()), "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
                "RABBITMQ_LOG_BASE": str(f / "log"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(f / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(f / "env.conf"), "RABBITMQ_PID_FILE": str(f / "node.pid")}

    def ctl(self, *args: str, timeout_s: float = 60) -> None:
        subprocess.run([self.CTL, "-n", self.node, *args], env=self._env(), check=True, timeout=timeout_s,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "advanced.config").write_text("[].\n")
        (self.folder / "env.conf").write_text("")
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")
        with open(self.folder / "server.out", "w") as out:
            self.proc = subprocess.Popen([self.SERVER], env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.await_app()

    def await_app(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ctl("await_startup", "-t", "2", timeout_s=10)
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise RuntimeError(f"RabbitMQ node {self.node} did not start: "
                                       f"{(self.folder / 'server.out').read_text()[-800:]}")

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.await_app()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.ctl("stop", timeout_s=30)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:  # the node's own helper processes (epmd is shared and left alone: not ours)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


