"""Round 11: is a Lite1 model a better second member than another Lite0 seed? Judged on training folds.

    python -m research.cross_validation.cv_select --fold-seed 2 --workers 2 --disease d_reseed d_lite1_224 \
        --work W11 --out F
    python -m research.recipe_rounds.cv_members --cv9 WORK_OF_ROUND_9 --cv11 W11 [--cache DIR] [--out FILE.json]

Why: the recommended model's eight members differ only by their training seed, and more seeds stopped
paying (recipe rounds 3-4, research/recipe_rounds/recipe_rounds.md). Members that differ by more than the
seed may err in other places. EfficientNet-Lite1 is the next backbone; it runs at Lite0's 224 input here
because an ensemble's members must see one input (``models/ensemble.py``).

Protocol. Split and seeds of round 9 (fold seed 2, training seeds 10-14, 1 torch thread per fold):
``d_default`` is round 9's model; ``d_reseed`` is the same candidate from seed + 100; ``d_lite1_224`` is
Lite1 with every other setting at the default. For fold f, each pair's embeddings are concatenated (what
``chaiderm ensemble`` builds), fold f's images query the other four folds, votes are distance-weighted, and
the votes of all 2000 queries are pooled: melanoma AUC@k, k = 3, 5, 10, 20, 40, and their mean. Each model
alone is scored too. The test split and ham10000_dev are never read.

Decision rule, fixed before the models were trained (:func:`decide`): Lite1 members join the recipe if the
pair ``d_default + d_lite1_224`` beats ``d_default + d_reseed`` by more than 0.005 pooled mean AUC and has
the higher per-fold mean AUC in at least 4 of 5 folds. Adopting also needs a recipe round of its own
(a member count within 150 ms at the 95th percentile, measured first, since a Lite1 member shares no stem
with Lite0 ones, and the guard on the validation split and the ham10000_dev tune half).

Outcome (2026-11-27, 2-core CPU; 31 min of training, 4.5 min here): the Lite1 pair 0.7719 pooled mean against
the seed pair's 0.7725 (-0.0006, 2 of 5 folds): not adopted (research/recipe_rounds/recipe_rounds.md).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np

from research._common import ISIC

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = ISIC
N_FOLDS = 5
MARGIN = 0.005
PAIRS = {"seed_pair": ("d_default", "d_reseed"), "lite1_pair": ("d_default", "d_lite1_224")}


def score(emb: np.ndarray, y: np.ndarray, fold_of: np.ndarray) -> dict:
    from research.cross_validation.fold_scores import exact, score_folds

    return score_folds(exact(emb), y, fold_of)


def decide(table: dict) -> dict:
    a, b = table["lite1_pair"], table["seed_pair"]
    gain = a["pooled_mean"] - b["pooled_mean"]
    wins = sum(a["per_fold"][f]["mean"] > b["per_fold"][f]["mean"] for f in b["per_fold"])
    passes = gain > MARGIN and wins >= 4
    return {
        "gain": gain,
        "folds_won": wins,
        "passes": passes,
        "decision": f"Lite1 as a member {'passes' if passes else 'does not pass'} ({gain:+.4f} pooled, {wins}/5 folds)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv9", type=Path, required=True, help="round 9's work folder (d_default_f0 ... f4)")
    ap.add_argument("--cv11", type=Path, required=True, help="this round's work folder (d_reseed_f*, d_lite1_224_f*)")
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cv_members_cache"))
    ap.add_argument("--fold-seed", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "cv_round11.json")
    a = ap.parse_args()
    from chaiderm._io import write_json
    from research.cross_validation.fold_scores import embed_fold_models, training_folds

    t0 = time.perf_counter()
    y, fold_of = training_folds(a.isic, a.fold_seed)
    homes = {"d_default": a.cv9, "d_reseed": a.cv11, "d_lite1_224": a.cv11}
    emb = {
        n: embed_fold_models([h / f"{n}_f{f}" for f in range(N_FOLDS)], a.isic, a.cache, n) for n, h in homes.items()
    }
    table = {n: score(e, y, fold_of) for n, e in emb.items()}
    for pair, (m1, m2) in PAIRS.items():
        table[pair] = score(np.concatenate([emb[m1], emb[m2]], axis=2), y, fold_of)
    for n, e in table.items():
        aucs = " ".join(f"{k}:{v:.3f}" for k, v in e["pooled_auc"].items())
        print(f"{n:12s} pooled mean {e['pooled_mean']:.4f}  {aucs}")
    decision = decide(table)
    print(decision["decision"])
    write_json(
        a.out,
        {
            "candidates": table,
            **decision,
            "pairs": {k: list(v) for k, v in PAIRS.items()},
            "fold_seed": a.fold_seed,
            "vote": "distance",
            "training_threads_per_fold": 1,
            "embed_threads": 2,
            "wall_s": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
            "date": datetime.date.today().isoformat(),
        },
    )


if __name__ == "__main__":
    main()
