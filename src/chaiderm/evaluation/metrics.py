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


def calculate_auc_at_k(neighbor_positive: np.ndarray, y_true: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """ROC AUC of the k-NN vote for each k; ``neighbor_positive`` is ``(n_queries, K)`` 0/1, K >= max(ks)."""
    y = np.asarray(y_true, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("AUC needs both positive and negative queries")
    return {k: float(roc_auc_score(y, knn_vote(neighbor_positive, k))) for k in ks}


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
