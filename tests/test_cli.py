"""The operator CLI: exit codes, stable ``--json`` fields, and the real processes end to end.

In-process tests drive ``indexgate`` with click's runner over a SQLite store seeded through
the service. The end-to-end tests run the real commands as subprocesses: ``celery -A
workers worker`` consuming what ``indexgate publish`` sent over Redis, and ``indexgate
check`` treating a lock as free once its heartbeat deadline has passed, with no sweep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexgate.events.catalog import apply
from indexgate.events.decode import IncomingEvent
from indexgate.cli import main
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.schemas.records import AuditKind
from tests.conftest import (
    REDIS_URL,
    isolated_settings,
    require_reachable,
    settings_env,
    worker_processes,
)
from indexgate.testing.broker_names import delete_run_names

LOCK_FIELDS = {
    "lock_id", "branch", "resource_type", "holder", "job_id", "reason", "kind", "fencing_token", "acquired_at",
    "expires_at", "auto_release", "heartbeat_interval_s", "last_heartbeat", "progress_percent",
    "estimated_remaining_s", "holder_status", "last_health", "health", "in_force", "death_reason",
    "heartbeat_deadline", "seconds_since_heartbeat", "clock", "clock_skew_s", "clock_skew_beyond_bound",
}


def start(service: Service, job: str, types: list[str], branch: str = "main", **extra) -> None:
    data = {"job_id": job, "branch": branch, "resource_types": types, "service_name": "funnel"} | extra
    apply(service, IncomingEvent(id=f"start-{job}", source="funnel", type="com.oms.indexing.started",
                                 time=None, data=data))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = Settings(data_dir=tmp_path)
    monkeypatch.setenv("INDEXGATE_DATA_DIR", str(tmp_path))
    initialize_store(settings)
    service = Service.from_settings(settings)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return service, run


def test_check_exit_codes_and_json(cli) -> None:
    service, run = cli
    start(service, "job-1", ["object_type"], estimated_remaining_s=None)
    denied = run("check", "main", "object_type", "--json")
    assert denied.exit_code == 3
    payload = json.loads(denied.output)
    assert set(payload) == {"allowed", "branch", "resource_type", "action", "message", "blocking_lock",
                            "retry_after_s", "version"}
    assert payload["retry_after_s"] is None and payload["version"] >= 1  # no ETA reported: unknown
    assert payload["allowed"] is False and payload["blocking_lock"]["holder"] == "funnel"
    assert set(payload["blocking_lock"]) == LOCK_FIELDS
    assert run("check", "main", "link_type").exit_code == 0
    assert run("check", "main", "object_type", "--action", "read").exit_code == 0
    assert "other resource types" in run("check", "main", "object_type").output


def test_check_refuses_blank_names_and_keeps_the_whole_branch_aliases(cli) -> None:
    service, run = cli
    start(service, "job-1", ["object_type"])
    for args in (["main", ""], ["main", "  "], ["", "object_type"], ["main", "object_type", "--action", ""]):
        refused = run("check", *args)
        assert refused.exit_code == 2, (args, refused.output)
        assert "ALLOWED" not in refused.output and "must not be empty" in refused.output
        assert len(refused.output.strip().splitlines()) == 1
    for alias in ("*", "-"):  # the whole branch: blocked by the typed lock
        whole = run("check", "main", alias, "--json")
        assert whole.exit_code == 3 and json.loads(whole.output)["resource_type"] is None


def test_check_reports_an_unreachable_store_distinctly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("INDEXGATE_STORE_URL", f"sqlite:///{blocker}/indexgate.db")
    result = CliRunner().invoke(main, ["check", "main", "object_type"])
    assert result.exit_code == 4
    assert "store unreachable" in result.output


def test_locks_commands(cli) -> None:
    service, run = cli
    start(service, "job-1", ["object_type", "link_type"])
    listed = json.loads(run("locks", "list", "--json").output)
    assert len(listed) == 2 and all(set(item) == LOCK_FIELDS for item in listed)
    lock_id = listed[0]["lock_id"]
    assert json.loads(run("locks", "show", lock_id, "--json").output)["lock_id"] == lock_id
    assert json.loads(run("locks", "health", lock_id, "--json").output)["health"] == "healthy"
    assert json.loads(run("locks", "summary", "--json").output) == {"healthy": 2, "warning": 0, "critical": 0, "total": 2}

    before = datetime.fromisoformat(listed[0]["expires_at"])
    extended = run("locks", "extend", lock_id, "--by-s", "600", "--reason", "big branch", "--operator", "ops@host")
    assert extended.exit_code == 0, extended.output
    after = datetime.fromisoformat(json.loads(run("locks", "show", lock_id, "--json").output)["expires_at"])
    assert after - before == timedelta(seconds=600)

    assert run("locks", "release", lock_id, "--reason", "stuck", "--operator", "ops@host").exit_code == 0
    assert len(json.loads(run("locks", "list", "--json").output)) == 1
    trail = json.loads(run("audit", "--json").output)
    released = [e for e in trail if e["kind"] == "released"]
    assert released[0]["reason"] == "FORCED" and released[0]["actor"] == "ops@host"
    assert any(e["kind"] == "extended" and e["reason"] == "big branch" for e in trail)

    missing = CliRunner().invoke(main, ["locks", "show", "nope"])
    assert missing.exit_code == 2 and "no lock nope" in missing.output
    bad = CliRunner().invoke(main, ["locks", "extend", listed[1]["lock_id"], "--by-s", "-5", "--reason", "x"])
    assert bad.exit_code == 2 and "positive" in bad.output


def test_deadletters_list_json_after_a_malformed_event(cli) -> None:
    service, run = cli
    from indexgate.events.decode import RawMessage
    from indexgate.events.intake import ingest

    raw = RawMessage.build({}, "application/cloudevents+json", b"{oops")
    assert ingest(service, Settings(), raw).status == "dead_lettered"
    letters = json.loads(run("deadletters", "list", "--json").output)
    assert len(letters) == 1
    assert set(letters[0]) >= {"letter_id", "at", "reason", "routing_key", "content_type", "headers", "body"}
    assert letters[0]["body"] == "{oops" and "not JSON" in letters[0]["reason"]


# --- real processes ---------------------------------------------------------------------


def indexgate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexgate.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_celery_worker_consumes_what_indexgate_publish_sends_over_redis(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    env = settings_env(settings)
    try:
        with worker_processes(settings, count=1):
            data = {"job_id": "job-cli", "branch": "cli/branch", "resource_types": ["object_type"], "service_name": "funnel"}
            for mode in ("structured", "binary"):
                sent = indexgate(env, "publish", "com.oms.indexing.started", "--data",
                                 json.dumps(data | {"job_id": f"job-{mode}", "branch": f"cli/{mode}"}), "--mode", mode)
                assert sent.returncode == 0, sent.stderr
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listed = json.loads(indexgate(env, "locks", "list", "--json").stdout)
                if len(listed) == 2:
                    break
                time.sleep(0.2)
    finally:
        delete_run_names(settings)
    assert sorted((item["branch"], item["job_id"]) for item in listed) == [
        ("cli/binary", "job-binary"), ("cli/structured", "job-structured")]


@pytest.mark.slow
def test_check_frees_a_lock_at_its_heartbeat_deadline_without_a_sweep(tmp_path: Path) -> None:
    """No beat runs: only the computed expiry can free the lock."""
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    env = settings_env(settings)
    try:
        with worker_processes(settings, count=1):
            data = {"job_id": "job-dies", "branch": "b", "resource_types": ["object_type"], "service_name": "funnel",
                    "heartbeat_interval_s": 1.0}
            assert indexgate(env, "publish", "com.oms.indexing.started", "--data", json.dumps(data)).returncode == 0
            deadline_at = None
            limit = time.monotonic() + 30
            while deadline_at is None and time.monotonic() < limit:
                listed = json.loads(indexgate(env, "locks", "list", "--json").stdout)
                deadline_at = datetime.fromisoformat(listed[0]["heartbeat_deadline"]) if listed else None
            assert deadline_at is not None, "the lock was never granted"
            before = indexgate(env, "check", "b", "object_type")
            checked_before_at = datetime.now(timezone.utc)
            wait_s = (deadline_at - datetime.now(timezone.utc)).total_seconds()
            time.sleep(max(0.0, wait_s) + 0.05)  # just past the deadline
            after = indexgate(env, "check", "b", "object_type", "--json")
    finally:
        delete_run_names(settings)
    assert checked_before_at < deadline_at and before.returncode == 3, before.stdout
    assert after.returncode == 0 and json.loads(after.stdout)["allowed"] is True
    service = Service.from_settings(settings)
    assert not [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED], "no sweep may have run"
    assert len(service.list_locks("b")) == 1  # still stored (dead), yet check treats it as free
