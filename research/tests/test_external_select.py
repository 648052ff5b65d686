"""research/external/external_select.py: its fixed halves of ham10000_dev and its decision rule."""

import numpy as np

from research.external import external_select as ex


def test_halves_split_every_diagnosis_and_never_change():
    dx = ["melanoma"] * 7 + ["nevus"] * 10 + ["dermatofibroma"] * 3
    tune, report = ex.halves(dx)
    assert set(tune) | set(report) == set(range(20)) and not set(tune) & set(report)
    for d, n in (("melanoma", 7), ("nevus", 10), ("dermatofibroma", 3)):
        assert sum(dx[i] == d for i in tune) == n // 2, d
    again = ex.halves(dx)
    assert np.array_equal(tune, again[0]) and not np.array_equal(tune, ex.halves(dx, seed=1)[0])


def _res(ham20: float, val: float) -> dict:
    return {"ham": {"20": ham20}, "val": {"3": val, "20": val}}


def test_the_rule_needs_a_gain_on_every_seed_and_no_loss_on_isic():
    base = {0: _res(0.60, 0.80), 1: _res(0.58, 0.78)}
    results = {
        "default": base,
        "colour": {0: _res(0.66, 0.80), 1: _res(0.63, 0.79)},  # +0.055 on both seeds
        "zoom": {0: _res(0.70, 0.80), 1: _res(0.57, 0.78)},  # more on average, lost on seed 1
        "colour_zoom": {0: _res(0.70, 0.70), 1: _res(0.70, 0.70)},  # bought with ISIC accuracy
    }
    d = ex.decide(results)
    assert d["chosen"] == "colour"
    assert not d["candidates"]["zoom"]["passes"] and not d["candidates"]["colour_zoom"]["passes"]
    assert d["candidates"]["colour_zoom"]["val_gap"] < -0.02
    # one seed missing: unfinished, never chosen
    d = ex.decide({"default": base, "colour": {0: _res(0.9, 0.9)}})
    assert d["chosen"] == "default" and d["candidates"]["colour"]["why"] == "unfinished"
