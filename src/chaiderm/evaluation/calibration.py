"""Is a vote share a probability? Reliability bins, expected calibration error (ECE) with a bootstrap
interval, and the calibrator that turns vote shares into class probabilities.

The calibrator is per-class isotonic regression (scikit-learn's ``IsotonicRegression``), one class against
the rest on that class's vote share, the classes' outputs then divided by their sum so they add to 1
("isotonic-ovr"). Isotonic, not Platt: a kNN share takes few values (0, 0.1, ... with a uniform vote) and
its miscalibration need not be a sigmoid; the fit is a monotone step function, so a larger share never
reads as a smaller probability. It is stored as its breakpoints (JSON, no pickle) and applied by
interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "isotonic-ovr"
N_BINS = 10
MIN_FIT = 20  # cases of a class below which its calibration is not fitted (its share is kept)


def reliability(prob: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Equal-width bins of predicted probability: each bin's count, mean prediction and observed rate."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(outcome, np.float64)
    which = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = which == b
        out.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": int(m.sum()),
                "mean_predicted": float(p[m].mean()) if m.any() else float("nan"),
                "observed": float(y[m].mean()) if m.any() else float("nan"),
            }
        )
    return out


def ece(prob: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the count-weighted mean |observed - predicted| over equal-width bins."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(outcome, np.float64)
    if not len(p):
        return float("nan")
    which = np.minimum((p * n_bins).astype(int), n_bins - 1)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / len(p))


def ece_interval(
    prob: np.ndarray, outcome: np.ndarray, *, n_boot: int = 1000, seed: int = 0, n_bins: int = N_BINS
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of :func:`ece` (cases resampled with replacement)."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(outcome, np.float64)
    rng = np.random.default_rng(seed)
    vals = [ece(p[s], y[s], n_bins) for s in (rng.integers(0, len(p), len(p)) for _ in range(n_boot))]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Calibrator:
    """Vote shares -> calibrated class probabilities (:data:`METHOD`), fitted on labelled votes."""

    classes: list[str]
    knots: dict[str, tuple[list[float], list[float]]]  # class -> (share breakpoints, probability there)
    fitted_on: str = ""
    n: int = 0

    @classmethod
    def fit(cls, shares: np.ndarray, labels: list[str], classes: list[str], *, fitted_on: str = "") -> Calibrator:
        """``shares``: ``(n, len(classes))`` vote shares; ``labels``: each case's true diagnosis."""
        from sklearn.isotonic import IsotonicRegression

        s = np.asarray(shares, np.float64)
        if s.shape != (len(labels), len(classes)):
            raise ValueError(f"shares of shape {s.shape} for {len(labels)} labels and {len(classes)} classes")
        y_all = np.asarray(labels)
        knots = {}
        for c, col in zip(classes, s.T, strict=True):
            y = (y_all == c).astype(np.float64)
            if y.sum() < MIN_FIT or (1 - y).sum() < MIN_FIT:
                continue
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(col, y)
            knots[c] = ([float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_])
        return cls(list(classes), knots, fitted_on, len(labels))

    def apply(self, shares: dict[str, float]) -> dict[str, float]:
        """Calibrated probability of each class of ``shares`` (largest first), summing to 1."""
        classes = list(shares)
        row = self.apply_matrix(np.array([[shares[c] for c in classes]], np.float64), classes)[0]
        return dict(sorted(zip(classes, map(float, row), strict=True), key=lambda x: -x[1]))

    def apply_matrix(self, shares: np.ndarray, classes: list[str]) -> np.ndarray:
        """Calibrated probabilities of rows of ``(n, len(classes))`` shares, columns kept in ``classes`` order;
        a row the calibration maps to all zeros keeps its shares."""
        s = np.asarray(shares, np.float64)
        out = np.column_stack(
            [np.interp(s[:, j], *self.knots[c]) if c in self.knots else s[:, j] for j, c in enumerate(classes)]
        )
        total = out.sum(1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1), s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "classes": self.classes,
            "knots": {c: {"share": x, "probability": y} for c, (x, y) in self.knots.items()},
            "fitted_on": self.fitted_on,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        if d.get("method") != METHOD:
            raise ValueError(f"calibration method '{d.get('method')}' is not {METHOD}")
        knots = {c: (list(v["share"]), list(v["probability"])) for c, v in d["knots"].items()}
        return cls(list(d["classes"]), knots, str(d.get("fitted_on", "")), int(d.get("n", 0)))
