"""Split-conformal prediction sets: "melanoma or nevus, at 90%" holds the true diagnosis of at least 90% of
queries exchangeable with the calibration cases, whatever the model (Vovk et al.; Angelopoulos & Bates 2021).

Nonconformity of a labelled case: 1 - the vote's share of its true diagnosis. For a level L, q(L) is the
ceil((n + 1) L)-th smallest of the n calibration scores (infinite when that exceeds n: every class); a
query's set holds each class whose 1 - share <= q(L). Kept as the sorted scores, so any level is answered
at query time.

Our own ~30 lines rather than crepes' ``ConformalClassifier``: the whole state is a sorted list that goes
into the index's JSON and answers any level, with no pickled object; ``tests/evaluation/test_uncertainty.py`` checks
these sets against crepes' on the same scores.
"""

from __future__ import annotations

import math
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


@dataclass
class Conformal:
    scores: np.ndarray  # sorted calibration nonconformity scores
    fitted_on: str = ""

    @classmethod
    def fit(cls, scores: np.ndarray, *, fitted_on: str = "") -> Conformal:
        s = np.sort(np.asarray(scores, np.float64))
        if not len(s):
            raise ValueError("conformal calibration needs at least one labelled case")
        return cls(s, fitted_on)

    def quantile(self, level: float) -> float:
        n = len(self.scores)
        rank = math.ceil((n + 1) * check_level(level))
        return math.inf if rank > n else float(self.scores[rank - 1])

    def prediction_set(self, shares: dict[str, float], level: float) -> list[str]:
        """The classes of ``shares`` in the set at ``level``, most voted first."""
        q = self.quantile(level)
        return [c for c, p in sorted(shares.items(), key=lambda x: -x[1]) if 1.0 - p <= q + 1e-12]

    def set_matrix(self, shares: np.ndarray, level: float) -> np.ndarray:
        """Boolean ``(n, classes)`` membership for rows of shares."""
        return 1.0 - np.asarray(shares, np.float64) <= self.quantile(level) + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {"score": "1 - share of the true class", "scores": self.scores.tolist(), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conformal:
        return cls.fit(np.asarray(d["scores"], np.float64), fitted_on=str(d.get("fitted_on", "")))


def set_in_words(members: list[str], level: float) -> str:
    names = [m.replace("_", " ") for m in members]
    if not names:
        return f"no diagnosis at {level:.0%}"
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"{text}, at {level:.0%}"
