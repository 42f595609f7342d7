"""The CLI fails like a tool: broker down, store down, bad arguments, settings it cannot
use, an address it cannot listen on - one line on stderr, the documented exit code (README:
1 failure, 2 usage, 4 store, 5 broker, 6 configuration), never a traceback.

Each case runs the real ``indexgate`` command as a subprocess, as a script would. A broker
that is down is a port on 127.0.0.1 where nothing listens; an address in use is a socket
this test holds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from indexgate.cli_common import (
    EXIT_BAD_REQUEST,
    EXIT_BROKER_UNAVAILABLE,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_STORE_UNAVAILABLE,
)
from indexgate.errors import ServeError
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.testing.api import free_port
from indexgate.testing.processes import PROJECT_ROOT


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # released on close: nothing listens there


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("INDEXGATE_")}
    base |= {"INDEXGATE_DATA_DIR": str(tmp_path)} | env
    return subprocess.run([sys.executable, "-m", "indexgate.cli", *args], env=base, capture_output=True, text=True,
                          timeout=60, cwd=PROJECT_ROOT)


def assert_one_line(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[0] for word in words), lines[0]


DOWN = {"redis": "redis://127.0.0.1:{port}/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:{port}//"}
EVENT = ["publish", "com.oms.indexing.started", "--data", '{"job_id": "j", "branch": "b"}']


@pytest.mark.parametrize("broker", DOWN)
@pytest.mark.parametrize("args", [EVENT, ["intake", "status"], ["intake", "status", "--json"], ["setup"]],
                         ids=["publish", "intake-status", "intake-status-json", "setup"])
def test_broker_down_is_one_line_and_exit_5(tmp_path: Path, broker: str, args: list[str]) -> None:
    initialize_store(Settings(data_dir=tmp_path))
    port = closed_port()
    done = run(tmp_path, *args, INDEXGATE_BROKER_URL=DOWN[broker].format(port=port))
    assert_one_line(done, EXIT_BROKER_UNAVAILABLE, "broker unreachable", f"127.0.0.1:{port}")
    assert "guest:guest" not in done.stderr  # the password is never printed


def test_setup_initializes_the_store_before_saying_the_broker_is_down(tmp_path: Path) -> None:
    done = run(tmp_path, "setup", INDEXGATE_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0")
    assert done.returncode == EXIT_BROKER_UNAVAILABLE and "initialized" in done.stdout
    assert (tmp_path / "indexgate.db").exists()


@pytest.mark.parametrize("args", [["setup"], ["check", "main", "object_type"], ["locks", "list"],
                                  ["deadletters", "list", "--json"]], ids=lambda a: "-".join(a))
def test_store_down_is_one_line_and_exit_4(tmp_path: Path, args: list[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    done = run(tmp_path, *args, INDEXGATE_STORE_URL=f"sqlite:///{blocker}/indexgate.db")
    assert_one_line(done, EXIT_STORE_UNAVAILABLE, "store unreachable")


@pytest.mark.parametrize("args, words", [
    (["publish", "com.oms.indexing.started", "--data", "{oops"], ["--data", "not JSON"]),
    (["publish", "com.oms.indexing.started", "--data", "[1, 2]"], ["--data", "must be a JSON object"]),
    (["publish", "com.oms.indexing.started", "--data", "{}", "--mode", "sideways"], ["--mode", "sideways"]),
    (["publish", "com.oms.indexing.started"], ["Missing option", "--data"]),
    (["check", "main"], ["Missing argument", "RESOURCE_TYPE", "indexgate check --help"]),
    (["locks", "extend", "L1", "--by-s", "soon", "--reason", "x"], ["--by-s", "soon"]),
    (["lock", "list"], ["No such command", "lock"]),
    (["locks", "list", "--colour"], ["No such option", "--colour"]),
    (["audit", "--limit", "-1"], ["--limit", "-1"]),
    (["audit", "--limit", "0"], ["--limit", "0"]),
    (["audit", "--limit", "1001"], ["--limit", "1001"]),  # GET /v1/audit's bound too
    (["deadletters", "list", "--limit", "-1"], ["--limit", "-1"]),
    (["serve", "--port", "99999"], ["--port", "99999"]),
    (["serve", "--port", "0"], ["--port", "0"]),
    (["up", "--concurrency", "0"], ["--concurrency", "0"]),
    (["check", "", "object_type"], ["BRANCH", "must not be empty"]),  # an unset $BRANCH is no branch
    (["check", "main", ""], ["RESOURCE_TYPE", "must not be empty"]),
    (["check", "main", "object_type", "--action", ""], ["--action", "must not be empty"]),
    (["check", "b" * 513, "object_type"], ["BRANCH", "over the limit of 512"]),
    (["locks", "list", "--branch", ""], ["--branch", "must not be empty"]),
    (["locks", "release", "L1", "--reason", " "], ["--reason", "must not be empty"]),
    (["publish", "", "--data", "{}"], ["EVENT_TYPE", "must not be empty"]),
    (["publish", "com.oms.indexing.started", "--data", "{}", "--source", ""], ["--source", "must not be empty"]),
    (["publish", "com.oms.indexing.started", "--data", "{}", "--id", ""], ["--id", "must not be empty"]),
    (["shadows", "cancel", "s1", "--reason", ""], ["--reason", "must not be empty"]),
    (["index", "current", "", "search"], ["BRANCH", "must not be empty"]),
], ids=["data-not-json", "data-not-object", "bad-mode", "missing-data", "missing-argument", "bad-number",
        "unknown-command", "unknown-option", "audit-limit-negative", "audit-limit-zero", "audit-limit-over",
        "deadletters-limit-negative", "port-over", "port-zero", "concurrency-zero", "empty-branch",
        "empty-resource-type", "empty-action", "long-branch", "empty-branch-option", "blank-reason",
        "empty-event-type", "empty-source", "empty-id", "empty-shadow-reason", "empty-index-branch"])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: list[str]) -> None:
    assert_one_line(run(tmp_path, *args), EXIT_BAD_REQUEST, *words)


def test_help_and_version_still_exit_0(tmp_path: Path) -> None:
    assert run(tmp_path, "--help").returncode == 0
    assert run(tmp_path, "--version").returncode == 0
    assert run(tmp_path, "intake", "--help").stdout.startswith("Usage:")


@pytest.mark.parametrize("by_s", ["nan", "inf", "-inf", "1e308", "0", "-5", "315360001"])
def test_an_extension_that_is_not_a_finite_positive_number_is_refused(tmp_path: Path, by_s: str) -> None:
    """On a live lock (so nothing else refuses first): exit 2 naming ``--by-s``, lock untouched."""
    settings = Settings(data_dir=tmp_path)
    initialize_store(settings)
    service = Service.from_settings(settings)
    service.acquire("main", AcquireRequest(job_id="j1", holder="h", resource_types=("object_type",), reason="r"),
                    Origin(actor="test"))
    [before] = service.list_locks("main")
    done = run(tmp_path, "locks", "extend", before.lock.lock_id, "--by-s", by_s, "--reason", "longer")
    assert_one_line(done, EXIT_BAD_REQUEST, "--by-s", by_s)
    assert service.list_locks("main")[0].lock.expires_at == before.lock.expires_at
    assert run(tmp_path, "locks", "extend", before.lock.lock_id, "--by-s", "60", "--reason", "longer").returncode == 0


STORE_URLS = {"unknown-scheme": "foo://somewhere/x", "mongomock": "mongomock://localhost/x",
              "sqlite-without-path": "sqlite://"}


@pytest.mark.parametrize("url", STORE_URLS.values(), ids=STORE_URLS.keys())
@pytest.mark.parametrize("args", [["check", "main", "object_type"], ["locks", "list"], ["audit"], ["setup"],
                                  ["deadletters", "list"], ["shadows", "list"], ["index", "current", "main", "x"],
                                  ["serve", "--port", "{port}"]], ids=lambda a: "-".join(a[:2]))
def test_a_store_url_that_cannot_be_used_is_a_configuration_error_everywhere(tmp_path: Path, args: list[str],
                                                                               url: str) -> None:
    """Exit 6 on every command, ``serve`` included; ``mongomock://`` is a test scheme that only
    ``indexgate.testing`` registers, so production refuses it like any unknown one."""
    done = run(tmp_path, *[a.format(port=free_port()) for a in args], INDEXGATE_STORE_URL=url)
    assert_one_line(done, EXIT_CONFIG, "configuration error", "store URL")


def test_serve_on_an_address_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Not uvicorn's log line and its exit 3, which would read as "denied"."""
    initialize_store(Settings(data_dir=tmp_path))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run(tmp_path, "serve", "--port", str(port))
    assert_one_line(done, EXIT_FAILURE, "cannot listen on", f"127.0.0.1:{port}", "in use")


