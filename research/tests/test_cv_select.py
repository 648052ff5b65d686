"""The cross-validated selection of research/cross_validation/cv_select.py: its folds and its decision rule."""

import numpy as np
import pytest

from research.cross_validation import cv_select as cv
from research.recipe_rounds import cv_seed_yardstick as ys

N, K = 100, 40
RNG = np.random.default_rng(0)
Y = np.zeros(N, bool)
Y[RNG.choice(N, 20, replace=False)] = True
Y_VA = np.array([True] * 5 + [False] * 15)
HELD = [list(range(f, N, 5)) for f in range(5)]


def _noisy(rows: list[int], seed: int) -> list[list[int]]:
    """Neighbour melanoma labels that carry some, not all, of the truth."""
    r = np.random.default_rng(seed)
    p = np.where(Y[rows], 0.45, 0.25)[:, None]
    return (r.random((len(rows), K)) < p).astype(int).tolist()


def _perfect(rows: list[int]) -> list[list[int]]:
    return np.repeat(Y[rows, None], K, axis=1).astype(int).tolist()


def _cand(neigh: list[list[int]]) -> dict:
    val = np.repeat(Y_VA[:, None], K, axis=1).astype(int).tolist()
    return {"neighbour_melanoma": neigh, "val_neighbour_melanoma": val, "history": [{"best_epoch": 1}], "seconds": 1.0}


def _folds(other: dict[str, callable], n_folds: int = 5) -> list[dict]:
    folds = []
    for f in range(n_folds):
        c = {"d_default": _cand(_noisy(HELD[f], f)), "h_default": _cand(_noisy(HELD[f], 10 + f))}
        for name, make in other.items():
            got = make(f)
            if got is not None:
                c[name] = _cand(got)
        folds.append({"fold": f, "held": HELD[f], "candidates": c})
    return folds


def test_folds_are_a_stratified_partition_and_change_with_the_fold_seed():
    dis = ["melanoma"] * 37 + ["nevus"] * 50 + ["seborrheic_keratosis"] * 13
    a, again, other = cv.folds_of(dis), cv.folds_of(dis), cv.folds_of(dis, 1)
    assert set(a.tolist()) == set(range(5)) and np.array_equal(a, again) and not np.array_equal(a, other)
    for d in set(dis):
        counts = np.bincount(a[np.array(dis) == d], minlength=5)
        assert counts.max() - counts.min() <= 1, d


def test_a_clearly_better_candidate_replaces_the_defaults():
    s = cv.summarise_folds(_folds({"h_ema": lambda f: _perfect(HELD[f])}), Y, Y_VA)
    assert s["chosen"] == "h_ema" and "replaces" in s["decision"]
    assert s["candidates"]["h_ema"]["pooled_mean"] == pytest.approx(1.0)
    assert s["candidates"]["h_default"]["pooled_mean"] < 0.9


def test_a_candidate_must_win_four_folds_and_finish_all_five():
    # perfect on three folds, the default's own votes on two: pooled better, but 3 wins of 5
    three = {"h_ema": lambda f: _perfect(HELD[f]) if f < 3 else _noisy(HELD[f], 10 + f)}
    s = cv.summarise_folds(_folds(three), Y, Y_VA)
    assert s["candidates"]["h_ema"]["pooled_mean"] > s["candidates"]["h_default"]["pooled_mean"] + 0.01
    assert s["chosen"] == "h_default" and "wins 3/5" in s["decision"]
    # perfect but unfinished (four folds): reported, never chosen
    s = cv.summarise_folds(_folds({"h_lowlr": lambda f: _perfect(HELD[f]) if f < 4 else None}), Y, Y_VA)
    assert s["candidates"]["h_lowlr"]["folds"] == [0, 1, 2, 3] and "pooled_mean" not in s["candidates"]["h_lowlr"]
    assert s["chosen"] == "h_default"


