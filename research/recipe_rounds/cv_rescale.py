"""Round 10: a fixed rescaling of the embedding, fitted on the training images, judged on training folds.

    python -m research.recipe_rounds.cv_rescale --cv WORK_OF_ROUND_9 [--cache DIR] [--out FILE.json]

Why: the recommended model's distance is the plain squared Euclidean distance between GAP embeddings, so
the few channels with the largest spread decide most rankings. Retrieval practice rescales or whitens the
descriptor on the training set before search; no training run is needed to find out whether that helps
here, only the fold models round 9 already trained (``python -m research.cross_validation.cv_select --fold-seed 2
--disease d_default``, 1 torch thread per fold).

Protocol. For fold f, round 9's ``d_default_f<f>`` model embeds all 2000 training images (2 torch
threads). Each transform is fitted on the four training folds' embeddings only (no labels), applied to
archive and queries alike; fold f's images query the other four folds; votes are distance-weighted, as in
the recipe. The melanoma votes of all 2000 queries are pooled and scored: AUC@k, k = 3, 5, 10, 20, 40, and
their mean. The test split and ham10000_dev are never read.

Candidates (``TRANSFORMS``). Adoptable ones keep the evidence maps as they are meant: a per-channel scale
s > 0 multiplies each channel's map by s, so the maps stay non-negative and their spatial mean is still the
embedding searched with (Eq. 2-3 unchanged); unit length divides a whole image's maps by one number.
- ``std``: each channel divided by its standard deviation over the training images;
- ``sqrt_std``: divided by the square root of it (half way);
- ``l2``: each embedding scaled to unit length;
- ``std+l2``: both.
Measured for information only: ``pcaw256`` and ``pcaw256+l2``, PCA whitening to 256 dimensions (eigenvalues
shrunk by 1e-3 of their mean). A rotation makes the maps signed, so the QAM/RAM would no longer show where
the differing channels fire; none can be adopted this round.

Decision rule, fixed before the first scoring (:func:`decide`): the adoptable candidate with the highest
pooled mean AUC is adopted if it beats ``raw`` by more than 0.005 pooled and has the higher per-fold mean
AUC in at least 4 of 5 folds. An adopted transform then enters the recipe only through the guard of the
recipe rounds: fitted per member on that member's training images, the eight-member ensemble with it must
not score lower than without it on both tunable sets (ISIC 2017 validation split, ham10000_dev tune half);
only then is the test split read, once.

Outcome (2026-11-27, 2.7 min on the 2-core CPU): ``raw`` 0.7701 pooled mean (round 9's ``d_default+distance``
to every digit); the best adoptable, ``sqrt_std``, -0.0047 and 1 of 5 folds: nothing adopted
(research/recipe_rounds/recipe_rounds.md).
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
ADOPTABLE = ("std", "sqrt_std", "l2", "std+l2")
INFORMATION = ("pcaw256", "pcaw256+l2")
MARGIN = 0.005


def fit_transform(name: str, train: np.ndarray):
    """A function embedding -> transformed embedding, fitted on ``train`` (rows are embeddings)."""
    train = np.asarray(train, np.float64)
    steps = name.split("+")
    scale = None
    proj = None
    if "std" in steps or "sqrt_std" in steps:
        sd = train.std(axis=0)
        sd = np.where(sd > 0, sd, sd[sd > 0].mean() if (sd > 0).any() else 1.0)
        scale = 1.0 / (sd if "std" in steps else np.sqrt(sd))
    if "pcaw256" in steps:
        mu = train.mean(axis=0)
        cov = np.cov(train - mu, rowvar=False)
        lam, vec = np.linalg.eigh(cov)
        order = np.argsort(lam)[::-1][:256]
        lam, vec = lam[order], vec[:, order]
        proj = (mu, vec / np.sqrt(lam + 1e-3 * lam.mean()))
    unit = "l2" in steps

    def apply(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if scale is not None:
            x = x * scale
        if proj is not None:
            x = (x - proj[0]) @ proj[1]
        if unit:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x.astype(np.float32)

    return apply


def score(emb: np.ndarray, y: np.ndarray, fold_of: np.ndarray, name: str) -> dict:
    from research.cross_validation.fold_scores import exact, score_folds

    return score_folds(exact(emb, lambda arch, x: fit_transform(name, arch)(x)), y, fold_of)


def decide(table: dict) -> dict:
    raw = table["raw"]
    best = max(ADOPTABLE, key=lambda n: table[n]["pooled_mean"])
    gain = table[best]["pooled_mean"] - raw["pooled_mean"]
    wins = sum(table[best]["per_fold"][f]["mean"] > raw["per_fold"][f]["mean"] for f in raw["per_fold"])
    adopted = gain > MARGIN and wins >= 4
    return {
        "best_adoptable": best,
        "gain": gain,
        "folds_won": wins,
        "adopted": best if adopted else None,
        "decision": f"{best} {'adopted' if adopted else 'not adopted'} ({gain:+.4f} pooled, {wins}/5 folds)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv", type=Path, required=True, help="round 9's work folder (d_default_f0 ... f4)")
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cv_rescale_cache"))
    ap.add_argument("--fold-seed", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "cv_round10.json")
    a = ap.parse_args()
    from chaiderm._io import write_json
    from research.cross_validation.fold_scores import embed_fold_models, training_folds

    t0 = time.perf_counter()
    emb = embed_fold_models([a.cv / f"d_default_f{f}" for f in range(N_FOLDS)], a.isic, a.cache, "d_default")
    t_embed = time.perf_counter() - t0
    y, fold_of = training_folds(a.isic, a.fold_seed)
    table = {n: score(emb, y, fold_of, n) for n in ("raw", *ADOPTABLE, *INFORMATION)}
    for n, e in table.items():
        print(
            f"{n:12s} pooled mean {e['pooled_mean']:.4f}  "
            + " ".join(f"{k}:{v:.3f}" for k, v in e["pooled_auc"].items())
        )
    decision = decide(table)
    print(decision["decision"])
    write_json(
        a.out,
        {
            "candidates": table,
            **decision,
            "fold_seed": a.fold_seed,
            "vote": "distance",
            "models": "cv_round9 d_default_f0..f4 (1 torch thread per fold in training)",
            "embed_threads": 2,
            "embed_s": round(t_embed, 1),
            "wall_s": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
            "date": datetime.date.today().isoformat(),
        },
    )


if __name__ == "__main__":
    main()
