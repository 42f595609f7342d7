"""Package discovery for the ``package-dir`` mapping in ``pyproject.toml`` (all the other
metadata lives there).

setuptools' own discovery (``packages.find``) knows nothing of the mapping: it would find
the card's folders as top-level ``events``, ``schemas``, ``workers``, or miss them. So every
package under each mapped folder is found here, under its mapped name, and a new
subpackage (``indexgate/verifiers`` was once forgotten in a hand-written list) is always
in the wheel. ``tests/test_packaging.py`` checks the wheel holds every module.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
MAPPING: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def mapped_packages() -> list[str]:
    """``indexgate.events.brokers`` for ``events/brokers/__init__.py``, and so on."""
    return sorted({name for prefix, folder in MAPPING.items()
                   for name in [prefix, *(f"{prefix}.{sub}" for sub in find_packages(str(ROOT / folder)))]})


setup(packages=mapped_packages())
