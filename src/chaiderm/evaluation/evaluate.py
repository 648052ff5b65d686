"""``chaiderm evaluate``: a trained model and its index measured on a labelled split, as a user would
measure their own: kNN AUC@k for every diagnosis against the rest, the vote's balanced accuracy, REL@k
where the data has similarity groups, each with a 95% bootstrap interval over the queries."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from chaiderm.data.records import ImageTable
from chaiderm.evaluation.metrics import bootstrap_auc_ci, bootstrap_mean_ci, calculate_rel_at_k
from chaiderm.evaluation.retrieval import nearest_excluding
from chaiderm.index.knn import check_vote, knn_vote
from chaiderm.losses.logic import encode_labels
from chaiderm.pipeline import Predictor

KS = (3, 5, 10, 20, 40)


def _neighbours(predictor: Predictor, queries: ImageTable, emb: np.ndarray, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Archive rows nearest to each query and their squared distances, never the query itself nor another
    image of its lesion (by id or ``lesion_id``, where the archive holds them)."""
    idx = predictor.index
    lesion = [m.get("lesion_id", "") for m in idx.metadata]
    own_lesion = [m.get("lesion_id", "") for m in queries.metadata]
    exclude = [(queries.image_ids, idx.image_ids), (own_lesion, lesion)]
    return nearest_excluding(idx.search, emb, len(idx), kmax, exclude)


def evaluate_index(
    predictor: Predictor,
    queries: ImageTable,
    *,
    ks: Sequence[int] = KS,
    n_boot: int = 1000,
    seed: int = 0,
    vote: str = "uniform",
) -> dict:
    """``vote="distance"`` weighs each neighbour by 1 / squared distance (index.knn.knn_vote): the scores
    become continuous, so they also break the ties a k-vote leaves."""
    check_vote(vote)
    ks = sorted(k for k in ks if k <= len(predictor.index) - 1)
    if not ks:
        raise ValueError("the archive is too small for any k")
    emb, ok = predictor.embed_table(queries)
    queries = queries.subset(ok)
    rows, dist = _neighbours(predictor, queries, emb, max(ks))
    classes = list(predictor.classes)
    out: dict = {
        "n_archive": len(predictor.index),
        "n_queries": len(queries),
        "queries_by_diagnosis": dict(Counter(queries.diagnoses).most_common()),
        "not_in_archive": sorted(set(queries.diagnoses) - set(classes)),
        "positive_class": predictor.positive_class,
    }
    codes, _ = encode_labels(list(predictor.index.groups) + list(queries.groups))
    a_g, q_g = codes[: len(predictor.index)], codes[len(predictor.index) :]
    scored = score_neighbours(
        predictor.index.diagnoses,
        rows,
        queries.diagnoses,
        distances=dist,
        classes=classes,
        ks=ks,
        vote=vote,
        n_boot=n_boot,
        seed=seed,
        archive_groups=a_g,
        query_groups=q_g,
    )
    return {**out, **scored}


def score_neighbours(
    archive_diagnoses: Sequence[str],
    rows: np.ndarray,
    query_diagnoses: Sequence[str],
    *,
    distances: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    ks: Sequence[int] = KS,
    vote: str = "uniform",
    n_boot: int = 1000,
    seed: int = 0,
    archive_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
) -> dict:
    """The figures of ``chaiderm evaluate`` from neighbours already found; ``reproduce`` and
    ``research/external/external_select.py`` score through here too, so their figures and evaluate's are
    computed one way.

    ``rows[q]`` are archive rows nearest to query q, nearest first (``distances`` their squared
    distances, needed by ``vote="distance"``); ``classes`` defaults to the archive's diagnoses, most
    frequent first; group codes (-1: none) add REL@k; ``n_boot=0`` leaves the intervals out. Returns per
    class AUC@k with 95% bootstrap intervals (classes that no query or every query has are left out), the
    vote's balanced accuracy@k with its interval, and REL@k where queries have groups.
    """
    check_vote(vote)
    arch_dx = np.asarray(archive_diagnoses)
    q_dx = np.asarray(query_diagnoses)
    rows = np.asarray(rows)
    if classes is None:  # as the Predictor orders them: most frequent first, so a tied vote names it
        counts = Counter(arch_dx.tolist())
        classes = sorted(counts, key=lambda d: (-counts[d], d))
    classes = list(classes)
    ks = list(ks)
    out: dict = {"vote": vote, "auc": {}, "auc_ci": {}, "balanced_accuracy": {}, "balanced_accuracy_ci": {}}
    for c in classes:
        y = q_dx == c
        if not 0 < y.sum() < len(y):
            continue  # AUC needs queries of both kinds
        votes = {k: knn_vote((arch_dx[rows] == c).astype(float), k, distances, vote) for k in ks}
        out["auc"][c] = {str(k): float(_auc(y, v)) for k, v in votes.items()}
        if n_boot:
            out["auc_ci"][c] = {
                str(k): list(bootstrap_auc_ci(y, v, n_boot=n_boot, seed=seed)) for k, v in votes.items()
            }
    # a vote may name a diagnosis no query has: fine for balanced accuracy, not worth sklearn's warning
    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    for k in ks:
        shares = np.stack([knn_vote((arch_dx[rows] == c).astype(float), k, distances, vote) for c in classes], axis=1)
        pred = np.asarray(classes)[shares.argmax(axis=1)]  # ties: the first of ``classes``
        out["balanced_accuracy"][str(k)] = float(balanced_accuracy_score(q_dx, pred))
        if not n_boot:
            continue
        # a balanced-accuracy interval: resample queries, recompute the mean per-class recall
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, len(q_dx), len(q_dx))
            boots.append(balanced_accuracy_score(q_dx[i], pred[i]))
        out["balanced_accuracy_ci"][str(k)] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
    if archive_groups is not None and query_groups is not None:
        out.update(score_relevance(rows, archive_groups, query_groups, ks, n_boot=n_boot, seed=seed))
    return out


def score_relevance(
    rows: np.ndarray,
    archive_groups: np.ndarray,
    query_groups: np.ndarray,
    ks: Sequence[int] = KS,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """REL@k of neighbours already found (``rel``), with 95% bootstrap intervals (``rel_ci``, empty when
    ``n_boot=0``): how many of each query's k nearest share its similarity group (code -1: none). Empty
    when no query has a group."""
    a_g, q_g = np.asarray(archive_groups), np.asarray(query_groups)
    if not (q_g >= 0).any():
        return {}
    rows = np.asarray(rows)
    has = q_g >= 0
    return {
        "rel": {str(k): v for k, v in calculate_rel_at_k(q_g, a_g[rows], ks).items()},
        "rel_ci": {}
        if not n_boot
        else {
            str(k): bootstrap_mean_ci((a_g[rows[has, :k]] == q_g[has, None]).sum(axis=1), n_boot=n_boot, seed=seed)
            for k in ks
        },
    }


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return roc_auc_score(y, score)
