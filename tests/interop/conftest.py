"""Interop fixtures: a real indexgate deployment per broker, judged only through its CLI.

Each ``Stack`` is what an operator runs - ``indexgate setup`` and a ``celery -A
indexgate.workers worker`` process, configured by ``INDEXGATE_*`` variables - on the real
Redis or RabbitMQ, with names of its own (shared brokers). The publishers are the recipes
in ``recipes.py``, which import no indexgate code; the verdict on each event comes from
running the ``indexgate`` CLI as a subprocess (``check``, ``locks list --json``,
``deadletters list --json``, ``intake status --json``). indexgate's own code is used only
to delete the run's names afterwards.

The stack's processes run in a time zone that is not UTC (``STACK_TZ``, UTC+05:30), so a
naive time read as local instead of UTC is off by hours, not by nothing as it would be on a
machine set to UTC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import AMQP_URL, REDIS_URL, require_reachable

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "interop-funnel"
STACK_TZ = "IST-5:30"  # POSIX TZ: local time is UTC+05:30 (no tzdata needed)


@dataclass
class Stack:
    broker: str  # "redis" | "rabbitmq"
    url: str
    data_dir: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    worker: subprocess.Popen | None = None

    @property
    def pika_url(self) -> str:
        """pika spells the default vhost ``/%2F`` where kombu writes ``//``."""
        return self.url[:-2] + "/%2F" if self.url.endswith("//") else self.url

    @property
    def exchange(self) -> str:
        return f"interop.funnel.{self.suffix}"

    @property
    def queue(self) -> str:
        return f"interop.intake.{self.suffix}"

    @property
    def stream(self) -> str:
        return f"{self.queue}.stream"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXGATE_", "CELERY_"))}
        return env | {
            "TZ": STACK_TZ,
            "INDEXGATE_BROKER_URL": self.url, "INDEXGATE_DATA_DIR": str(self.data_dir),
            "INDEXGATE_FUNNEL_EXCHANGE": self.exchange, "INDEXGATE_INTAKE_QUEUE": self.queue,
            "INDEXGATE_TASK_QUEUE": f"interop.tasks.{self.suffix}", "INDEXGATE_OUT_EXCHANGE": f"interop.out.{self.suffix}",
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "indexgate.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=60, cwd=ROOT)

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, f"indexgate {' '.join(args)}: {done.returncode} {done.stderr}"
        return json.loads(done.stdout)

    def setup(self) -> None:
        done = self.cli("setup")
        assert done.returncode == 0, done.stderr

    def start_worker(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "worker.log", "w")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "indexgate.workers", "worker", "-P", "prefork", "-c", "2",
             "-l", "WARNING", "-n", f"interop-{self.suffix}@%h", "--without-mingle", "--without-gossip"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        eventually(self._reading, 60, lambda: f"worker did not start reading:\n{self.worker_log()}")

    def _reading(self) -> bool:
        """The worker reads the intake: what `intake status` says (a live stream reader on
        Redis, a consumer on the queue on RabbitMQ)."""
        assert self.worker is not None and self.worker.poll() is None, self.worker_log()
        report = self.cli_json("intake", "status")
        if "stream" in report:
            return bool(report["stream"]["live_readers"])
        return bool(report["queue"]["consumers"])

    def worker_log(self) -> str:
        path = self.data_dir / "worker.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        from indexgate.settings import Settings
        from indexgate.testing.broker_names import delete_run_names

        names = {k[len("INDEXGATE_"):].lower(): v for k, v in self.env.items() if k.startswith("INDEXGATE_")}
        delete_run_names(Settings(**names))

    # --- verdicts ----------------------------------------------------------------------

    def locks_of(self, branch: str) -> list[dict]:
        return self.cli_json("locks", "list", "--branch", branch)

    def wait_lock(self, branch: str, job: str) -> dict:
        found = eventually(lambda: [lock for lock in self.locks_of(branch) if lock["job_id"] == job], 30,
                           lambda: f"no lock for {job} on {branch}; dead letters: {self.dead_letters()[:3]}\n"
                                   f"{self.worker_log()}")
        return found[0]

    def dead_letters(self) -> list[dict]:
        return self.cli_json("deadletters", "list", "--limit", "500")

    def wait_dead_letter(self, marker: str) -> dict:
        def find() -> list[dict]:
            return [letter for letter in self.dead_letters()
                    if marker in letter["body"] or marker in json.dumps(letter["headers"])]

        return eventually(find, 30, lambda: f"no dead letter carrying {marker!r}\n{self.worker_log()}")[0]


def eventually(predicate: Callable[[], Any], timeout_s: float, why: Callable[[], str]) -> Any:
    """Poll until ``predicate`` is truthy; a bound on waiting, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(why())
        time.sleep(0.3)


def started(job: str, branch: str, **attributes: Any) -> dict:
    """A ``com.oms.indexing.started`` CloudEvent as a plain dict (time: now, RFC 3339)."""
    return {"specversion": "1.0", "id": f"{job}-start", "source": SOURCE, "type": "com.oms.indexing.started",
            "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "data": {"job_id": job, "branch": branch, "resource_types": ["object_type"], "ttl_s": 3600,
                     "heartbeat_interval_s": 600, "service_name": "interop"}} | attributes


def new_job(tag: str) -> tuple[str, str]:
    """A job id and a branch no other test uses."""
    token = uuid.uuid4().hex[:8]
    return f"{tag}-{token}", f"interop/{tag}-{token}"


def assert_locked(stack: Stack, branch: str, job: str) -> None:
    """The event was applied: the lock is listed and ``indexgate check`` denies (exit 3)."""
    lock = stack.wait_lock(branch, job)
    assert lock["resource_type"] == "object_type" and lock["in_force"], lock
    denied = stack.cli("check", branch, "object_type")
    assert denied.returncode == 3 and denied.stdout.startswith("DENIED"), denied.stdout + denied.stderr


def _stack(broker: str, url: str, folder: Path) -> Iterator[Stack]:
    require_reachable(url)
    stack = Stack(broker, url, folder)
    try:
        stack.setup()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack("redis", REDIS_URL, tmp_path_factory.mktemp("interop-redis"))


@pytest.fixture(scope="module")
def rabbit_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack("rabbitmq", AMQP_URL, tmp_path_factory.mktemp("interop-rabbitmq"))
