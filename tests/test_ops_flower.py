"""Flower shows events: a real worker with task events on, a real Flower with basic auth.

Through Flower's own HTTP API (``/api/tasks``, its search) and pages: a task per event kind
whose args name the branch and the job, a dead letter that is not SUCCESS, the Broker page
answering 200 on Redis and on RabbitMQ (queue depths there through the management plugin's
API, on a RabbitMQ node of our own that runs it),
``/api/*`` refused without credentials.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.chaos.servers import RabbitNode
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.api import free_port
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import PROJECT_ROOT, settings_env, start_worker, stop, wait_ready
from indexgate.workers.app import create_app
from tests import ops_kit
from tests.conftest import AMQP_URL, REDIS_URL, isolated_settings, require_reachable

pytestmark = pytest.mark.slow
AUTH = ("ops", "flower-test-pw")


def start_flower(settings: Settings, port: int, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "indexgate.workers", "flower", f"--port={port}",
            "--address=127.0.0.1", f"--basic_auth={AUTH[0]}:{AUTH[1]}", *extra]
    with open(settings.data_dir / "flower.log", "w") as log:
        proc = subprocess.Popen(argv, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                                cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"flower did not come up:\n{(settings.data_dir / 'flower.log').read_text()[-2000:]}")
        time.sleep(0.2)


def broker_cells(port: int, queue: str) -> list[str]:
    """The text of the cells of ``queue``'s row on Flower's Broker page (name, messages, ...)."""
    page = httpx.get(f"http://127.0.0.1:{port}/broker", auth=AUTH, timeout=30)
    assert page.status_code == 200, page.text[:500]
    row = re.search(rf'<tr id="{re.escape(queue)}">(.*?)</tr>', page.text, re.S)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S) if row else []
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def tasks(url: str, worker=None, **params) -> dict:
    """Flower's task list; with ``worker``, only that worker's tasks (task events travel on the
    shared broker, so a Flower also sees any other worker there that sends them)."""
    answer = httpx.get(f"{url}/api/tasks", params=params, auth=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    if worker is None:
        return found
    return {key: info for key, info in found.items() if str(info.get("worker") or "").startswith(f"{worker.node}@")}


def test_flower_lists_a_task_per_event_kind_with_branch_and_job(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, task_events=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flower = start_flower(settings, port)
    worker = start_worker(settings, "flower", concurrency=2)
    service = Service.from_settings(settings)
    scenario = ops_kit.Scenario.new()
    try:
        wait_ready(settings, [worker])
        ops_kit.run(settings, service, scenario, tmp_path)
        wanted = {"indexgate.indexing.started", "indexgate.indexing.heartbeat", "indexgate.indexing.completed",
                  "indexgate.shadow.switch", "indexgate.unknown"}
        ops_kit.wait_for(lambda: wanted <= {t["name"] for t in tasks(url, worker).values()
                                            if t["state"] in ("SUCCESS", "FAILURE")},
                         what="Flower to have seen every kind's task finish")
        seen = tasks(url, worker)
        by_name: dict[str, list[dict]] = {}
        for info in seen.values():
            by_name.setdefault(info["name"], []).append(info)
        started = by_name["indexgate.indexing.started"]
        assert any(f"branch={scenario.live_branch}" in t["args"] and f"job={scenario.live_job}" in t["args"]
                   for t in started)
        assert all("indexgate.intake" != name for name in by_name)
        [heartbeat] = by_name["indexgate.indexing.heartbeat"]
        assert f"job={scenario.live_job}" in heartbeat["args"] and heartbeat["state"] == "SUCCESS"
        assert "applied" in heartbeat["result"]
        assert f"'job_id': '{scenario.live_job}'" in heartbeat["kwargs"]
        [switch] = by_name["indexgate.shadow.switch"]
        assert f"job={scenario.shadow_job}" in switch["args"] and "switched" in switch["result"]
        [dead] = by_name["indexgate.unknown"]
        assert dead["state"] == "FAILURE" and "DeadLettered" in (dead["exception"] or "")
        assert "com.oms.indexing.exploded" in dead["args"]
        # Flower's search finds a job and a branch
        found = tasks(url, worker, search=scenario.shadow_job)
        assert {t["name"] for t in found.values()} >= {"indexgate.indexing.started", "indexgate.indexing.completed",
                                                       "indexgate.shadow.switch"}
        by_branch = tasks(url, worker, search=f"kwargs:{scenario.dying_branch}")
        assert [t["name"] for t in by_branch.values()] == ["indexgate.indexing.started"]
        exact = tasks(url, worker, search=f"kwargs:job_id={scenario.live_job}")  # a batch of one job: exact field match
        assert "indexgate.indexing.heartbeat" in {t["name"] for t in exact.values()}
        # the Broker page on Redis; the API wants the credentials
        broker = httpx.get(f"{url}/broker", auth=AUTH, timeout=10)
        assert broker.status_code == 200 and settings.task_queue in broker.text, broker.text[:500]
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{url}/broker", timeout=10, follow_redirects=False).status_code in (401, 302)
    finally:
        stop(worker)
        stop(flower)
        service.store.close()
        delete_run_names(settings)


def test_flower_broker_page_on_rabbitmq_needs_the_management_api_for_depths(tmp_path: Path) -> None:
    """On RabbitMQ Flower reads queue depths from the management plugin's HTTP API
    (``--broker_api``). A RabbitMQ node of our own with the plugin: the page lists the task
    queue with its message count. The shared broker (no plugin here): still 200, no depths."""
    node = RabbitNode(tmp_path / "rabbit", management=True)
    node.start()
    try:
        settings = isolated_settings(tmp_path / "private", node.url)
        app = create_app(settings)
        for _ in range(3):  # three tasks wait in the task queue (no worker runs)
            app.send_task("indexgate.sweep_ttl")
        app.close()
        port = free_port()
        flower = start_flower(settings, port, f"--broker_api=http://guest:guest@127.0.0.1:{node.management_port}/api/")
        try:  # the plugin samples queue statistics every few seconds
            ops_kit.wait_for(lambda: broker_cells(port, settings.task_queue)[1:2] == ["3"], 60,
                             "the task queue's depth on Flower's Broker page")
            page = httpx.get(f"http://127.0.0.1:{port}/broker", auth=AUTH, timeout=30)
        finally:
            stop(flower)
    finally:
        node.stop()
    assert page.status_code == 200 and settings.task_queue in page.text

    require_reachable(AMQP_URL)
    shared = isolated_settings(tmp_path / "shared", AMQP_URL)
    port = free_port()
    flower = start_flower(shared, port)
    try:
        plain = httpx.get(f"http://127.0.0.1:{port}/broker", auth=AUTH, timeout=30)
    finally:
        stop(flower)
        delete_run_names(shared)
    assert plain.status_code == 200 and "No queue data is available." in plain.text
