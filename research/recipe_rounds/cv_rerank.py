"""Round 12: rank the archive by distance in units of each case's own neighbourhood, on training folds.

    python -m research.recipe_rounds.cv_rerank --cache DIR_OF_ROUND_11 [--out research/recipe_rounds/cv_round12.json]

Why: in a high-dimensional embedding some archive cases ("hubs") sit near very many queries and vote for
all of them, while cases in sparse regions rarely vote at all. Rescaling each case's distances by how far
its own archive neighbours are (local scaling, Zelnik-Manor & Perona 2004; CSLS, Conneau et al. 2018) is
the usual remedy, and needs no training: one number per archive case, computed from the archive alone.

Protocol. The embeddings round 11 cached (``python -m research.recipe_rounds.cv_members --cache``: round 9's
``d_default`` fold models and round 11's ``d_reseed``; fold seed 2). For fold f, the four other folds are the archive;
s_r is the mean squared distance of archive case r to its 10 nearest other archive cases. Fold f queries them;
neighbours and votes by candidate, pooled over the 2000 queries: melanoma AUC@3..40 and their mean.
- ``plain``: squared distance d(q, r), votes weighed by 1 / d (the recipe);
- ``local``: d(q, r) / s_r, for the ranking and the votes (1 / that);
- ``csls``: d(q, r) - s_r for the ranking, votes weighed by 1 / d(q, r) of the cases it ranks first.
Each is scored on the single ``d_default`` models and on the two-seed ensemble ``d_default + d_reseed``.
The test split and ham10000_dev are never read.

Decision rule, fixed before the first scoring (:func:`decide`): a candidate passes if, on ``d_default``,
it beats ``plain`` by more than 0.005 pooled mean AUC and wins at least 4 of 5 folds, and on the two-seed
ensemble its pooled mean AUC is not below ``plain``'s; of two that pass, the higher pooled mean on
``d_default`` wins. A candidate that passes then meets the recipe's guard (the eight-member recipe with and
without it on the ISIC validation split and the ham10000_dev tune half) before the test split is read once.
The evidence maps explain d(q, r); a re-ranked result would say so in its explanation.

Outcome (2026-11-27): on ``d_default`` local -0.001 (2 of 5 folds), csls +0.000 (3 of 5); on the pair +0.005 and
+0.004: nothing adopted (research/recipe_rounds/recipe_rounds.md).
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
KS = (3, 5, 10, 20, 40)
N_FOLDS = 5
N_LOCAL = 10
MARGIN = 0.005
CANDIDATES = ("local", "csls")


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def local_scale(archive: np.ndarray, n: int = N_LOCAL) -> np.ndarray:
    """s_r: mean squared distance of each archive case to its ``n`` nearest other archive cases."""
    d = sq_dist(archive, archive)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :n].mean(1)


def neighbours(name: str, d: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` first archive cases per query and the values their votes are weighed by (1 / value)."""
    rank = {"plain": d, "local": d / s[None, :], "csls": d - s[None, :]}[name]
    rows = np.argsort(rank, axis=1, kind="stable")[:, :k]
    weigh = rank if name == "local" else d
    return rows, np.take_along_axis(weigh, rows, axis=1)


def score(emb: np.ndarray, y: np.ndarray, fold_of: np.ndarray, name: str) -> dict:
    from research.cross_validation.fold_scores import score_folds

    def find(f: int, keep: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arch = emb[f][keep]
        return neighbours(name, sq_dist(emb[f][held], arch), local_scale(arch), max(KS))

    return score_folds(find, y, fold_of)


def decide(single: dict, pair: dict) -> dict:
    verdicts = {}
    for n in CANDIDATES:
        gain = single[n]["pooled_mean"] - single["plain"]["pooled_mean"]
        wins = sum(single[n]["per_fold"][f]["mean"] > single["plain"]["per_fold"][f]["mean"] for f in range(N_FOLDS))
        pair_gain = pair[n]["pooled_mean"] - pair["plain"]["pooled_mean"]
        verdicts[n] = {
            "gain": gain,
            "folds_won": wins,
            "pair_gain": pair_gain,
            "passes": gain > MARGIN and wins >= 4 and pair_gain >= 0,
        }
    passing = [n for n in CANDIDATES if verdicts[n]["passes"]]
    chosen = max(passing, key=lambda n: single[n]["pooled_mean"]) if passing else None
    return {"verdicts": verdicts, "adopted": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="cv_members.py's cache (d_default, d_reseed)")
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--fold-seed", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "cv_round12.json")
    a = ap.parse_args()
    from chaiderm._io import write_json
    from research.cross_validation.fold_scores import training_folds

    t0 = time.perf_counter()
    y, fold_of = training_folds(a.isic, a.fold_seed)

    def load(name: str) -> np.ndarray:
        return np.stack([np.load(a.cache / f"{name}_fold{f}.npy") for f in range(N_FOLDS)])

    single_emb = load("d_default")
    pair_emb = np.concatenate([single_emb, load("d_reseed")], axis=2)
    tables = {}
    for label, emb in (("d_default", single_emb), ("d_default+d_reseed", pair_emb)):
        tables[label] = {n: score(emb, y, fold_of, n) for n in ("plain", *CANDIDATES)}
        for n, e in tables[label].items():
            aucs = " ".join(f"{k}:{v:.3f}" for k, v in e["pooled_auc"].items())
            print(f"{label:20s} {n:6s} pooled mean {e['pooled_mean']:.4f}  {aucs}")
    decision = decide(tables["d_default"], tables["d_default+d_reseed"])
    print("adopted:", decision["adopted"], decision["verdicts"])
    write_json(
        a.out,
        {
            "candidates": tables,
            **decision,
            "n_local": N_LOCAL,
            "fold_seed": a.fold_seed,
            "wall_s": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
            "date": datetime.date.today().isoformat(),
        },
    )


if __name__ == "__main__":
    main()
