"""The CLI fails like a tool: broker down, store down, bad arguments - one line on stderr,
the documented exit code (README: 2 usage, 4 store, 5 broker), never a traceback.

Each case runs the real ``indexgate`` command as a subprocess, as a script would. A broker
that is down is a port on 127.0.0.1 where nothing listens.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from indexgate.cli_common import EXIT_BAD_REQUEST, EXIT_BROKER_UNAVAILABLE, EXIT_STORE_UNAVAILABLE
from indexgate.settings import Settings
from indexgate.store import initialize_store
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
], ids=["data-not-json", "data-not-object", "bad-mode", "missing-data", "missing-argument", "bad-number",
        "unknown-command", "unknown-option"])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: list[str]) -> None:
    assert_one_line(run(tmp_path, *args), EXIT_BAD_REQUEST, *words)


def test_help_and_version_still_exit_0(tmp_path: Path) -> None:
    assert run(tmp_path, "--help").returncode == 0
    assert run(tmp_path, "--version").returncode == 0
    assert run(tmp_path, "intake", "--help").stdout.startswith("Usage:")