def test_an_equal_candidate_leaves_the_defaults():
    s = cv.summarise_folds(_folds({"h_ema": lambda f: _noisy(HELD[f], 10 + f)}), Y, Y_VA)
    assert s["chosen"] == "h_default" and s["decision"].startswith("defaults stay")


def _table_with(views: dict[str, callable], disease_views: dict[str, callable]) -> dict:
    """A summary where h_groups_half / d_default have the default's votes and the views' votes given."""
    other = {"h_groups_half": lambda f: _noisy(HELD[f], 10 + f), "d_default": lambda f: _noisy(HELD[f], f)}
    other.update({f"h_groups_half+{v}": make for v, make in views.items()})
    other.update({f"d_default+{v}": make for v, make in disease_views.items()})
    return cv.summarise_folds(_folds(other), Y, Y_VA)["candidates"]


def test_views_rule_needs_a_gain_four_folds_and_no_disease_loss():
    same_d = lambda f: _noisy(HELD[f], f)  # noqa: E731
    perfect = lambda f: _perfect(HELD[f])  # noqa: E731
    r = cv.decide_views(_table_with({"flip": perfect}, {"flip": same_d}))
    assert r["chosen"] == "flip" and r["views"]["flip"]["wins"] == 5
    # the Disease model must not lose
    worse_d = lambda f: _noisy(HELD[f], 100 + f) if f else [[0] * K for _ in HELD[f]]  # noqa: E731
    r = cv.decide_views(_table_with({"flip": perfect}, {"flip": worse_d}))
    assert r["views"]["flip"]["disease_gain"] < 0 and r["chosen"] == "none"
    # no gain: plain inference stays
    r = cv.decide_views(_table_with({"flip": lambda f: _noisy(HELD[f], 10 + f)}, {"flip": same_d}))
    assert r["views"]["flip"]["gain"] == pytest.approx(0) and r["chosen"] == "none"
    # both pass equally: the cheaper set is taken
    r = cv.decide_views(_table_with({"flip": perfect, "flip4": perfect}, {"flip": same_d, "flip4": same_d}))
    assert r["chosen"] == "flip" and r["views"]["flip4"]["passes"]


def test_groups_rule_needs_ten_folds_a_margin_and_seven_wins():
    def split(better_folds: int) -> dict:
        other = {"h_groups_half": lambda f: _perfect(HELD[f]) if f < better_folds else _noisy(HELD[f], 10 + f)}
        return cv.summarise_folds(_folds(other), Y, Y_VA)

    r = cv.compare_over_splits([split(5), split(3)])
    assert r["folds"] == 10 and r["wins"] == 8 and r["mean_diff"] > 0.01 and r["keeps"] == "h_groups_half"
    r = cv.compare_over_splits([split(3), split(3)])
    assert r["wins"] == 6 and r["keeps"] == "h_default"
    r = cv.compare_over_splits([split(5)])  # one split is not enough
    assert r["folds"] == 5 and r["keeps"] == "h_default"
    # three splits: two thirds of fifteen folds, 10, must be won
    r = cv.compare_over_splits([split(5), split(3), split(2)])
    assert r["folds"] == 15 and r["wins"] == 10 and r["keeps"] == "h_groups_half"
    r = cv.compare_over_splits([split(5), split(2), split(2)])
    assert r["wins"] == 9 and r["keeps"] == "h_default"


def _colour_run(h: callable, d: callable, n_folds: int = 5) -> dict:
    """A round-6 style run: only the colour candidates, defaults merged from an earlier run's JSON."""
    import json

    base = json.loads(json.dumps(cv.summarise_folds(_folds({}), Y, Y_VA)))  # per-fold keys become strings
    folds = [
        {"fold": f, "held": HELD[f], "candidates": {"h_colour": _cand(h(f)), "d_colour": _cand(d(f))}}
        for f in range(n_folds)
    ]
    return cv.merge_baseline(cv.summarise_folds(folds, Y, Y_VA)["candidates"], base)


def _colour_rule(table: dict) -> dict:
    return cv.decide_pair(table, "h_colour", "d_colour")


