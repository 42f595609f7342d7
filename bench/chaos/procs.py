"""Real ``celery worker`` processes for chaos runs, started, killed and accounted by pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from indexgate.settings import Settings
from indexgate.testing.processes import answering, start_worker

# --- worker processes ------------------------------------------------------------------


class Workers:
    """Real ``celery worker`` processes started by pid, each with its own log file, and a
    record of which processes *we* killed (every other death is a crash)."""

    def __init__(self, settings: Settings, app_module: str = "indexgate.workers", **extra_env: str) -> None:
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
        from indexgate.workers.app import create_app

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

    def term_whole(self, proc: subprocess.Popen, timeout_s: float = 120,
                   while_waiting: Callable[[], None] | None = None) -> tuple[int, float]:
        """SIGTERM a worker (what ``docker stop`` and Kubernetes send) and wait until it
        exits: (exit code, seconds from the signal to the exit). ``while_waiting`` is called
        between polls (the funnel goes on publishing). Past ``timeout_s`` it is SIGKILLed
        and counted as killed, so the row shows it."""
        kids = children(proc.pid)
        self.stopped.add(proc.pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - started < timeout_s:
            if while_waiting:
                while_waiting()
            time.sleep(0.01)
        if proc.poll() is None:
            self.killed.add(proc.pid)
            proc.kill()
        code = proc.wait()
        seconds = time.monotonic() - started
        for pid in kids:
            reap_orphan(pid)
        return code, seconds

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
