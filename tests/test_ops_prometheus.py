"""The shipped alert rules pass ``promtool``, and a real Prometheus scrapes ``indexgate serve``.

Debian's ``prometheus`` package brings both ``promtool`` and the server; ``.ci/run``
installs it. Missing, these tests fail with the install line: they are never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from indexgate.testing.api import api_process, free_port
from indexgate.testing.processes import PROJECT_ROOT
from tests.conftest import REDIS_URL, isolated_settings

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = PROJECT_ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: `apt-get install -y prometheus` (Debian's package has promtool and "
                    "the server; .ci/run installs it)")
    return path


def test_every_alert_rule_has_a_promtool_unit_test_and_they_pass() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert len(alerts) >= 8 and alerts == tested, f"untested: {alerts - tested}, unknown: {tested - alerts}"
    check = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and f"SUCCESS: {len(alerts)} rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([tool("promtool"), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                          cwd=RULE_TESTS.parent)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_a_real_prometheus_scrapes_indexgate_serve(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, REDIS_URL)
    server = tool("prometheus")
    with api_process(settings) as url:
        target = url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: indexgate
    static_configs: [{{targets: ["{target}"]}}]
""")
        port = free_port()
        log = open(tmp_path / "prometheus.log", "w")
        prom = subprocess.Popen([server, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            result = wait_for_series(api, 'indexgate_store_up{job="indexgate"}', prom, tmp_path)
            locks = query(api, 'sum(indexgate_locks{job="indexgate"})')
            rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        finally:
            prom.terminate()
            prom.wait(timeout=30)
            log.close()
    assert result["metric"]["instance"] == target and result["value"][1] == "1"
    assert locks and locks[0]["value"][1] == "0"
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {"IndexgateStoreUnavailable",
                                                                            "IndexgateNoBeatSweep"}


def query(api: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_series(api: str, expr: str, prom: subprocess.Popen, folder: Path, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = query(api, expr)
            if found:
                return found[0]
        except (httpx.HTTPError, ValueError):
            pass
        if prom.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"Prometheus never had {expr}:\n{(folder / 'prometheus.log').read_text()[-3000:]}")
        time.sleep(0.5)