def test_colour_rule_needs_a_gain_four_folds_and_no_disease_loss():
    same_d = lambda f: _noisy(HELD[f], f)  # noqa: E731  (the default Disease model's votes)
    perfect = lambda f: _perfect(HELD[f])  # noqa: E731
    t = _colour_run(perfect, same_d)
    assert t["h_default"]["from_baseline"] and set(t["h_default"]["per_fold"]) == set(range(5))
    r = _colour_rule(t)
    assert r["adopt"] and r["wins"] == 5 and r["disease_gain"] == pytest.approx(0)
    worse_d = lambda f: [[0] * K for _ in HELD[f]]  # noqa: E731
    assert not _colour_rule(_colour_run(perfect, worse_d))["adopt"]
    assert not _colour_rule(_colour_run(lambda f: _noisy(HELD[f], 10 + f), same_d))["adopt"]
    # perfect on three folds only: a pooled gain, but 3 wins of 5
    three = lambda f: _perfect(HELD[f]) if f < 3 else _noisy(HELD[f], 10 + f)  # noqa: E731
    r = _colour_rule(_colour_run(three, same_d))
    assert r["gain"] > 0.01 and r["wins"] == 3 and not r["adopt"]
    assert _colour_rule(_colour_run(perfect, same_d, n_folds=4)) == {"adopt": False, "why": "unfinished"}


def test_round8_scores_distance_votes_from_stored_distances_and_applies_its_rules():
    folds = _folds({})
    for f in folds:
        rows = HELD[f["fold"]]
        lab = np.asarray(_noisy(rows, 20 + f["fold"]))
        r = np.random.default_rng(f["fold"])
        # neighbours that share the query's label are nearer: a distance vote can only gain
        dist = 1 + r.random(lab.shape) - 0.9 * (lab == Y[rows, None])
        plain = {
            **_cand(lab.tolist()),
            "neighbour_distance": dist.tolist(),
            "val_neighbour_distance": np.ones((len(Y_VA), K)).tolist(),
        }
        f["candidates"]["d_ham"] = plain
        f["candidates"]["d_ham+distance"] = {**plain, "vote": "distance"}
        f["candidates"]["d_ham+archive_ham"] = plain
        f["candidates"]["d_ham+archive_ham+distance"] = {**plain, "vote": "distance"}
    s = cv.summarise_folds(folds, Y, Y_VA)
    table = s["candidates"]
    # the pooled distance-weighted AUC is the one computed by hand from the stored distances
    from sklearn.metrics import roc_auc_score

    from chaiderm.index.knn import knn_vote

    lab = np.concatenate([np.asarray(f["candidates"]["d_ham"]["neighbour_melanoma"]) for f in folds])
    dist = np.concatenate([np.asarray(f["candidates"]["d_ham"]["neighbour_distance"]) for f in folds])
    held = np.concatenate([f["held"] for f in folds])
    want = roc_auc_score(Y[held], knn_vote(lab, 20, dist, "distance"))
    assert table["d_ham+distance"]["pooled_auc"]["20"] == pytest.approx(want)
    assert table["d_ham+distance"]["pooled_auc"]["20"] != pytest.approx(table["d_ham"]["pooled_auc"]["20"])
    rules = cv.decide_round8(table)
    assert rules["vote"]["passes"] and rules["vote"]["wins"] >= 4
    assert not rules["archive"]["passes"]  # the same neighbours: no gain
    assert not rules["training_data"]["passes"]  # no better than d_default's noisy labels
    # an unfinished candidate passes nothing
    assert cv.decide_round8({})["training_data"] == {"passes": False, "why": "unfinished"}


