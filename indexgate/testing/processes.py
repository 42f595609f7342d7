"""Real ``celery -A workers worker`` processes for tests, benchmarks and chaos runs.

Crash, race and throughput claims need real worker processes against the real broker and
store, started and killed by pid. Configuration travels by environment (``INDEXGATE_*``),
exactly as an operator would run them.
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

from pydantic import SecretStr

from indexgate.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a subprocess (worker, CLI) use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXGATE_")}
    for name in settings.model_fields_set:  # every field the caller chose; the rest keep their defaults
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"INDEXGATE_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    env["INDEXGATE_STORE_URL"] = settings.resolved_store_url
    env.update({f"INDEXGATE_{k.upper()}": v for k, v in extra.items()})
    return env


def start_worker(settings: Settings, tag: str, pool: str = "prefork", concurrency: int | None = None,
                 beat: bool = False, app_module: str = "indexgate.workers", env: dict[str, str] | None = None,
                 loglevel: str = "WARNING", **extra_env: str) -> subprocess.Popen:
    """One worker process; its log goes to ``<data_dir>/worker-<tag>.log``. ``extra_env``
    are more ``INDEXGATE_*`` settings, ``env`` plain variables on top."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    node = f"{tag}-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "celery", "-A", app_module, "worker", "-P", pool, "-l", loglevel,
            "-n", f"{node}@%h", "--without-mingle", "--without-gossip"]
    if concurrency:
        argv.append(f"-c{concurrency}")
    if beat:
        argv.append("-B")
    with open(settings.data_dir / f"worker-{tag}.log", "w") as log:
        proc = subprocess.Popen(argv, env=settings_env(settings, **extra_env) | (env or {}), stdout=log,
                                stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    proc.node = node  # type: ignore[attr-defined]  # answering() counts only our own workers' replies
    return proc


def start_beat(settings: Settings, tag: str, **extra_env: str) -> subprocess.Popen:
    """One ``celery beat`` process logging at INFO (each job it sends is a line) to
    ``<data_dir>/beat-<tag>.log``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "celery", "-A", "indexgate.workers", "beat", "-l", "INFO"]
    with open(settings.data_dir / f"beat-{tag}.log", "w") as log:
        return subprocess.Popen(argv, env=settings_env(settings, **extra_env), stdout=log, stderr=subprocess.STDOUT,
                                cwd=PROJECT_ROOT)


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answering(app, procs: list[subprocess.Popen], timeout_s: float = 1.0) -> int:
    """How many of ``procs`` answer a ping (other workers on the same shared broker answer
    too; they are not counted)."""
    ours = tuple(f"{getattr(p, 'node', '')}@" for p in procs)
    names = [name for reply in app.control.ping(timeout=timeout_s) or [] for name in reply]
    return sum(name.startswith(ours) for name in names)


def wait_ready(settings: Settings, procs: list[subprocess.Popen], timeout_s: float = 60) -> None:
    """Block until every worker answers a ping over the broker."""
    from indexgate.workers.app import create_app

    app = create_app(settings)
    deadline = time.monotonic() + timeout_s
    while answering(app, procs) < len(procs):
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"workers did not all come up:\n{_tail(settings)}")


@contextmanager
def worker_processes(settings: Settings, count: int, concurrency: int | None = 2, pool: str = "prefork",
                     app_module: str = "indexgate.workers", **extra_env: str) -> Iterator[list[subprocess.Popen]]:
    """``count`` ready workers, stopped afterwards."""
    procs = [start_worker(settings, f"w{i}", pool=pool, concurrency=concurrency, app_module=app_module, **extra_env)
             for i in range(count)]
    try:
        wait_ready(settings, procs)
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def _tail(settings: Settings) -> str:
    logs = sorted(settings.data_dir.glob("worker-*.log"))
    return "\n".join(log.read_text()[-1500:] for log in logs)
