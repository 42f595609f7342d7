"""``INDEXGATE_LOG_FORMAT=json``: worker, beat and API write one JSON object per line.

Real processes; their logs (stderr) are parsed line by line, and what they print to stdout
is only Celery's own shutdown line. The worker's line about a dead letter names the
event's id, type, branch and job, and the task it ran in. Plain text stays the default.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage

from indexgate.events.brokers import transport_for
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.api import free_port, wait_answering
from indexgate.testing.processes import PROJECT_ROOT, settings_env, wait_ready
from tests import ops_kit
from tests.ops_kit import redis_settings  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


CELERY_STDOUT = {"worker: Warm shutdown (MainProcess)"}  # Celery's own print on SIGTERM, not a log line


def spawn(settings: Settings, argv: list[str], out: Path, log_format: str = "json") -> subprocess.Popen:
    """Logs (stderr) to ``out``, stdout to ``out`` + ``.stdout``."""
    env = settings_env(settings, log_format=log_format)
    with open(out, "w") as logs, open(f"{out}.stdout", "w") as prints:
        return subprocess.Popen(argv, env=env, stdout=prints, stderr=logs, cwd=PROJECT_ROOT)


def prints(out: Path) -> set[str]:
    return {line.strip() for line in Path(f"{out}.stdout").read_text().splitlines() if line.strip()}


def finish(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def json_lines(out: Path) -> list[dict]:
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert lines, f"{out.name} wrote nothing"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{out.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict) and {"timestamp", "level", "logger", "message"} <= record.keys(), line
        parsed.append(record)
    return parsed


def test_worker_logs_json_lines_with_the_events_fields(redis_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "worker.out"
    worker = spawn(redis_settings, [sys.executable, "-m", "celery", "-A", "indexgate.workers", "worker", "-l", "INFO",
                                    "-c", "1", "-n", "logs@%h", "--without-mingle", "--without-gossip"], out)
    worker.node = "logs"  # type: ignore[attr-defined]  # wait_ready counts this worker's replies
    service = Service.from_settings(redis_settings)
    try:
        wait_ready(redis_settings, [worker])
        transport = transport_for(redis_settings)
        body = json.dumps({"specversion": "1.0", "id": "evt-logs-1", "source": "funnel", "type": "com.oms.indexing.nope",
                           "data": {"job_id": "job-logs", "branch": "logs/main"}}).encode()
        transport.publish_raw("com.oms.indexing.nope", RabbitMQMessage({}, "application/cloudevents+json", body))
        transport.close()
        ops_kit.wait_for(lambda: service.store.dead_letters(1), what="the dead letter")
        time.sleep(0.5)  # the task's own end line
    finally:
        finish(worker)
        service.store.close()
    records = json_lines(out)
    [dead] = [r for r in records if r["message"].startswith("dead-lettered message")]
    assert dead["level"] == "WARNING" and dead["event_id"] == "evt-logs-1"
    assert (dead["event_type"], dead["branch"], dead["job_id"]) == ("com.oms.indexing.nope", "logs/main", "job-logs")
    assert dead["task_name"] == "indexgate.unknown" and dead["task_id"]
    assert any(r["message"].startswith("Connected to redis") for r in records)  # Celery's own lines too
    assert any(r["logger"] == "py.warnings" for r in records)  # Celery's root warning, as JSON (we run as root)
    assert prints(out) <= CELERY_STDOUT  # no banner


def test_beat_logs_json_lines(redis_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "beat.out"
    beat = spawn(redis_settings, [sys.executable, "-m", "celery", "-q", "-A", "indexgate.workers", "beat", "-l", "INFO",
                                  "--max-interval", "1"], out)
    time.sleep(4)
    finish(beat)
    records = json_lines(out)
    assert any("beat" in r["logger"] or "Sending due task" in r["message"] for r in records), records
    assert prints(out) == set()  # --quiet: no banner


def test_api_logs_json_lines_and_text_stays_the_default(redis_settings: Settings, tmp_path: Path) -> None:
    for log_format in ("json", "text"):
        out = tmp_path / f"api-{log_format}.out"
        port = free_port()
        api = spawn(redis_settings, [sys.executable, "-m", "indexgate.cli", "serve", "--port", str(port),
                                     "--log-level", "info"], out, log_format)
        try:
            wait_answering(f"http://127.0.0.1:{port}", api)
            assert httpx.get(f"http://127.0.0.1:{port}/v1/check", params={"branch": "b"}).status_code == 200
        finally:
            finish(api)
        if log_format == "json":
            records = json_lines(out)
            assert records[0]["logger"] == "indexgate.api" and f":{port}" in records[0]["message"]
            assert any("Application startup complete" in r["message"] for r in records)
            assert prints(out) == set()
        else:
            text = out.read_text()
            assert text.startswith("indexgate API on http://") and not text.lstrip().startswith("{")
