"""What the rounds judged on cached fold embeddings share (``cv_rescale.py``, ``cv_members.py``,
``cv_rerank.py``): round 9's split of the ISIC 2017 training images, and one scoring. Fold f's images query
the other four folds, votes are distance-weighted as in the recipe, and the melanoma votes of all 2000
queries are pooled: AUC@k for k = 3, 5, 10, 20, 40 and their mean, beside each fold's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

KS = (3, 5, 10, 20, 40)
N_FOLDS = 5
# (fold, archive rows, query rows) -> (the archive rows nearest each query, nearest first, as indexes into
# the archive rows; the values their votes are weighed by, 1 / value)
Neighbours = Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def training_folds(isic: Path, fold_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(melanoma (N,), fold of each training image (N,))`` for ``cv_select.py``'s split ``fold_seed``."""
    from chaiderm.data.records import load_table
    from research.cross_validation.cv_select import folds_of

    tr = load_table(isic, "train")
    return tr.is_positive("melanoma"), folds_of(tr.diagnoses, fold_seed)


def embed_fold_models(runs: list[Path], isic: Path, cache: Path, name: str) -> np.ndarray:
    """``(folds, N, D)``: each fold model's embeddings of all training images, cached outside the repo."""
    import torch

    from chaiderm.data.records import load_table
    from chaiderm.data.transforms import prepare
    from chaiderm.models.embedding import load_model
    from chaiderm.models.inference import embed

    torch.set_num_threads(2)
    cache.mkdir(parents=True, exist_ok=True)
    imgs: dict[int, np.ndarray] = {}
    out = []
    for f, run in enumerate(runs):
        path = cache / f"{name}_fold{f}.npy"
        if not path.exists():
            model, cfg = load_model(run)
            if cfg.model.load_size not in imgs:
                imgs[cfg.model.load_size] = prepare(load_table(isic, "train").paths, cfg.model.load_size)[0]
            np.save(path, embed(model, imgs[cfg.model.load_size], cfg.model.image_size)[0])
        out.append(np.load(path))
    return np.stack(out)


def exact(emb: np.ndarray, transform: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Neighbours:
    """Exact squared-distance neighbours in ``emb`` ``(folds, N, D)``; ``transform(archive, x)`` (fitted on the
    archive rows, applied to ``x``) first, where given."""
    from chaiderm.index.faiss_index import exact_search

    def find(f: int, keep: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arch, q = emb[f][keep], emb[f][held]
        if transform is not None:
            arch, q = transform(arch, arch), transform(arch, q)
        dist, rows = exact_search(arch, q, max(KS))
        return rows, dist

    return find


def score_folds(neighbours: Neighbours, y: np.ndarray, fold_of: np.ndarray) -> dict:
    from chaiderm.evaluation.metrics import calculate_auc_at_k

    labs, weights, helds, per_fold = [], [], [], {}
    for f in range(N_FOLDS):
        keep, held = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        rows, w = neighbours(f, keep, held)
        lab = y[keep][rows].astype(float)
        auc = calculate_auc_at_k(lab, y[held], KS, w, "distance")
        per_fold[f] = {"auc": {str(k): v for k, v in auc.items()}, "mean": float(np.mean(list(auc.values())))}
        labs.append(lab)
        weights.append(w)
        helds.append(held)
    pooled = calculate_auc_at_k(np.concatenate(labs), y[np.concatenate(helds)], KS, np.concatenate(weights), "distance")
    return {
        "per_fold": per_fold,
        "pooled_auc": {str(k): v for k, v in pooled.items()},
        "pooled_mean": float(np.mean(list(pooled.values()))),
    }
