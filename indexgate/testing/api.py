"""A real ``indexgate serve`` process for tests and benchmarks, started and stopped by pid.

Configuration travels by environment (``INDEXGATE_*``), as an operator would run it; the
caller asks it with any HTTP client it likes (tests use plain httpx).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

from indexgate.settings import Settings
from indexgate.testing.processes import PROJECT_ROOT, settings_env, stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(settings: Settings, port: int, env: dict[str, str] | None = None, **extra_env: str) -> subprocess.Popen:
    """``indexgate serve`` on 127.0.0.1:``port``; its output goes to ``<data_dir>/api-<port>.log``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "indexgate.cli", "serve", "--port", str(port)]
    with open(settings.data_dir / f"api-{port}.log", "w") as log:
        return subprocess.Popen(argv, env=(env if env is not None else settings_env(settings, **extra_env)),
                                stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)


def wait_answering(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Block until ``/healthz`` answers (the process is up; ready or not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"indexgate serve did not come up on {url} (exit {proc.poll()})")
        time.sleep(0.05)


@contextmanager
def api_process(settings: Settings, env: dict[str, str] | None = None, **extra_env: str) -> Iterator[str]:
    """A running ``indexgate serve``; yields its base URL, stops it (SIGTERM) afterwards."""
    port = free_port()
    proc = start_api(settings, port, env=env, **extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, proc)
        yield url
    finally:
        stop(proc)


def log_of(settings: Settings) -> str:
    return "\n".join(path.read_text()[-2000:] for path in sorted(settings.data_dir.glob("api-*.log")))
