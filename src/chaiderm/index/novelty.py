"""How unlike the archive a query is: its distance to its nearest archive cases, read as a percentile of
the same distance for the archive's own cases, each searched against the others (never itself, nor another
image of its lesion). A percentile reads the same for any model and archive ("further from the archive than
97% of its own cases are from the rest"), and a threshold on it states its own false-alarm rate on cases
like the archive's: flag above the 95th percentile, and about 5% of such cases are flagged.

Scores (``METHODS``; ``bench/uncertainty.py`` measures them and chose the default by a rule written before
its run, research/uncertainty/README.md):

- ``kth``: squared distance to the k-th nearest case (the plain baseline, and the rule's choice: with the
  trained model it already flags the non-dermoscopic images; the others did not beat it on tuning data);
- ``mean``: mean squared distance to the k nearest;
- ``mean+image``: the larger of ``mean``'s percentile and that of the distance, among simple colour and
  texture statistics (``data.image_stats``), to the archive images' own statistics; the maximum is read as a
  percentile of the same maximum over the archive's cases, so the threshold keeps its stated rate. An
  embedding trained only on lesions may put a grey frame or a page of text near some lesion; colour and
  texture statistics do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("kth", "mean", "mean+image")
DEFAULT_METHOD = "kth"
REFERENCE_K = 10  # neighbours the score looks at, whatever k the vote uses
IMAGE_K = 5  # neighbours in the image-statistics space
MAX_REFERENCE = 5000  # archive cases that make the reference (a seeded sample of larger archives)
DEFAULT_THRESHOLD = 95.0  # percentile above which a query is "unlike the archive": 5% stated false alarms


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"novelty method: one of {', '.join(METHODS)}, not '{method}'")
    return method


def check_threshold(threshold: float) -> float:
    if not 50.0 <= threshold < 100.0:
        raise ValueError(f"novelty threshold: a percentile from 50 to below 100, not {threshold}")
    return float(threshold)


def lesion_groups(metadata: Sequence[dict[str, str]]) -> list[list[int]]:
    """For each row, the other rows of its lesion (same ``lesion_id``); empty where it has none."""
    by: dict[str, list[int]] = {}
    for i, m in enumerate(metadata):
        lesion = m.get("lesion_id")
        if lesion:
            by.setdefault(lesion, []).append(i)
    out: list[list[int]] = [[] for _ in metadata]
    for rows in by.values():
        if len(rows) > 1:
            for r in rows:
                out[r] = [o for o in rows if o != r]
    return out


def reference_rows(n: int, limit: int = MAX_REFERENCE, seed: int = 0) -> np.ndarray:
    """The archive rows whose leave-one-out distances make the reference: all, or a seeded sample."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def keep_others(dist: np.ndarray, idx: np.ndarray, excluded: Sequence[set[int]], k: int) -> tuple[np.ndarray, ...]:
    """The first ``k`` neighbours of each row that are not in its ``excluded`` set (padded with the last
    distance and -1 where fewer remain)."""
    out_d = np.empty((len(dist), k), np.float32)
    out_i = np.full((len(dist), k), -1, np.int64)
    for q, (d, i, ex) in enumerate(zip(dist, idx, excluded, strict=True)):
        keep = [j for j in range(len(i)) if i[j] >= 0 and int(i[j]) not in ex][:k]
        got = d[keep]
        out_i[q, : len(keep)] = i[keep]
        out_d[q] = np.concatenate([got, np.full(k - len(keep), got[-1] if len(got) else np.inf)])
    return out_d, out_i


def distance_score(dist: np.ndarray, method: str) -> np.ndarray:
    """Novelty of each row of ``(n, k)`` ascending neighbour distances, larger = further from the archive."""
    d = np.asarray(dist, np.float64)
    return d[:, -1] if check_method(method) == "kth" else d.mean(axis=1)


def percentile(reference: np.ndarray, scores: np.ndarray | float) -> np.ndarray:
    """Percent of the (sorted) reference scores below each score, ties counted half: 0 to 100."""
    ref = np.asarray(reference, np.float64)
    s = np.atleast_1d(np.asarray(scores, np.float64))
    if not len(ref):
        return np.full(len(s), np.nan)
    below = np.searchsorted(ref, s, side="left")
    upto = np.searchsorted(ref, s, side="right")
    return 100.0 * (below + upto) / (2.0 * len(ref))


@dataclass(frozen=True)
class StatScale:
    """The archive's image statistics, standardised (median and spread of each), to search among."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, stats: np.ndarray) -> StatScale:
        s = np.asarray(stats, np.float64)
        center = np.median(s, axis=0)
        spread = np.percentile(s, 75, axis=0) - np.percentile(s, 25, axis=0)
        return cls(center, np.where(spread > 1e-6, spread, 1e-3))

    def apply(self, stats: np.ndarray) -> np.ndarray:
        return ((np.asarray(stats, np.float64) - self.center) / self.scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StatScale:
        return cls(np.asarray(d["center"], np.float64), np.asarray(d["scale"], np.float64))


def image_distances(
    archive: np.ndarray, queries: np.ndarray, k: int = IMAGE_K, excluded: Sequence[set[int]] | None = None
) -> np.ndarray:
    """``(n, k)`` ascending squared distances from each standardised query's statistics to the nearest
    archive cases' (not those in its ``excluded`` set)."""
    a = np.asarray(archive, np.float64)
    q = np.asarray(queries, np.float64)
    k = min(k, len(a) - (1 if excluded is not None else 0))
    out = np.empty((len(q), max(k, 1)), np.float32)
    for start in range(0, len(q), 512):  # a block at a time: a 5000 x 100,000 matrix would not fit
        block = q[start : start + 512]
        d = (block * block).sum(1)[:, None] - 2 * block @ a.T + (a * a).sum(1)[None]
        if excluded is not None:
            for r in range(len(block)):
                d[r, list(excluded[start + r])] = np.inf
        part = np.partition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else d
        out[start : start + len(block)] = np.sort(part, axis=1)[:, :k].clip(min=0)
    return out


def combine(emb_pct: np.ndarray, img_pct: np.ndarray) -> np.ndarray:
    """The ``mean+image`` score before its own percentile: whichever of the two looks less usual."""
    return np.maximum(emb_pct, img_pct)


def in_words(pct: float | None, threshold: float) -> str:
    """The novelty as a person reads it."""
    if pct is None or not np.isfinite(pct):
        return "novelty unknown (this index was built without a novelty reference)"
    p = int(np.floor(pct))
    than = "any" if p >= 100 else f"{p}%"
    if pct >= threshold:
        return (
            f"unlike the archive: further from it than {than} of its own cases are from the rest; "
            "the vote below compares it with cases it may not resemble"
        )
    if pct >= 75:
        return f"less usual: further from the archive than {p}% of its own cases"
    return f"like the archive: closer to it than {100 - p}% of its own cases"
