"""Fail closed, on every entry point, for every misconfiguration of issue 9 - real processes.

| misconfiguration                      | CLI ``check`` | worker | beat | ``serve``        | library                |
|---------------------------------------|---------------|--------|------|------------------|------------------------|
| store file / its folder missing       | exit 4        | (1)    | (2)  | 503, readyz 503  | ``StoreNotInitialized`` |
| store never initialized (other file)  | exit 4        | (1)    | (2)  | 503, readyz 503  | ``StoreNotInitialized`` |
| unknown ``INDEXGATE_*`` (a typo)       | exit 6        | exits  | exits| exit 6           | ``ConfigError``        |
| ``CELERY_BROKER_URL`` / ``-b`` disagree | exit 6        | exits  | exits| exit 6           | ``ConfigError``        |

(1) a worker's start *is* an initialization (the issue's rule: ``indexgate setup`` or a
worker's start), so a worker given a new path creates and initializes that store - tested
in ``test_a_worker_start_initializes_the_store``; (2) beat only reads and writes its lease
there (its sweeps run in the workers): on a missing store it sends nothing and creates
nothing.

Every refusal names what is wrong; none answers "allowed"; no read creates a file.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from indexgate.errors import ConfigError, StoreNotInitialized
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store, open_store
from indexgate.testing import mongomock_store  # noqa: F401 (registers mongomock://, a test-only scheme)
from indexgate.testing.api import free_port, wait_answering
from indexgate.testing.processes import PROJECT_ROOT, stop

TIMEOUT_S = 90


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXGATE_", "CELERY_"))}
    return env | {"INDEXGATE_DATA_DIR": str(tmp_path / "data")} | extra


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          cwd=PROJECT_ROOT)


CHECK = ["-m", "indexgate.cli", "check", "main", "object_type", "--json"]
WORKER = ["-m", "celery", "-A", "indexgate.workers", "worker", "-P", "solo", "--without-mingle", "--without-gossip"]
BEAT = ["-m", "celery", "-A", "indexgate.workers", "beat"]


# --- the store: missing or never initialized ---------------------------------------------


def missing_dir(tmp_path: Path) -> Path:
    return tmp_path / "nonexistent" / "dir" / "x.db"


def missing_file(tmp_path: Path) -> Path:
    (tmp_path / "empty-dir").mkdir()
    return tmp_path / "empty-dir" / "x.db"


def foreign_file(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    return path


STORES = {"missing folder": missing_dir, "missing file": missing_file, "never initialized": foreign_file}


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))
    finally:
        conn.close()


def _untouched(path: Path, existed: bool, parent_existed: bool) -> None:
    """Nothing was created, and a foreign file was not turned into a store."""
    if existed:
        assert _tables(path) == ["unrelated"], "a read initialized a foreign file"
    else:
        assert not path.exists(), "a read created the store"
    assert path.parent.exists() == parent_existed, "a read created the store's folder"


@pytest.mark.parametrize("kind", list(STORES))
def test_cli_check_on_a_missing_or_uninitialized_store_is_unknown(tmp_path: Path, kind: str) -> None:
    path = STORES[kind](tmp_path)
    existed, parent_existed = path.exists(), path.parent.exists()
    result = run(CHECK, base_env(tmp_path, INDEXGATE_STORE_URL=f"sqlite:///{path}"))
    assert result.returncode == 4, result.stderr
    assert "store unreachable" in result.stderr and str(path) in result.stderr
    assert "allowed" not in result.stdout.lower()
    _untouched(path, existed, parent_existed)


@pytest.mark.parametrize("kind", list(STORES))
def test_library_refuses_a_missing_or_uninitialized_store(tmp_path: Path, kind: str) -> None:
    path = STORES[kind](tmp_path)
    existed, parent_existed = path.exists(), path.parent.exists()
    settings = Settings(data_dir=tmp_path / "data", store_url=f"sqlite:///{path}")
    with pytest.raises(StoreNotInitialized, match=str(path)):
        Service.from_settings(settings).check("main", "object_type")
    store = open_store(settings)
    for verb in (lambda: store.load("main"), store.ping, store.branches_with_locks, lambda: store.audit(10)):
        with pytest.raises(StoreNotInitialized):
            verb()
    _untouched(path, existed, parent_existed)


def _locked_service(path: Path, branch: str = "main") -> Service:
    settings = Settings(data_dir=path.parent, store_url=f"sqlite:///{path}")
    initialize_store(settings)
    service = Service.from_settings(settings)
    service.acquire(branch, AcquireRequest(job_id=f"job-{branch}", holder="h", resource_types=("object_type",),
                                           reason="r"), Origin(actor="test"))
    return service


def _remove_store(path: Path) -> None:
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        (path.parent / name).unlink(missing_ok=True)


def test_a_store_file_deleted_under_an_open_connection_is_not_initialized(tmp_path: Path) -> None:
    """The connection still reads the deleted inode; the adapter must notice, not answer
    "allowed" from a store that no longer exists at its URL."""
    path = tmp_path / "store" / "x.db"
    service = _locked_service(path)
    assert not service.check("main", "object_type").allowed and service.check("other", "object_type").allowed
    _remove_store(path)
    for verb in (lambda: service.check("other", "object_type"), lambda: service.check("main", "object_type"),
                 service.list_locks, service.store.ping):
        with pytest.raises(StoreNotInitialized, match=str(path)):
            verb()
    assert not path.exists(), "a read re-created the deleted store"


def test_a_store_file_replaced_under_an_open_connection_is_checked_anew(tmp_path: Path) -> None:
    """Replaced by a foreign file: refused. Replaced by another indexgate store (a restore):
    answered from that one, the file the URL names now."""
    path = tmp_path / "store" / "x.db"
    service = _locked_service(path)
    assert service.check("other", "object_type").allowed
    _remove_store(path)
    os.replace(foreign_file(tmp_path), path)
    with pytest.raises(StoreNotInitialized, match="not an initialized indexgate store"):
        service.check("other", "object_type")
    restored = tmp_path / "restore" / "x.db"
    _locked_service(restored, branch="other").store.close()
    _remove_store(path)
    os.replace(restored, path)
    decision = service.check("other", "object_type")
    assert not decision.allowed and "job-other" in decision.message


def test_library_refuses_an_uninitialized_mongo_database() -> None:
    """mongomock (no MongoDB server on this machine): a database without indexgate's meta
    document is refused, and the read creates no collection."""
    store = open_store(Settings(store_url="mongomock://localhost/never_set_up"))
    with pytest.raises(StoreNotInitialized, match="never_set_up"):
        store.load("main")
    assert store._raw_db().list_collection_names() == []


@pytest.mark.parametrize("kind", list(STORES))
def test_serve_on_a_missing_or_uninitialized_store_answers_503(tmp_path: Path, kind: str) -> None:
    path = STORES[kind](tmp_path)
    existed, parent_existed = path.exists(), path.parent.exists()
    port = free_port()
    env = base_env(tmp_path, INDEXGATE_STORE_URL=f"sqlite:///{path}")
    proc = subprocess.Popen([sys.executable, "-m", "indexgate.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, proc)
        answer = httpx.get(f"{url}/v1/check", params={"branch": "main", "resource_type": "object_type"}, timeout=10)
        assert answer.status_code == 503 and answer.json()["error"] == "store_not_initialized"
        assert "allowed" not in answer.json() and str(path) in answer.json()["detail"]
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    finally:
        stop(proc)
    _untouched(path, existed, parent_existed)


def test_beat_never_creates_the_store(tmp_path: Path) -> None:
    path = missing_dir(tmp_path)
    env = base_env(tmp_path, INDEXGATE_STORE_URL=f"sqlite:///{path}")
    proc = subprocess.Popen([sys.executable, *BEAT, "-s", str(tmp_path / "schedule")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=PROJECT_ROOT)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=4)  # beat runs (on the embedded broker) ...
    finally:
        stop(proc)
    assert not path.exists() and not path.parent.exists()  # ... and never touched the store


@pytest.mark.slow
def test_a_worker_start_initializes_the_store(tmp_path: Path) -> None:
    """The documented other initializer: after a worker has started, the store exists and a
    check answers from it."""
    path = tmp_path / "fresh" / "x.db"
    env = base_env(tmp_path, INDEXGATE_STORE_URL=f"sqlite:///{path}")
    proc = subprocess.Popen([sys.executable, *WORKER], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=PROJECT_ROOT)
    try:
        from indexgate.clock import poll

        assert poll(lambda: path.exists() and "meta" in _tables(path), 60), "the worker did not initialize the store"
    finally:
        stop(proc)
    assert run(CHECK, env).returncode == 0


# --- settings: a typo, a second broker -----------------------------------------------------

TYPO = {"INDEXGATE_STORE_ULR": "sqlite:////tmp/elsewhere.db"}
SECOND_BROKER = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/9"}
REFUSALS = {
    "typo": (TYPO, "INDEXGATE_STORE_ULR (did you mean INDEXGATE_STORE_URL?)"),
    "CELERY_BROKER_URL": (SECOND_BROKER, "the broker is set twice and the two disagree"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("entry", ["check", "worker", "beat", "serve"])
def test_every_entry_point_refuses_a_bad_environment(tmp_path: Path, entry: str, case: str) -> None:
    extra, message = REFUSALS[case]
    argv = {"check": CHECK, "worker": WORKER, "beat": BEAT,
            "serve": ["-m", "indexgate.cli", "serve", "--port", str(free_port())]}[entry]
    result = run(argv, base_env(tmp_path, **extra))
    assert result.returncode != 0
    if entry in ("check", "serve"):
        assert result.returncode == 6  # the CLI's configuration error
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "allowed" not in result.stdout.lower()
    assert not (tmp_path / "data").exists(), "a refused start created its data folder"


@pytest.mark.parametrize("entry", ["worker", "beat"])
def test_celery_dash_b_that_disagrees_stops_worker_and_beat(tmp_path: Path, entry: str) -> None:
    argv = (WORKER if entry == "worker" else BEAT)[:4] + ["-b", "redis://127.0.0.1:6379/9"] + \
        (WORKER if entry == "worker" else BEAT)[4:]
    result = run(argv, base_env(tmp_path))
    assert result.returncode != 0 and "the broker is set twice and the two disagree" in result.stderr


def test_celery_broker_url_that_agrees_is_accepted(tmp_path: Path) -> None:
    env = base_env(tmp_path, INDEXGATE_BROKER_URL="redis://127.0.0.1:6379/9", CELERY_BROKER_URL="redis://127.0.0.1:6379/9")
    assert "set twice" not in run(CHECK, env).stderr


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_library_refuses_a_bad_environment(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    extra, message = REFUSALS[case]
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message.split(" (")[0]):
        Settings.from_env()


def test_the_api_factory_refuses_a_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from indexgate.api import create_api

    monkeypatch.setenv("INDEXGATE_API_TOKN", "x")
    with pytest.raises(ConfigError, match="did you mean INDEXGATE_API_TOKEN"):
        create_api()


def test_serve_refuses_an_empty_token(tmp_path: Path) -> None:
    """``INDEXGATE_API_TOKEN=`` (an unset variable in a compose file) must not mean "no auth"."""
    result = run(["-m", "indexgate.cli", "serve", "--port", str(free_port())], base_env(tmp_path, INDEXGATE_API_TOKEN=""))
    assert result.returncode == 6 and "INDEXGATE_API_TOKEN" in result.stderr, result.stderr
