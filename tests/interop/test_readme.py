"""The README's funnel recipes are the code the interop suite runs (must-show 4)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tests.interop import recipes

README = Path(__file__).resolve().parents[2] / "README.md"
RECIPES = [recipes.structured, recipes.binary, recipes.sdk_message, recipes.kombu_publish, recipes.redis_xadd,
           recipes.pika_publish]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.__name__)
def test_readme_shows_the_recipe_verbatim(recipe) -> None:
    assert inspect.getsource(recipe) in README.read_text(), (
        f"README.md's 'Funnel integration' must show tests/interop/recipes.py:{recipe.__name__} as it is")
