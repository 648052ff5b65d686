"""Named training recipes: settings chosen once, under a rule written before the runs that chose them, so
a user trains the model we recommend by name instead of copying flags from the docs.

Each recipe says which ``chaiderm train`` settings it fixes; every other setting keeps its default and
stays the user's to change. The evidence behind a recipe and what it reached are in
research/recipe_rounds/where_it_stands.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    logic: str  # triplet logic of every member
    ensemble: int  # members, trained from seeds seed, seed+1, ...
    vote: str = "uniform"  # how the neighbours vote (ModelConfig.vote)
    colour: str = "none"  # colour normalisation of every input (ModelConfig.colour)
    colour_jitter: float = 0.0  # training colour jitter (TrainConfig.colour_jitter)
    zoom: float = 1.0  # training zoom (TrainConfig.zoom)
    holdout: float = 0.0  # training data not trained on, for the epoch and the novelty threshold (TrainConfig)

    def fixes(self) -> dict[str, object]:
        """The ``chaiderm train`` options this recipe sets, by option name (underscores), with its values."""
        return {
            "logic": self.logic,
            "ensemble": self.ensemble,
            "vote": self.vote,
            "colour": self.colour,
            "colour_jitter": self.colour_jitter,
            "zoom": self.zoom,
            "holdout": self.holdout,
        }


RECIPES: dict[str, Recipe] = {
    # Disease: no other variant beats it in cross-validation (research/cross_validation/). Eight members:
    # the most whose query with 10 evidence pairs stays within 150 ms at the 95th percentile on 2 cores
    # (84 ms, bench/results.json's ensemble_query) with a 1.7x margin for the run-to-run variation of shared
    # 2-core machines (research/recipe_rounds/recipe_rounds.md). Distance-weighted votes: +0.008 pooled AUC,
    # better in 5 of 5 folds (research/recipe_rounds/cv_round8.json). Left out because they do not beat it:
    # ISIC + ham10000_dev training (cv_round8.json), test-time views (cv_round9.json), colour constancy or
    # zoom for other clinics (research/external/external_round1.json). Chosen without the test split.
    # A tenth of the training split is held out: it picks each member's epoch and the index's novelty
    # threshold, so the validation split is left to calibrate the prediction sets (research/uncertainty/).
    "recommended": Recipe(
        name="recommended",
        logic="disease",
        ensemble=8,
        vote="distance",
        holdout=0.1,
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe '{name}'; known: {', '.join(RECIPES)}") from None


class RecipeConflictError(ValueError):
    """Settings a user gave that the recipe fixes to other values (``settings``: their names)."""

    def __init__(self, recipe: Recipe, settings: list[str]):
        self.recipe, self.settings = recipe, settings
        fixed = ", ".join(f"{k} {v}" for k, v in recipe.fixes().items())
        super().__init__(f"recipe {recipe.name} sets {fixed}; leave {', '.join(settings)} out")


def resolve(recipe: str | None, given: Mapping[str, object | None]) -> dict[str, object | None]:
    """The settings a training run uses: ``given`` (None where the user left a setting out) with the named
    recipe's fixed settings filled in. A recipe never silently replaces a value the user gave: one that
    differs from the recipe's raises ``RecipeConflictError``; an unknown recipe, ``ValueError``. Settings
    that are still None keep their defaults (``TrainConfig`` / ``ModelConfig``; one member)."""
    settings = dict(given)
    if recipe is None:
        return settings
    r = get_recipe(recipe)
    fixed = r.fixes()
    clashes = [k for k, v in fixed.items() if settings.get(k) is not None and settings[k] != v]
    if clashes:
        raise RecipeConflictError(r, clashes)
    settings.update(fixed)
    return settings
