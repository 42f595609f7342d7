"""The HTTP API against a running ``indexgate serve`` process, asked with plain httpx.

Every test starts the real command as a subprocess (configured by environment, as an
operator would) on a store seeded in this process through the service, and checks the
contract: allowed, denied with holder/progress/ETA, whole-branch locks, the switch blackout's
``retry_after_s``, 503 whenever the store cannot answer (unreachable, locked, not
initialized, hung past the deadline) - never "allowed" -, 401 without the token, 422 on bad
parameters, and ``/readyz`` following the store down and back up.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from indexgate.events.catalog import apply
from indexgate.events.decode import IncomingEvent
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin
from indexgate.schemas.records import LockKind
from indexgate.service import Service
from indexgate.testing.api import api_process, log_of
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import settings_env
from tests.conftest import REDIS_URL, isolated_settings, require_reachable

CHECK_FIELDS = {"allowed", "branch", "resource_type", "action", "message", "blocking_lock", "retry_after_s", "version"}


def send(service: Service, type_: str, data: dict, event_id: str) -> None:
    outcome = apply(service, IncomingEvent(id=event_id, source="funnel", type=type_, time=None, data=data))
    assert outcome.status in ("applied", "ignored"), outcome


def start(service: Service, job: str, types: list[str], branch: str = "main", **extra) -> None:
    data = {"job_id": job, "branch": branch, "resource_types": types, "service_name": "funnel-7",
            "heartbeat_interval_s": 60} | extra
    send(service, "com.oms.indexing.started", data, f"start-{job}")


@pytest.fixture
def seeded(tmp_path: Path):
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    service = Service.from_settings(settings)
    yield settings, service
    service.store.close()
    delete_run_names(settings)


def get(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.get(f"{url}{path}", timeout=10, **kwargs)


def check(url: str, branch: str = "main", resource_type: str | None = None, **kwargs) -> httpx.Response:
    params = {"branch": branch} | ({"resource_type": resource_type} if resource_type else {})
    return get(url, "/v1/check", params=params | kwargs.pop("params", {}), **kwargs)


def test_allowed_denied_with_holder_progress_eta_and_reads(seeded) -> None:
    settings, service = seeded
    start(service, "job-1", ["object_type"])
    send(service, "com.oms.indexing.progress", {"job_id": "job-1", "progress_percent": 40,
                                                 "estimated_remaining_s": 300}, "progress-1")
    with api_process(settings) as url:
        free = check(url, "main", "link_type")
        assert free.status_code == 200 and set(free.json()) == CHECK_FIELDS
        assert free.json()["allowed"] is True and free.json()["blocking_lock"] is None
        assert free.json()["retry_after_s"] is None and free.json()["version"] >= 2

        denied = check(url, "main", "object_type").json()
        assert denied["allowed"] is False and set(denied) == CHECK_FIELDS
        lock = denied["blocking_lock"]
        assert lock["holder"] == "funnel-7" and lock["job_id"] == "job-1" and lock["kind"] == "INDEXING"
        assert lock["progress_percent"] == 40 and lock["estimated_remaining_s"] == 300
        assert lock["health"] == "healthy" and lock["in_force"] is True
        assert lock["heartbeat_deadline"] and lock["expires_at"]
        assert 200 < denied["retry_after_s"] <= 300  # the ETA, counted from the last heartbeat
        assert "funnel-7" in denied["message"] and "progress 40%" in denied["message"]
        assert check(url, "main", "object_type", params={"action": "read"}).json()["allowed"] is True

        listed = get(url, "/v1/locks").json()
        assert [item["job_id"] for item in listed] == ["job-1"]
        assert get(url, "/v1/locks", params={"branch": "other"}).json() == []
        one = get(url, f"/v1/locks/{lock['lock_id']}").json()
        assert one["lock_id"] == lock["lock_id"] and one["health"] == "healthy"
        missing = get(url, "/v1/locks/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert get(url, "/v1/locks/summary").json() == {"healthy": 1, "warning": 0, "critical": 0, "total": 1}
        trail = get(url, "/v1/audit", params={"branch": "main", "limit": 5}).json()
        assert trail[0]["kind"] == "acquired" and trail[0]["job_id"] == "job-1"
        assert get(url, "/v1/deadletters").json() == []
        assert get(url, "/v1/index", params={"branch": "main", "index_type": "SEARCH_INDEX"}).json() == {
            "branch": "main", "index_type": "SEARCH_INDEX", "active": None}


def test_whole_branch_locks(seeded) -> None:
    settings, service = seeded
    start(service, "wide", [], branch="wide")  # no resource types: the whole branch
    start(service, "typed", ["object_type"], branch="typed")
    with api_process(settings) as url:
        for resource_type in ("object_type", "link_type", None, "*"):
            answer = check(url, "wide", resource_type).json()
            assert answer["allowed"] is False and answer["blocking_lock"]["resource_type"] is None, resource_type
        whole = check(url, "typed").json()  # resource_type omitted: the whole branch, blocked by any lock
        assert whole["allowed"] is False and whole["resource_type"] is None
        assert whole["blocking_lock"]["resource_type"] == "object_type"
        assert check(url, "typed", "link_type").json()["allowed"] is True


def test_switch_blackout_denies_with_a_short_retry_after(seeded) -> None:
    settings, service = seeded
    request = AcquireRequest(job_id="switch-1", holder="indexgate-switch", resource_types=("object_type",),
                             reason="switch", ttl_s=60, heartbeat_interval_s=2, kind=LockKind.SWITCH)
    assert service.acquire("main", request, Origin(actor="test")).status == "applied"
    with api_process(settings) as url:
        answer = check(url, "main", "object_type").json()
    assert answer["allowed"] is False and answer["blocking_lock"]["kind"] == "SWITCH"
    assert 0 < answer["retry_after_s"] <= 0.05


def test_bad_parameters_are_422(seeded) -> None:
    settings, _ = seeded
    with api_process(settings) as url:
        for path, params in [("/v1/check", {}), ("/v1/check", {"branch": ""}),
                             ("/v1/check", {"branch": "main", "resource_type": ""}),
                             ("/v1/check", {"branch": " "}), ("/v1/check", {"branch": "main", "resource_type": " "}),
                             ("/v1/check", {"branch": "main", "action": "\t"}),
                             ("/v1/check", {"branch": "x" * 600}), ("/v1/audit", {"limit": 0}),
                             ("/v1/audit", {"limit": "many"}), ("/v1/index", {"branch": "main"})]:
            response = get(url, path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert "allowed" not in response.json()


def test_uninitialized_store_is_503_creates_nothing_and_recovers_after_setup(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path / "data", REDIS_URL, initialize=False)
    db = Path(settings.resolved_store_url[len("sqlite:///"):])
    try:
        with api_process(settings) as url:
            answer = check(url, "main", "object_type")
            assert answer.status_code == 503 and answer.json()["error"] == "store_not_initialized"
            assert str(db) in answer.json()["detail"] and "allowed" not in answer.json()
            ready = get(url, "/readyz")
            assert ready.status_code == 503 and ready.json()["store"]["ok"] is False
            assert not db.exists(), "a read must create nothing"
            setup = subprocess.run([sys.executable, "-m", "indexgate.cli", "setup"], env=settings_env(settings),
                                   capture_output=True, text=True, timeout=60)
            assert setup.returncode == 0, setup.stderr
            assert check(url, "main", "object_type").json()["allowed"] is True
            assert _eventually_ready(url).status_code == 200
    finally:
        delete_run_names(settings)


def test_unreachable_and_hung_stores_are_503_within_the_deadline(tmp_path: Path) -> None:
    """A MongoDB URL nobody answers at (connection refused), and one whose 'server' accepts
    the connection and never says a word: both 503, neither hangs the request."""
    require_reachable(REDIS_URL)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        try:
            while True:
                accepted.append(silent.accept()[0])
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    try:
        for port in (refused_port, silent.getsockname()[1]):
            settings = isolated_settings(tmp_path / str(port), REDIS_URL, initialize=False, api_store_timeout_s=0.5)
            settings = settings.model_copy(update={"store_url": f"mongodb://127.0.0.1:{port}/indexgate"})
            try:
                with api_process(settings) as url:
                    for path in ("/v1/check?branch=main&resource_type=object_type", "/v1/locks", "/readyz"):
                        response = get(url, path)  # httpx waits 10 s: a hang would fail here
                        assert response.status_code == 503, (port, path, response.text)
                        assert "allowed" not in response.json()
                    assert check(url).json()["error"] in ("store_timeout", "store_unavailable")
            finally:
                delete_run_names(settings)
    finally:
        silent.close()
        for conn in accepted:
            conn.close()


def test_readyz_follows_a_locked_store_down_and_back(seeded) -> None:
    """Another process holds the SQLite file's exclusive lock (here in rollback-journal mode,
    where a lock blocks readers too): checks are 503 within the deadline, /readyz is 503 and
    says why; once the lock is released both recover, with no restart."""
    settings, service = seeded
    service.store.close()
    db = settings.resolved_store_url[len("sqlite:///"):]
    sqlite3.connect(db).execute("PRAGMA journal_mode=DELETE").fetchone()
    with api_process(settings, api_store_timeout_s="0.5") as url:
        assert _eventually_ready(url).status_code == 200
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            down = get(url, "/readyz")
            assert down.status_code == 503 and down.json()["store"]["ok"] is False
            assert "locked" in down.json()["store"]["detail"] or "within" in down.json()["store"]["detail"]
            hung = check(url, "main", "object_type")
            assert hung.status_code == 503 and "allowed" not in hung.json()
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert get(url, "/readyz").status_code == 200
        assert check(url, "main", "object_type").json()["allowed"] is True


def test_token_is_required_everywhere_but_health(seeded) -> None:
    settings, _ = seeded
    with api_process(settings, api_token="s3cret") as url:
        schema = get(url, "/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        paths = [p.replace("{lock_id}", "x").replace("{shadow_id}", "x") for p in schema["paths"]]
        protected = [p for p in paths if p not in ("/healthz", "/readyz")] + ["/openapi.json"]
        query = {"branch": "main", "index_type": "SEARCH_INDEX"}
        for path in protected:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = get(url, path, params=query, headers=headers)
                assert response.status_code == 401, (path, headers, response.status_code)
                assert response.json()["error"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"
        assert get(url, "/healthz").status_code == 200
        assert _eventually_ready(url).status_code == 200
        ok = check(url, "main", "object_type", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["allowed"] is True


def test_binds_loopback_by_default(seeded) -> None:
    settings, _ = seeded
    with api_process(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        assert _listening_addresses(port) == ["127.0.0.1"]
        assert "http://127.0.0.1:" in log_of(settings)


def _listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a socket listening on ``port``, from /proc/net/tcp (state 0A)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        hex_addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1]))
    return found


def _eventually_ready(url: str, timeout_s: float = 20) -> httpx.Response:
    from indexgate.clock import poll

    answer = poll(lambda: (r := get(url, "/readyz")).status_code == 200 and r, timeout_s, every_s=0.1)
    return answer or get(url, "/readyz")
