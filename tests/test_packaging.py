"""What the OMS gets from ``pip install indexgate``: one top-level package, and the client
with pydantic and httpx only - no Celery, kombu, redis or pymongo.

The wheel is built from this checkout (pip, with build isolation as any installer would);
its metadata and file list are read, then it is installed with ``--no-deps`` into a fresh
virtual environment that sees only the bare install's dependencies (pydantic, httpx and
theirs, linked from this environment), where the client is imported and asks a server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from indexgate.testing.processes import PROJECT_ROOT

BARE_REQUIREMENTS = ("pydantic", "httpx")
WORKER_DEPENDENCIES = ("celery", "kombu", "redis", "pymongo", "cloudevents", "fastapi", "uvicorn", "click")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(PROJECT_ROOT), "-w",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("indexgate-*.whl")
    return path


def test_the_wheel_has_one_top_level_package_and_a_bare_dependency_list(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = archive.read(f"{info}/top_level.txt").decode().split()
        record = [line.split(",")[0] for line in archive.read(f"{info}/RECORD").decode().splitlines() if line]
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert top_level == ["indexgate"]
    assert {path.split("/")[0] for path in record} == {"indexgate", info}
    assert "indexgate/client.py" in record and "indexgate/workers/app.py" in record
    assert not [p for p in record if p.split("/")[0] in ("events", "schemas", "workers", "beat_schedule.py")]
    bare = sorted(req.split(">")[0].split(";")[0].strip() for req in metadata.get_all("Requires-Dist")
                  if "extra ==" not in req)
    assert bare == ["httpx", "pydantic"]
    server = [req for req in metadata.get_all("Requires-Dist") if 'extra == "server"' in req]
    assert any(req.startswith("celery") for req in server) and any(req.startswith("fastapi") for req in server)


def test_the_bare_install_runs_the_client_without_worker_dependencies(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "oms-venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    deps = tmp_path / "bare-deps"
    deps.mkdir()
    for top in sorted(_top_level_paths(_closure(BARE_REQUIREMENTS))):
        (deps / top.name).symlink_to(top)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    (site / "bare-deps.pth").write_text(f"{deps}\n")
    probe = f"""
import importlib.util, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
from indexgate.client import Gate
body = json.dumps({{"allowed": False, "branch": "main", "resource_type": "object_type", "action": "write",
                   "message": "locked", "blocking_lock": None, "retry_after_s": 0.05, "version": 3}}).encode()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
decision = Gate(f"http://127.0.0.1:{{server.server_address[1]}}", timeout_s=2).check("main", "object_type")
print(json.dumps({{"allowed": decision.allowed, "version": decision.version, "file": __import__("indexgate").__file__,
                  "missing": [m for m in {WORKER_DEPENDENCIES!r} if importlib.util.find_spec(m) is None],
                  "generic": [m for m in ("events", "schemas", "workers") if importlib.util.find_spec(m) is not None]}}))
"""
    ran = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    seen = json.loads(ran.stdout)
    assert seen["allowed"] is False and seen["version"] == 3
    assert seen["file"].startswith(str(env_dir)), seen["file"]  # the installed wheel, not this checkout
    assert sorted(seen["missing"]) == sorted(WORKER_DEPENDENCIES), "the OMS environment has a worker dependency"
    assert seen["generic"] == []


def _closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` need here, transitively (no extras, markers evaluated)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _top_level_paths(dists: set[str]) -> set[Path]:
    """What those distributions put at the top of site-packages (packages and modules)."""
    paths: set[Path] = set()
    for name in dists:
        dist = distribution(name)
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".pth")) or top in ("..", "__pycache__", "bin"):
                continue
            paths.add(Path(dist.locate_file(top)).resolve())
    return paths
