"""Test tooling lives in ``indexgate.testing`` (or under ``tests/``), never in production code.

Checked on the sources (``ast``, no imports): no production module imports
``indexgate.testing`` or mongomock, or names the ``mongomock`` scheme in its code (a
docstring may say what tests do); helpers that only
tests, benchmarks and the demo use (``write_index``) are defined in ``indexgate.testing``.
The demo is an edge that runs throwaway indexes as tests do, so it may use that helper.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from indexgate.testing.processes import PROJECT_ROOT

PRODUCTION = [path for folder in ("indexgate", "events", "schemas", "workers")
              for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
              if "testing" not in path.relative_to(PROJECT_ROOT).parts and "__pycache__" not in path.parts]
MAY_USE_TESTING = {PROJECT_ROOT / "indexgate" / "demo.py": {"indexgate.testing.indexes"}}


def _code_strings(tree: ast.AST) -> set[str]:
    """String constants that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PRODUCTION, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_production_code_holds_no_test_tooling(path: Path) -> None:
    tree = ast.parse(path.read_text())
    testing = {name for name in _imports(tree) if name.startswith(("indexgate.testing", "mongomock"))}
    assert testing <= MAY_USE_TESTING.get(path, set()), testing
    assert not [text for text in _code_strings(tree) if "mongomock" in text.lower()], "a test-only store scheme"
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert "write_index" not in defined


def test_production_refuses_the_mongomock_scheme() -> None:
    """In a process that never imported ``indexgate.testing``: an unknown scheme."""
    probe = ("from indexgate.errors import ConfigError\nfrom indexgate.settings import Settings\n"
             "from indexgate.store import open_store\n"
             "try:\n    open_store(Settings(store_url='mongomock://localhost/x'))\n"
             "except ConfigError as exc:\n    print(exc)\n"
             "import sys\nassert not [m for m in sys.modules if m.startswith(('indexgate.testing', 'mongomock'))]\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert "unknown scheme 'mongomock'" in done.stdout, done.stdout
