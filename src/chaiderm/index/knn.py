"""The kNN vote: melanoma probability = share of melanoma among the k nearest archive cases, each case one
vote or weighed by 1 / squared distance (``VOTES``)."""

from __future__ import annotations

import numpy as np

from chaiderm.config import check_setting, choices
from chaiderm.index.faiss_index import build_faiss

VOTES = choices("vote")


def check_vote(vote: str) -> str:
    """``vote`` if it is one of ``VOTES``, else a ``config.SettingError`` naming the setting."""
    return check_setting("vote", vote)


def vote_weights(distances: np.ndarray, vote: str) -> np.ndarray:
    """Each neighbour's weight in the vote: 1 (uniform) or 1 / (squared distance + 1e-6) (distance)."""
    d = np.asarray(distances, dtype=np.float64)
    return np.ones_like(d) if check_vote(vote) == "uniform" else 1.0 / (d + 1e-6)


def knn_vote(
    neighbor_positive: np.ndarray, k: int, distances: np.ndarray | None = None, weights: str = "uniform"
) -> np.ndarray:
    """Average vote of the first ``k`` columns of ``(n_queries, K)`` 0/1 neighbour labels.

    ``weights="distance"`` weighs each neighbour by 1 / (squared distance + 1e-6).
    """
    if k < 1 or k > neighbor_positive.shape[1]:
        raise ValueError(f"k={k} outside 1..{neighbor_positive.shape[1]}")
    votes = neighbor_positive[:, :k].astype(np.float64)
    if check_vote(weights) == "uniform":
        return votes.mean(axis=1)
    if distances is None:
        raise ValueError("distance weights need distances")
    w = vote_weights(distances[:, :k], "distance")
    return (votes * w).sum(1) / w.sum(1)


def class_distribution(
    neighbor_diagnoses: list[str], classes: list[str], weights: np.ndarray | None = None
) -> dict[str, float]:
    """Share of each of ``classes`` among the neighbours, largest first (ties: the order of ``classes``);
    ``weights`` (one per neighbour, e.g. :func:`vote_weights`) make it a weighted share."""
    w = np.ones(len(neighbor_diagnoses)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    shares = {
        c: (float(sum(wi for d, wi in zip(neighbor_diagnoses, w, strict=True) if d == c)) / total if total else 0.0)
        for c in classes
    }
    return dict(sorted(shares.items(), key=lambda x: -x[1]))


def relevance_at_k(query_groups: np.ndarray, neighbor_groups: np.ndarray, k: int) -> np.ndarray:
    """REL@k per query: how many of the k results are in the query's own group (group codes >= 0)."""
    return ((neighbor_groups[:, :k] == query_groups[:, None]) & (query_groups[:, None] >= 0)).sum(1)


class KNNMelanomaClassifier:
    """scikit-learn style: ``fit(embeddings, labels)``, ``kneighbors``, ``predict_proba``, ``score``."""

    def __init__(self, n_neighbors: int = 10, *, weights: str = "uniform", positive_class: str = "melanoma"):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.positive_class = positive_class

    def fit(self, embeddings: np.ndarray, labels) -> KNNMelanomaClassifier:
        labels = np.asarray(labels)
        if len(labels) != len(embeddings):
            raise ValueError("embeddings and labels differ in length")
        self.index_ = build_faiss(embeddings, "flat")
        self.labels_ = labels
        self.positive_ = labels == self.positive_class
        self.n_samples_fit_ = len(labels)
        return self

    def kneighbors(self, queries: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(n_neighbors or self.n_neighbors, self.n_samples_fit_)
        return self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def predict_proba(self, queries: np.ndarray) -> np.ndarray:
        """``ndarray of shape (n_queries, 2)``: [P(other), P(positive class)]."""
        d, i = self.kneighbors(queries)
        p = knn_vote(self.positive_[i], i.shape[1], d, self.weights)
        return np.stack([1 - p, p], axis=1)

    def predict(self, queries: np.ndarray) -> np.ndarray:
        return self.predict_proba(queries)[:, 1] >= 0.5

    def score(self, queries: np.ndarray, labels) -> float:
        """ROC AUC of the vote against ``labels == positive_class``."""
        from sklearn.metrics import roc_auc_score

        y = np.asarray(labels) == self.positive_class
        return float(roc_auc_score(y, self.predict_proba(queries)[:, 1]))
