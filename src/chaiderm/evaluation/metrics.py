"""Metric functions over plain arrays (``calculate_<name>``, as pytorch-metric-learning's)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score

from chaiderm.evidence.maps import normalise, upsample
from chaiderm.index.knn import knn_vote, relevance_at_k

# Localisation threshold, fixed in advance: a pixel is "highlighted" when its map value is at least
# half-way between the map's minimum and maximum.
JACCARD_THRESHOLD = 0.5


def calculate_auc_at_k(
    neighbor_positive: np.ndarray,
    y_true: np.ndarray,
    ks: Iterable[int],
    distances: np.ndarray | None = None,
    weights: str = "uniform",
) -> dict[int, float]:
    """ROC AUC of the k-NN vote for each k; ``neighbor_positive`` is ``(n_queries, K)`` 0/1, K >= max(ks);
    ``weights`` / ``distances`` as in :func:`chaiderm.index.knn.knn_vote`."""
    y = np.asarray(y_true, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("AUC needs both positive and negative queries")
    return {k: float(roc_auc_score(y, knn_vote(neighbor_positive, k, distances, weights))) for k in ks}


def calculate_rel_at_k(query_groups: np.ndarray, neighbor_groups: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """REL@k: mean number of the k results in the query's own group, over queries with a group."""
    has = np.asarray(query_groups) >= 0
    if not has.any():
        raise ValueError("REL needs queries with a group")
    return {k: float(relevance_at_k(query_groups[has], neighbor_groups[has], k).mean()) for k in ks}


def threshold_map(amap: np.ndarray, shape: tuple[int, int], threshold: float = JACCARD_THRESHOLD) -> np.ndarray:
    return normalise(upsample(amap, shape)) >= threshold


def calculate_jaccard(amap: np.ndarray, mask: np.ndarray, threshold: float = JACCARD_THRESHOLD) -> float:
    """Jaccard (IoU) of the thresholded, upsampled map against a boolean lesion mask."""
    pred = threshold_map(amap, mask.shape, threshold)
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union) if union else 0.0


def calculate_mass_in_mask(amap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's mass that falls inside the mask."""
    m = np.clip(upsample(amap, mask.shape), 0, None)
    total = m.sum()
    return float(m[mask].sum() / total) if total > 0 else 0.0


def centred_gaussian(shape: tuple[int, int], sigma_frac: float = 0.25) -> np.ndarray:
    """The reference a real evidence map must beat: a Gaussian centred in the image (lesions usually are)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    s = sigma_frac * min(h, w)
    return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * s * s))).astype(np.float32)


def _resamples(y: np.ndarray, n_boot: int, seed: int):
    """Bootstrap index sets over the queries, skipping draws that lack one of the two classes."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].any() and not y[i].all():
            yield i


def bootstrap_mean_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap confidence interval of a mean over queries (P@k, REL@k)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n_boot)]
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def bootstrap_auc_ci(
    y: np.ndarray, score: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC AUC (queries resampled with replacement)."""
    y = np.asarray(y, bool)
    aucs = [roc_auc_score(y[i], score[i]) for i in _resamples(y, n_boot, seed)]
    lo, hi = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_bootstrap_test(
    y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Two-sided paired bootstrap test of AUC(a) - AUC(b) on the same queries."""
    y = np.asarray(y, bool)
    d = np.array(
        [roc_auc_score(y[i], score_a[i]) - roc_auc_score(y[i], score_b[i]) for i in _resamples(y, n_boot, seed)]
    )
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {
        "auc_diff": float(roc_auc_score(y, score_a) - roc_auc_score(y, score_b)),
        "p_value": float(min(p, 1.0)),
        "ci_low": float(np.percentile(d, 2.5)),
        "ci_high": float(np.percentile(d, 97.5)),
    }
