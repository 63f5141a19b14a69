"""Every recipe a user can copy from examples/recipes loads (schema, formats, methods, schedules)."""

from pathlib import Path

import pytest

from nmx.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_example_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.model
    if path.stem.startswith("train_"):
        assert recipe.training is not None and recipe.training.steps >= 1
