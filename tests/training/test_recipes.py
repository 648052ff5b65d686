"""Named recipes merged with the settings a user gives (training.recipes.resolve)."""

import pytest

from chaiderm.training.recipes import RECIPES, RecipeConflictError, resolve

LEFT_OUT = {
    "logic": None,
    "ensemble": None,
    "vote": None,
    "colour": None,
    "colour_jitter": None,
    "zoom": None,
    "holdout": None,
}


def test_no_recipe_leaves_the_settings_as_given():
    given = {**LEFT_OUT, "logic": "joint", "epochs": 5}
    assert resolve(None, given) == given


def test_a_recipe_fills_in_what_the_user_left_out_and_keeps_the_rest():
    got = resolve("recommended", {**LEFT_OUT, "epochs": 5, "seed": 3})
    assert got == {**RECIPES["recommended"].fixes(), "epochs": 5, "seed": 3}
    # a value the recipe sets anyway is no conflict
    assert resolve("recommended", {**LEFT_OUT, "vote": "distance"})["vote"] == "distance"


def test_a_recipe_never_silently_replaces_a_value_the_user_gave():
    given = {**LEFT_OUT, "logic": "joint", "vote": "uniform", "epochs": 5}
    with pytest.raises(RecipeConflictError) as e:
        resolve("recommended", given)
    assert e.value.settings == ["logic", "vote"] and e.value.recipe is RECIPES["recommended"]
    assert given["logic"] == "joint"  # the caller's settings are not changed


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown recipe 'best'; known: recommended"):
        resolve("best", LEFT_OUT)
