"""Rounds 11-20's candidates measured against both seeds of the baseline, not one.

    python -m research.recipe_rounds.cv_seed_yardstick [--out research/recipe_rounds/cv_seed_yardstick.json]

Why: rounds 13-20 each judged one Disease candidate against round 9's ``d_default`` (seed 0), and every one
came out below it. Round 11 trained a second seed of the very same candidate (``d_reseed``) on the same folds:
0.753 pooled mean AUC against seed 0's 0.770. So the yardstick was the higher of two draws of the baseline, and
"lower than d_default" alone says little. This script reads only the committed round files (no training, no
data), and sets every candidate beside seed 0, seed 100 (``d_reseed``) and the mean of the two, fold by fold:
pooled mean AUC@3..40 (distance votes, fold seed 2, the 2000 training-image queries) and the folds won.

It changes no decision: each round's rule was fixed before it ran and stays as it was. It says how to read
the rounds, and what a later round should compare against.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from research._common import study_path

HERE = Path(__file__).resolve().parent
# candidate: the round file holding its distance-vote figures, and the key there (one change each)
CANDIDATES = {
    "d_lite1_224": ("cv_round11.json", "d_lite1_224", "a Lite1 model at 224 (round 11)"),
    "d_ce": ("cv_round13.json", "d_ce+distance", "+ a classifier's cross-entropy (round 13)"),
    "d_lite2": ("cv_round14.json", "d_lite2+distance", "Lite2 at 260 (round 14)"),
    "d_long_aug": ("cv_round15.json", "d_long_aug+distance", "6 epochs, stronger augmentation (round 15)"),
    "d_freeze1": ("cv_round16.json", "d_freeze1+distance", "the stem alone frozen (round 16)"),
    "d_dim256": ("cv_round17.json", "d_dim256+distance", "a 256-d embedding (round 17)"),
    "d_freeze12": ("cv_round18.json", "d_freeze12+distance", "12 stages frozen (round 18)"),
    "d_batch96": ("cv_round19.json", "d_batch96+distance", "batches of 96 (round 19)"),
    "d_batch24": ("cv_round20.json", "d_batch24+distance", "batches of 24 (round 20)"),
}
SEEDS = ("cv_round11.json", "d_default", "d_reseed")  # round 11 scored both seeds with distance votes


def _fold_means(entry: dict) -> dict[str, float]:
    return {f: float(v["mean"]) for f, v in entry["per_fold"].items()}


def compare(candidate: dict, seed_a: dict, seed_b: dict) -> dict:
    """One candidate against two seeds of the baseline: pooled-mean differences and folds won against each
    seed and against their per-fold mean."""
    fc, fa, fb = _fold_means(candidate), _fold_means(seed_a), _fold_means(seed_b)
    if not set(fc) == set(fa) == set(fb):
        raise ValueError(f"folds differ: {sorted(fc)} / {sorted(fa)} / {sorted(fb)}")
    mean_ab = {f: (fa[f] + fb[f]) / 2 for f in fa}
    pc, pa, pb = candidate["pooled_mean"], seed_a["pooled_mean"], seed_b["pooled_mean"]
    return {
        "pooled_mean": pc,
        "vs_seed0": pc - pa,
        "vs_seed100": pc - pb,
        "vs_seed_mean": pc - (pa + pb) / 2,
        "folds_won_vs_seed0": sum(fc[f] > fa[f] for f in fc),
        "folds_won_vs_seed100": sum(fc[f] > fb[f] for f in fc),
        "folds_won_vs_seed_mean": sum(fc[f] > mean_ab[f] for f in fc),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "cv_seed_yardstick.json")
    args = ap.parse_args()
    seeds = json.loads((HERE / SEEDS[0]).read_text())["candidates"]
    a, b = seeds[SEEDS[1]], seeds[SEEDS[2]]
    rows = {}
    print(f"seed 0 {a['pooled_mean']:.3f}, seed 100 {b['pooled_mean']:.3f}")
    print(f"{'candidate':<46} pooled  vs seed 0  vs seed 100  vs mean  folds won (0 / 100 / mean)")
    for name, (file, key, what) in CANDIDATES.items():
        entry = json.loads((HERE / file).read_text())["candidates"][key]
        r = compare(entry, a, b) | {"what": what, "from": study_path(HERE / file)}
        rows[name] = r
        print(
            f"{what:<46} {r['pooled_mean']:.3f}  {r['vs_seed0']:+.3f}    {r['vs_seed100']:+.3f}       "
            f"{r['vs_seed_mean']:+.3f}   {r['folds_won_vs_seed0']} / {r['folds_won_vs_seed100']} / "
            f"{r['folds_won_vs_seed_mean']}"
        )
    out = {
        "seeds": {"seed0": a["pooled_mean"], "seed100": b["pooled_mean"], "from": study_path(HERE / SEEDS[0])},
        "candidates": rows,
        "date": datetime.date.today().isoformat(),
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
