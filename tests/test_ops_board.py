"""The locks board (``GET /`` of ``indexgate serve``) as a person sees it: headless Chromium.

A real worker plays the operator scenario (a live lock whose branch name carries HTML, a
dead one, a switched shadow index, a dead letter); Debian's ``chromium`` loads the board
from a real ``indexgate serve``, dumps the DOM after load and takes a screenshot (kept under
``test-artifacts/``, not in the repository). Checked: the holder, job and escaped branch
name as text, each lock's health class, the health colours in the pixels, the shadow build,
the active pointer, the dead letter and the backlog. Chromium missing is a failure with
the install line, never a skip.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from indexgate.leases import BEAT
from indexgate.service import Service
from indexgate.testing.api import api_process
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import PROJECT_ROOT, start_worker, stop, wait_ready
from tests import ops_kit
from tests.conftest import REDIS_URL, isolated_settings, require_reachable

pytestmark = pytest.mark.slow
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# the flags this machine needs (field notes): no sandbox as root, no network of its own
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1200"]
HEALTHY_RGB, CRITICAL_RGB = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)")
    return path


def browse(url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=90)


class Cells(HTMLParser):
    """The text of every row of table ``#locks``, and each row's health class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self._in_locks = False
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "locks":
            self._in_locks = True
        elif self._in_locks and tag == "tr" and "lock" in (attrs.get("class") or "").split():
            self._row = {"text": "", "health": None, "tags": []}
        elif self._row is not None:
            self._row["tags"].append(tag)
            classes = (attrs.get("class") or "").split()
            if "health" in classes:
                self._row["health"] = next(c for c in classes if c.startswith("health-"))

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._in_locks = False

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"] += data + " "


def has_colour(png: Path, rgb: tuple[int, int, int]) -> bool:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return any(count >= 20 and all(abs(c - want) <= 6 for c, want in zip(colour, rgb)) for count, colour in colours)


def test_board_in_headless_chromium(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    worker = start_worker(settings, "board", concurrency=2)
    service = Service.from_settings(settings)
    scenario = ops_kit.Scenario.new(hostile_branch=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "locks-board.png"
    try:
        wait_ready(settings, [worker])
        letter = ops_kit.run(settings, service, scenario, tmp_path)
        service.leases.take(BEAT, "beat-host:42", 600)  # a beat holds the lease
        with api_process(settings) as url:
            dom = browse(f"{url}/", "--dump-dom")
            shot.unlink(missing_ok=True)
            pic = browse(f"{url}/", f"--screenshot={shot}")
    finally:
        stop(worker)
        service.store.close()
        delete_run_names(settings)
    print(f"locks board screenshot: {shot}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    cells = Cells()
    cells.feed(page)
    live = [row for row in cells.rows if scenario.live_job in row["text"]]
    dying = [row for row in cells.rows if scenario.dying_job in row["text"]]
    assert len(live) == 1 and len(dying) == 1, cells.rows
    assert "funnel-pod-7" in live[0]["text"] and live[0]["health"] == "health-healthy"
    assert "40 %" in live[0]["text"]  # progress
    assert "(1800 s)" in live[0]["text"]  # the ETA the heartbeat gave
    assert "funnel-pod-9" in dying[0]["text"] and dying[0]["health"] == "health-critical"
    # the branch name's HTML shows as text: no <b> element was made from it
    assert scenario.live_branch in live[0]["text"] and "b" not in live[0]["tags"]
    assert re.search(r"<td class=\"?branch\"?>ops/&lt;b&gt;live&lt;/b&gt;&amp;", page)
    assert scenario.shadow_branch in page and "ACTIVE" in page  # build and active pointer
    assert f"shadow-{scenario.shadow_job}" in page
    assert letter in page and "com.oms.indexing.exploded" in page  # the dead letter
    assert 'id="backlog">0<' in page  # the intake backlog
    assert "beat: beat-host:42 sends the sweeps (lease token 1" in page  # who sends the sweeps
    assert 'http-equiv="refresh"' in page
    assert pic.returncode == 0 and shot.stat().st_size > 0, pic.stderr[-2000:]
    assert has_colour(shot, HEALTHY_RGB) and has_colour(shot, CRITICAL_RGB)


def test_board_wants_the_token_and_takes_it_as_basic_auth_password(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, REDIS_URL, api_token="s3cret")
    with api_process(settings) as url:
        refused = httpx.get(f"{url}/")
        basic = httpx.get(f"{url}/", auth=("anyone", "s3cret"))
        wrong = httpx.get(f"{url}/", headers={"Authorization": "Basic " + base64.b64encode(b"x:nope").decode()})
        bearer = httpx.get(f"{url}/", headers={"Authorization": "Bearer s3cret"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert wrong.status_code == 401
    assert basic.status_code == 200 and bearer.status_code == 200 and "indexgate locks board" in basic.text
