"""Brokers for chaos runs: a private ``redis-server`` or RabbitMQ node per scenario (the
shared brokers are never restarted), the shared one by name, and what a run's broker holds
(settling, the delivery settings a row rests on, where lost events are)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from indexgate.events.brokers import redis_stream, transport_for
from indexgate.settings import Settings
from indexgate.testing.broker_names import waiting_count

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
    from indexgate.workers.app import create_app

    app = create_app(settings)
    conf = app.conf
    task = app.tasks["indexgate.intake"]
    parts = [f"task_acks_late={conf.task_acks_late}", f"task_reject_on_worker_lost={conf.task_reject_on_worker_lost}",
             f"worker_prefetch_multiplier={conf.worker_prefetch_multiplier}",
             f"IndexgateTask.acks_late={task.acks_late}", f"reject_on_worker_lost={task.reject_on_worker_lost}",
             f"max_retries={task.max_retries}", f"broker_transport_options={dict(conf.broker_transport_options)}"]
    note = transport_for(settings).delivery_note()
    if note:
        parts.append(note)
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
    ready = {name: [text(m) for key in redis_stream.kombu_lists(name) for m in client.lrange(key, 0, -1)]
             for name in (settings.intake_queue, settings.task_queue)}
    stream = redis_stream.stream_key(settings)
    ready[stream] = [text(fields[b"kombu"]) if b"kombu" in fields else b" ".join(fields.values()).decode("utf-8", "replace")
                     for _ref, fields in client.xrange(stream)]
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
    """A RabbitMQ node of our own (name, ports, cookie, data in a temp dir; no plugins, or the
    management plugin on a port of its own), so ``rabbitmqctl stop_app`` / ``start_app`` never
    touch the shared broker on 5672."""

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"

    def __init__(self, folder: Path, management: bool = False) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.node = f"chaos{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        # the management plugin's HTTP API on a port of its own (Flower's Broker page reads it)
        self.management_port = free_port() if management else None

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
        plugins = "[rabbitmq_management]" if self.management_port else "[]"
        (self.folder / "enabled_plugins").write_text(f"{plugins}.\n")
        (self.folder / "advanced.config").write_text("[].\n")
        (self.folder / "env.conf").write_text("")
        conf = f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        if self.management_port:
            conf += f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        (self.folder / "rabbitmq.conf").write_text(conf)
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
