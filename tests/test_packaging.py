"""What ``pip install indexgate`` gives: one top-level package holding every module of the
checkout; the client with pydantic and httpx only (no Celery, kombu, redis or pymongo);
with the ``server`` extra, the CLI, the API and the Celery app, importable and runnable.

The wheel is built from a clean copy of this checkout (pip, with build isolation as any
installer would; no ``build/`` left over from an earlier build can slip into it); its
metadata and file list are read, then it is installed with ``--no-deps`` into a fresh
virtual environment that sees only the dependencies the wheel declares (the bare ones, or
the ``server`` extra's, with theirs: linked from this environment, offline), and run from a
folder without the sources. The Celery app is also started by name from the checkout
(``celery -A workers`` / ``-A indexgate.workers``), as the README says it can be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path
from typing import Iterable

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from indexgate.testing.processes import PROJECT_ROOT

BARE_REQUIREMENTS = ("pydantic", "httpx")
WORKER_DEPENDENCIES = ("celery", "kombu", "redis", "pymongo", "cloudevents", "fastapi", "uvicorn", "click")


MAPPING: dict[str, str] = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".indexgate")


def _copy_sources(folder: Path) -> Path:
    sources = folder / "indexgate"
    shutil.copytree(PROJECT_ROOT, sources, symlinks=True, ignore=NOT_SOURCES)
    return sources


def _build_wheel(sources: Path, out: Path) -> Path:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(sources), "-w",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("indexgate-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(_copy_sources(tmp_path_factory.mktemp("sources")), tmp_path_factory.mktemp("wheel"))


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


def test_the_wheel_holds_every_module_of_the_checkout(wheel: Path) -> None:
    """Every ``.py`` under ``indexgate/``, ``events/``, ``schemas/`` and ``workers/``, at its
    mapped name, and no other module (a package left out of the build, or a stale copy)."""
    expected = set()
    for prefix, folder in MAPPING.items():
        root = PROJECT_ROOT / folder
        expected |= {"/".join([*prefix.split("."), *path.relative_to(root).parts]) for path in root.rglob("*.py")
                     if "__pycache__" not in path.parts}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    assert "indexgate/verifiers/__init__.py" in expected and "indexgate/events/brokers/amqp.py" in expected
    assert shipped == expected, {"missing": sorted(expected - shipped), "extra": sorted(shipped - expected)}


def test_a_new_subpackage_is_packaged_without_being_listed(tmp_path: Path) -> None:
    """Packages are discovered under each mapped folder (``setup.py``): a subpackage added
    to ``indexgate/`` or to a card folder is in the wheel with no list to update."""
    sources = _copy_sources(tmp_path)
    for folder in (sources / "indexgate" / "plugins" / "extra", sources / "events" / "sinks"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text('"""a new subpackage"""\n')
    (sources / "indexgate" / "plugins" / "__init__.py").write_text("")
    with zipfile.ZipFile(_build_wheel(sources, tmp_path / "out")) as archive:
        names = set(archive.namelist())
    assert {"indexgate/plugins/__init__.py", "indexgate/plugins/extra/__init__.py",
            "indexgate/events/sinks/__init__.py"} <= names
    assert not [name for name in names if name.startswith(("events/", "plugins/"))]


def _venv_with(wheel: Path, folder: Path, requirements: Iterable[str]) -> Path:
    """A fresh virtual environment with the wheel installed ``--no-deps`` and the closure of
    ``requirements`` linked in from this environment (with their metadata: entry points and
    versions are read from it); returns its ``bin`` folder."""
    env_dir = folder / "venv"
    venv.create(env_dir, with_pip=False)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                                "--quiet", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    deps = folder / "deps"
    deps.mkdir()
    for top in sorted(_top_level_paths(_closure(requirements))):
        (deps / top.name).symlink_to(top)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    (site / "linked-deps.pth").write_text(f"{deps}\n")
    return env_dir / "bin"


def _server_requirements(wheel: Path) -> list[str]:
    """What the wheel's metadata says ``indexgate[server]`` needs (markers evaluated)."""
    with zipfile.ZipFile(wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    return [str(req).split(";")[0] for req in requirements
            if req.marker is None or req.marker.evaluate({"extra": "server"})]


def _clean_env(data_dir: Path) -> dict[str, str]:
    """No INDEXGATE_*, CELERY_* or PYTHONPATH from this run: only the installed package counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXGATE_", "CELERY_", "PYTHON"))}
    return env | {"INDEXGATE_DATA_DIR": str(data_dir)}


def test_the_server_install_runs_the_cli_the_api_and_the_worker_app(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv_with(wheel, tmp_path, _server_requirements(wheel))
    elsewhere = tmp_path / "elsewhere"  # no sources here: only the installed wheel can be imported
    elsewhere.mkdir()
    env = _clean_env(tmp_path / "data")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env)

    imported = run(str(bin_dir / "python"), "-I", "-c", "import indexgate, indexgate.cli, indexgate.api, "
                   "indexgate.workers, indexgate.verifiers; print(indexgate.__file__)")
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip().startswith(str(tmp_path / "venv")), imported.stdout  # the wheel, not the checkout
    helped = run(str(bin_dir / "indexgate"), "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "setup" in helped.stdout, helped.stderr[-3000:]
    reported = run(str(bin_dir / "python"), "-I", "-m", "celery", "-A", "indexgate.workers", "report")
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "transport:indexgate-filesystem" in reported.stdout, reported.stdout[-3000:]


@pytest.mark.parametrize("app", ["workers", "indexgate.workers"])
def test_celery_finds_the_app_by_name_from_a_checkout(app: str, tmp_path: Path) -> None:
    """``celery -A workers`` (the card's folder) and ``-A indexgate.workers`` build the same
    app from the environment: here, a task queue named by ``INDEXGATE_TASK_QUEUE``."""
    env = _clean_env(tmp_path) | {"INDEXGATE_TASK_QUEUE": f"report.{app}.tasks"}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", app, "report"], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transport:indexgate-filesystem" in done.stdout and f"'report.{app}.tasks'" in done.stdout, done.stdout


def test_the_bare_install_runs_the_client_without_worker_dependencies(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    python = _venv_with(wheel, tmp_path, BARE_REQUIREMENTS) / "python"
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


def _closure(requirements: Iterable[str]) -> set[str]:
    """The distributions ``requirements`` need here, transitively (extras followed, markers
    evaluated)."""
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        wanted = todo.pop()
        name = canonicalize_name(wanted.name)
        extras = {""} | set(wanted.extras)
        if all((name, extra) in seen for extra in extras):
            continue
        seen |= {(name, extra) for extra in extras}
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras):
                todo.append(requirement)
    return {name for name, _ in seen}


def _top_level_paths(dists: set[str]) -> set[Path]:
    """What those distributions put at the top of site-packages (packages, modules and their
    ``.dist-info``)."""
    paths: set[Path] = set()
    for name in dists:
        dist = distribution(name)
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith(".pth") or top in ("..", "__pycache__", "bin"):
                continue
            paths.add(Path(dist.locate_file(top)).resolve())
    return paths