def test_round9_prefers_the_cheaper_view_set_unless_the_dearer_adds_more():
    def entry(per_fold_means: list[float], pooled: float) -> dict:
        return {"pooled_mean": pooled, "per_fold": {f: {"mean": m} for f, m in enumerate(per_fold_means)}}

    base = entry([0.70] * 5, 0.700)
    table = {
        "d_default+distance": base,
        "d_default+flip+distance": entry([0.71] * 5, 0.710),  # +0.010, every fold
        "d_default+flip4+distance": entry([0.713] * 5, 0.713),  # only 0.003 more: the cheaper set stays
    }
    r = cv.decide_round9(table)
    assert r["chosen"] == "flip" and r["views"]["flip4"]["passes"]
    table["d_default+flip4+distance"] = entry([0.72] * 5, 0.720)  # 0.010 more than flip: worth its cost
    assert cv.decide_round9(table)["chosen"] == "flip4"
    table["d_default+flip4+distance"] = entry([0.75, 0.75, 0.69, 0.69, 0.69], 0.720)  # wins 2 of 5 folds only
    table["d_default+flip+distance"] = entry([0.69] * 5, 0.690)
    assert cv.decide_round9(table)["chosen"] == "none"


def test_single_change_rounds_need_a_margin_and_four_folds():
    """Rounds 13-20: a candidate joins only with > 0.01 pooled mean AUC over d_default and 4 of 5 folds won."""

    def entry(pooled, folds):
        return {"pooled_mean": pooled, "per_fold": {str(f): {"mean": m} for f, m in enumerate(folds)}}

    base = entry(0.770, [0.79, 0.77, 0.80, 0.73, 0.74])
    better = entry(0.785, [0.80, 0.78, 0.81, 0.74, 0.73])  # +0.015, 4 folds won
    narrow = entry(0.778, [0.80, 0.78, 0.81, 0.74, 0.75])  # every fold, but +0.008
    lucky = entry(0.790, [0.80, 0.78, 0.79, 0.72, 0.73])  # +0.02, 2 folds won
    for cand, expect in (("d_ce", True), ("d_lite2", False), ("d_long_aug", False)):
        cands = {"d_default+distance": base, f"{cand}+distance": {"d_ce": better, "d_lite2": narrow}.get(cand, lucky)}
        (rule,) = cv.decide_single_change(cands, cand).values()
        assert rule["passes"] is expect, (cand, rule)
    (rule,) = cv.decide_single_change({"d_default+distance": base}, "d_freeze1").values()
    assert rule == {"passes": False, "why": "unfinished"}


def test_seed_yardstick_sets_a_candidate_beside_both_seeds_and_reads_the_committed_rounds(capsys, tmp_path):
    """research/recipe_rounds/cv_seed_yardstick.py: differences and folds won against each seed and their
    per-fold mean; it runs on the committed round files alone (no data, no training)."""

    def entry(pooled, folds):
        return {"pooled_mean": pooled, "per_fold": {str(f): {"mean": m} for f, m in enumerate(folds)}}

    seed0, seed100 = entry(0.77, [0.80, 0.78, 0.80, 0.73, 0.74]), entry(0.75, [0.78, 0.71, 0.76, 0.74, 0.77])
    r = ys.compare(entry(0.76, [0.795, 0.75, 0.79, 0.74, 0.75]), seed0, seed100)
    assert r["vs_seed0"] == pytest.approx(-0.01) and r["vs_seed100"] == pytest.approx(0.01)
    assert r["vs_seed_mean"] == pytest.approx(0.0)
    assert (r["folds_won_vs_seed0"], r["folds_won_vs_seed100"], r["folds_won_vs_seed_mean"]) == (2, 3, 4)
    with pytest.raises(ValueError, match="folds differ"):
        ys.compare(entry(0.76, [0.7] * 4), seed0, seed100)
    out = tmp_path / "y.json"
    import sys

    argv, sys.argv = sys.argv, ["cv_seed_yardstick.py", "--out", str(out)]
    try:
        ys.main()
    finally:
        sys.argv = argv
    import json

    written = json.loads(out.read_text())
    assert set(written["candidates"]) == set(ys.CANDIDATES)
    assert written["seeds"]["seed0"] > written["seeds"]["seed100"]  # round 11: seed 0 was the higher draw