def test_serve_on_a_host_that_is_not_local_is_one_line_and_exit_1(tmp_path: Path) -> None:
    initialize_store(Settings(data_dir=tmp_path))
    done = run(tmp_path, "serve", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1: never ours
    assert_one_line(done, EXIT_FAILURE, "cannot listen on", "192.0.2.1")


def test_a_startup_uvicorn_gives_up_on_is_a_serve_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn ends a failed startup with ``sys.exit(3)``; ``run`` turns it into ``ServeError``
    (CLI exit 1) instead of letting 3, the CLI's "denied", escape."""
    from contextlib import asynccontextmanager

    from indexgate.api import serve

    real = serve.create_api

    def with_a_broken_lifespan(settings):
        app = real(settings)

        @asynccontextmanager
        async def broken(_app):
            raise RuntimeError("the lifespan broke")
            yield

        app.router.lifespan_context = broken
        return app

    settings = Settings(data_dir=tmp_path)
    initialize_store(settings)
    monkeypatch.setattr(serve, "create_api", with_a_broken_lifespan)
    port = free_port()
    with pytest.raises(ServeError, match=f"127.0.0.1:{port} did not start"):
        serve.run(settings, "127.0.0.1", port)
    with socket.socket() as again:  # the socket was closed: the port is free again
        again.bind(("127.0.0.1", port))
