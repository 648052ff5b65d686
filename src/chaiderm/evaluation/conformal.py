"""Split-conformal prediction sets: "melanoma or nevus, at 90%" holds the true diagnosis of at least 90% of
queries exchangeable with the calibration cases, whatever the model (Vovk et al.; Angelopoulos & Bates 2021).

Nonconformity of a labelled case: 1 - the vote's share of its true diagnosis. A class c of a query, with
score s = 1 - share(c), has the smoothed p-value (#{calibration scores > s} + t (#{scores = s} + 1)) / (n + 1),
and the set at level L holds the classes whose p-value exceeds 1 - L. The tie-break t is uniform in [0, 1):
with it the coverage is L exactly, not merely at least L (Vovk et al. 2005, ch. 2). Without it, ties decide:
many calibration cases whose true diagnosis got no vote at all (score 1) put every class of every query into
the 95% set. ``t`` comes from a hash of the query's embedding and the class (``tiebreaks``), so an image
gets the same set every time it is asked. Sets from indexes made before smoothing (``smoothed`` False) keep
the plain rule: a class is in when its score <= the ceil((n + 1) L)-th smallest calibration score.

Our own few dozen lines rather than crepes' ``ConformalClassifier``: the whole state is a sorted list that
goes into the index's JSON and answers any level, with no pickled object, and the tie-break is a function of
the query rather than of a global random state; ``tests/evaluation/test_uncertainty.py`` checks these
p-values and sets against crepes' on the same scores and tie-breaks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVELS = (0.8, 0.9, 0.95)
DEFAULT_LEVEL = 0.9


def check_level(level: float) -> float:
    if not 0.5 <= level < 1.0:
        raise ValueError(f"prediction-set level: from 0.5 to below 1, not {level}")
    return float(level)


def nonconformity(shares: np.ndarray, true_col: np.ndarray) -> np.ndarray:
    """1 - share of the true class, per row of ``(n, classes)`` shares."""
    s = np.asarray(shares, np.float64)
    return 1.0 - s[np.arange(len(s)), np.asarray(true_col, np.int64)]


def tiebreaks(key: bytes, classes: Sequence[str]) -> np.ndarray:
    """One uniform number in [0, 1) per class, from a hash of ``key`` (a query's embedding bytes) and the
    class: the same query always gets the same tie-breaks, and they do not depend on its label."""
    out = [int.from_bytes(hashlib.sha256(key + b"\0" + c.encode()).digest()[:8], "big") / 2.0**64 for c in classes]
    return np.asarray(out, np.float64)


@dataclass
class Conformal:
    scores: np.ndarray  # sorted calibration nonconformity scores
    fitted_on: str = ""
    smoothed: bool = True  # p-values with a tie-break; False: the plain quantile rule of indexes made before

    @classmethod
    def fit(cls, scores: np.ndarray, *, fitted_on: str = "", smoothed: bool = True) -> Conformal:
        s = np.sort(np.asarray(scores, np.float64))
        if not len(s):
            raise ValueError("conformal calibration needs at least one labelled case")
        return cls(s, fitted_on, smoothed)

    def quantile(self, level: float) -> float:
        """The plain rule's threshold on scores (unsmoothed sets)."""
        n = len(self.scores)
        rank = math.ceil((n + 1) * check_level(level))
        return math.inf if rank > n else float(self.scores[rank - 1])

    def p_values(self, shares: np.ndarray, ties: np.ndarray) -> np.ndarray:
        """Smoothed p-values of ``(n, classes)`` shares with tie-breaks ``ties`` of the same shape."""
        s = (1.0 - np.asarray(shares, np.float64)).round(12)  # a share and 1 - (1 - share) may differ by an ulp
        ref = self.scores.round(12)
        above = len(ref) - np.searchsorted(ref, s, side="right")
        equal = np.searchsorted(ref, s, side="right") - np.searchsorted(ref, s, side="left")
        return (above + np.asarray(ties, np.float64) * (equal + 1)) / (len(ref) + 1)

    def set_matrix(self, shares: np.ndarray, level: float, ties: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``(n, classes)`` membership for rows of shares (``ties`` required when smoothed)."""
        if not self.smoothed:
            return 1.0 - np.asarray(shares, np.float64) <= self.quantile(level) + 1e-12
        if ties is None:
            raise ValueError("smoothed prediction sets need each query's tie-breaks (conformal.tiebreaks)")
        return self.p_values(shares, ties) > 1.0 - check_level(level)

    def prediction_set(self, shares: dict[str, float], level: float, ties: np.ndarray | None = None) -> list[str]:
        """The classes of ``shares`` in the set at ``level``, most voted first; ``ties`` in ``shares``' order."""
        names = list(shares)
        row = np.array([[shares[c] for c in names]], np.float64)
        inside = self.set_matrix(row, level, None if ties is None else np.asarray(ties)[None])[0]
        ranked = sorted(zip(names, row[0], inside, strict=True), key=lambda x: -x[1])
        return [c for c, _, kept in ranked if kept]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": "1 - share of the true class",
            "smoothing": "tie-break from a hash of the query's embedding" if self.smoothed else None,
            "scores": self.scores.tolist(),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conformal:
        return cls.fit(
            np.asarray(d["scores"], np.float64),
            fitted_on=str(d.get("fitted_on", "")),
            smoothed=bool(d.get("smoothing")),
        )


def set_in_words(members: list[str], level: float) -> str:
    names = [m.replace("_", " ") for m in members]
    if not names:
        return f"no diagnosis at {level:.0%}"
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"{text}, at {level:.0%}"
