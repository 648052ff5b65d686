"""What an index knows about its own doubt, kept with it as ``uncertainty.json`` (and the archive images'
statistics as ``image_stats.npy``): the novelty reference (``index.novelty``), the calibrator of vote
shares (``evaluation.calibration``, fitted on the archive's own leave-one-out votes) and, where labelled
held-out data was given, the conformal scores of prediction sets (``evaluation.conformal``).

``chaiderm index`` computes it; ``ArchiveIndex.add`` / ``remove`` compute it again for the new archive (the
conformal scores are kept, with the archive size they were measured on). An index without it (built before,
or a file of another version) still answers, with "novelty unknown" and no calibration or sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from chaiderm.evaluation.calibration import Calibrator
from chaiderm.evaluation.conformal import Conformal, check_level, set_in_words, tiebreaks
from chaiderm.index import novelty as nv
from chaiderm.index.knn import check_vote, class_distribution, vote_weights

VERSION = 1
FILE = "uncertainty.json"
STATS_FILE = "image_stats.npy"


@dataclass
class Uncertainty:
    method: str
    k: int
    threshold: float
    vote: str
    reference: np.ndarray  # sorted final novelty scores of the reference cases
    emb_reference: np.ndarray  # sorted embedding-distance scores (the same as reference unless mean+image)
    n_archive: int
    img_reference: np.ndarray | None = None
    stat_scale: nv.StatScale | None = None
    calibrator: Calibrator | None = None
    conformal: Conformal | None = None
    conformal_archive_size: int | None = None
    notes: list[str] = field(default_factory=list)
    threshold_fitted_on: str = ""  # how the threshold was chosen, for the index's record
    # share of new images like the held-out ones flagged, where the threshold was fitted on them; None: the
    # threshold's own rate among the archive's cases, 1 - threshold / 100
    fitted_rate: float | None = None
    # share of the labelled held-out cases the prediction sets were calibrated on that the threshold flagged:
    # measured on images like new queries, not chosen from them
    observed_rate: float | None = None
    observed_on: str = ""

    def stated_rate(self, threshold: float | None = None) -> float:
        """The false-alarm rate an answer states: with the index's own threshold, the larger of the rate it
        was set to (or its percentile's) and the rate observed on the held-out cases, which lie as far from
        the archive as new images do; with a threshold given for a run, that percentile's."""
        if threshold is not None:
            return round(1 - threshold / 100, 4)
        own = self.fitted_rate if self.fitted_rate is not None else 1 - self.threshold / 100
        return round(max(own, self.observed_rate or 0.0), 4)

    # ---- a query --------------------------------------------------------------------------------------
    def novelty(self, dist: np.ndarray, img_dist: np.ndarray | None) -> np.ndarray:
        """Percentiles of queries' ``(n, k)`` embedding distances (and ``(n, IMAGE_K)`` image-statistics
        distances, for ``mean+image``)."""
        base = "kth" if self.method == "kth" else "mean"
        emb = nv.distance_score(dist, base)
        if self.method != "mean+image":
            return nv.percentile(self.reference, emb)
        if img_dist is None or self.img_reference is None:
            raise ValueError("mean+image novelty needs the query's image statistics")
        both = nv.combine(nv.percentile(self.emb_reference, emb), nv.percentile(self.img_reference, img_dist.mean(1)))
        return nv.percentile(self.reference, both)

    def assess(
        self,
        novelty_pct: float,
        shares: dict[str, float],
        *,
        level: float,
        threshold: float | None = None,
        key: bytes = b"",
    ) -> dict[str, Any]:
        """Everything a surface shows beside the vote, as plain data (``Prediction.uncertainty``). ``key``:
        the query's embedding bytes, from which its prediction set's tie-breaks come."""
        t = self.threshold if threshold is None else nv.check_threshold(threshold)
        flagged = bool(novelty_pct >= t)
        calibrated = self.calibrator.apply(shares) if self.calibrator is not None else None
        members = None
        set_words = None
        if self.conformal is not None and flagged:
            # the coverage holds for queries like the calibration cases; an image unlike the archive is not one
            set_words = (
                f"none at {check_level(level):.0%}: the image is unlike the archive, and the guarantee holds only "
                "for cases like the archive's"
            )
        elif self.conformal is not None:
            members = self.conformal.prediction_set(shares, check_level(level), tiebreaks(key, list(shares)))
            set_words = set_in_words(members, level)
        return {
            "novelty_percentile": round(float(novelty_pct), 2),
            "novelty_method": self.method,
            "novelty_threshold": t,
            "stated_false_alarm_rate": self.stated_rate(threshold),
            "unlike_archive": flagged,
            "novelty_words": nv.in_words(float(novelty_pct), t),
            "calibrated_probabilities": calibrated,
            "calibration_method": self.calibrator.to_dict()["method"] if self.calibrator is not None else None,
            "prediction_set": members,
            "set_level": level if set_words is not None else None,
            "set_words": set_words,
        }

    # ---- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "novelty": {
                "method": self.method,
                "k": self.k,
                "threshold_percentile": self.threshold,
                "stated_false_alarm_rate": self.stated_rate(),
                "threshold_fitted_on": self.threshold_fitted_on,
                "fitted_rate": self.fitted_rate,
                "observed_rate": self.observed_rate,
                "observed_on": self.observed_on,
                "reference": "leave-one-out: each archive case against the others, never itself or its lesion",
                "n_archive": self.n_archive,
                "scores": self.reference.tolist(),
                "embedding_scores": self.emb_reference.tolist(),
                "image_scores": None if self.img_reference is None else self.img_reference.tolist(),
                "image_scale": None if self.stat_scale is None else self.stat_scale.to_dict(),
            },
            "vote": self.vote,
            "calibration": None if self.calibrator is None else self.calibrator.to_dict(),
            "conformal": None
            if self.conformal is None
            else {**self.conformal.to_dict(), "archive_size": self.conformal_archive_size},
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Uncertainty | None:
        """None for a file of another version (the index then answers "novelty unknown")."""
        if not isinstance(d, dict) or d.get("version") != VERSION:
            return None
        n = d["novelty"]
        img = n.get("image_scores")
        conf = d.get("conformal")
        return cls(
            method=nv.check_method(n["method"]),
            k=int(n["k"]),
            threshold=nv.check_threshold(float(n["threshold_percentile"])),
            vote=check_vote(d.get("vote", "uniform")),
            reference=np.asarray(n["scores"], np.float64),
            emb_reference=np.asarray(n["embedding_scores"], np.float64),
            n_archive=int(n.get("n_archive", 0)),
            img_reference=None if img is None else np.asarray(img, np.float64),
            stat_scale=None if n.get("image_scale") is None else nv.StatScale.from_dict(n["image_scale"]),
            calibrator=None if d.get("calibration") is None else Calibrator.from_dict(d["calibration"]),
            conformal=None if conf is None else Conformal.from_dict(conf),
            conformal_archive_size=None if conf is None else conf.get("archive_size"),
            notes=list(d.get("notes", [])),
            threshold_fitted_on=str(n.get("threshold_fitted_on", "")),
            fitted_rate=None if n.get("fitted_rate") is None else float(n["fitted_rate"]),
            observed_rate=None if n.get("observed_rate") is None else float(n["observed_rate"]),
            observed_on=str(n.get("observed_on", "")),
        )


def set_key(embedding: np.ndarray) -> bytes:
    """What a query's prediction-set tie-breaks are drawn from: its embedding's float32 bytes."""
    return np.ascontiguousarray(embedding, np.float32).tobytes()


def unknown() -> dict[str, Any]:
    """``Prediction.uncertainty`` of an answer from an index without a novelty reference."""
    return {
        "novelty_percentile": None,
        "novelty_method": None,
        "novelty_threshold": None,
        "stated_false_alarm_rate": None,
        "unlike_archive": None,
        "novelty_words": nv.in_words(None, nv.DEFAULT_THRESHOLD),
        "calibrated_probabilities": None,
        "calibration_method": None,
        "prediction_set": None,
        "set_level": None,
        "set_words": None,
    }


def excluded_sets(metadata: list[dict[str, str]], rows: np.ndarray) -> list[set[int]]:
    """Each row with the other images of its lesion: what its leave-one-out search must not find."""
    groups = nv.lesion_groups(metadata)
    return [{int(r), *groups[int(r)]} for r in rows]


def leave_one_out(index, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """``(distances, neighbour rows, excluded)`` of archive ``rows`` searched among the other cases."""
    excluded = excluded_sets(index.metadata, rows)
    extra = max(len(e) for e in excluded)
    queries = np.asarray(index.embeddings[rows], np.float32)
    d, i = index.search(queries, k + extra)
    dist, nbr = nv.keep_others(d, i, excluded, k)
    return dist, nbr, excluded


MIN_HELD_OUT = 20  # held-out cases below which the threshold is not fitted on them (a 95% quantile of 19)


def held_out_threshold(pcts: np.ndarray, false_alarm: float) -> float:
    """The novelty percentile that flags at most ``false_alarm`` of new images exchangeable with the held-out
    ones whose percentiles are ``pcts``: their ceil((n + 1)(1 - rate))-th smallest (a conformal quantile),
    kept within the percentiles a threshold may be."""
    p = np.sort(np.asarray(pcts, np.float64))
    rank = min(len(p), int(np.ceil((len(p) + 1) * (1 - false_alarm))))
    return float(np.clip(np.nextafter(p[rank - 1], np.inf), 50.0, 99.99))


def build(
    index,
    *,
    vote: str,
    method: str = nv.DEFAULT_METHOD,
    threshold: float | None = nv.DEFAULT_THRESHOLD,
    conformal: Conformal | None = None,
    conformal_archive_size: int | None = None,
    held_out: np.ndarray | None = None,
    threshold_fitted_on: str = "",
    fitted_rate: float | None = None,
) -> Uncertainty | None:
    """The reference of ``index`` (an ``ArchiveIndex``); None for an archive too small to have one.

    ``threshold`` None: set on ``held_out`` (archive rows the model was not trained on, at least
    ``MIN_HELD_OUT``) so that about 5% of new images like them are flagged, else the 95th percentile.
    Images the model trained on lie closer together than new ones, so the archive's own 95th percentile
    flags more than 5% of new images of the same kind."""
    n = len(index)
    k = min(nv.REFERENCE_K, n - 1 - max((len(g) for g in nv.lesion_groups(index.metadata)), default=0))
    if k < 1:
        return None
    notes: list[str] = []
    if method == "mean+image" and index.image_stats is None:
        notes.append("no image statistics stored (an index from before, or embedded with --ray): novelty by 'mean'")
        method = "mean"
    rows = nv.reference_rows(n)
    dist, nbr, excluded = leave_one_out(index, rows, k)
    emb = nv.distance_score(dist, "kth" if method == "kth" else "mean")
    emb_ref = np.sort(emb)
    img_ref = scale = None
    final_rows = emb
    if method == "mean+image":
        scale = nv.StatScale.fit(index.image_stats)
        z = scale.apply(index.image_stats)
        img = nv.image_distances(z, z[rows], excluded=excluded).mean(1)
        img_ref = np.sort(img)
        final_rows = nv.combine(nv.percentile(emb_ref, emb), nv.percentile(img_ref, img))
    final = np.sort(final_rows)
    threshold, threshold_fitted_on, fitted_rate = _threshold(
        threshold,
        threshold_fitted_on,
        fitted_rate,
        final,
        final_rows[np.isin(rows, held_out if held_out is not None else [])],
    )
    classes = sorted(set(index.diagnoses))
    # class_distribution sorts by share: put the columns back in ``classes`` order
    shares = np.array(
        [
            [
                dict(
                    class_distribution(
                        [index.diagnoses[j] for j in nb if j >= 0], classes, vote_weights(d[nb >= 0], vote)
                    )
                )[c]
                for c in classes
            ]
            for d, nb in zip(dist, nbr, strict=True)
        ]
    )
    labels = [index.diagnoses[int(r)] for r in rows]
    calibrator = Calibrator.fit(
        shares, labels, classes, fitted_on=f"leave-one-out votes (k={k}) of {len(rows)} archive cases"
    )
    return Uncertainty(
        method=method,
        k=k,
        threshold=threshold,
        threshold_fitted_on=threshold_fitted_on,
        fitted_rate=fitted_rate,
        vote=check_vote(vote),
        reference=final,
        emb_reference=emb_ref,
        n_archive=n,
        img_reference=img_ref,
        stat_scale=scale,
        calibrator=calibrator,
        conformal=conformal,
        conformal_archive_size=conformal_archive_size,
        notes=notes,
    )


def _threshold(
    threshold: float | None, fitted_on: str, rate: float | None, reference: np.ndarray, held: np.ndarray
) -> tuple[float, str, float | None]:
    """(threshold, how it was chosen, the rate it was fitted to): as given (an index's own, kept when cases
    are added), fitted on the held-out cases' scores, or the default."""
    if threshold is not None:
        return nv.check_threshold(threshold), fitted_on or "given", rate
    if len(held) >= MIN_HELD_OUT:
        rate = round(1 - nv.DEFAULT_THRESHOLD / 100, 4)
        t = held_out_threshold(nv.percentile(reference, held), rate)
        return (
            t,
            (
                f"set to flag at most {rate:.0%} of new images like the {len(held)} archive cases the model was not "
                "trained on (train --holdout), each searched against the other cases"
            ),
            rate,
        )
    return nv.DEFAULT_THRESHOLD, "the archive's own 95th percentile (no held-out training data in it)", None


def rebuilt(index, old: Uncertainty) -> Uncertainty | None:
    """``old``'s settings over the archive as it now is (after cases were added or removed)."""
    new = build(
        index,
        vote=old.vote,
        method=old.method,
        threshold=old.threshold,
        threshold_fitted_on=old.threshold_fitted_on,
        fitted_rate=old.fitted_rate,
        conformal=old.conformal,
        conformal_archive_size=old.conformal_archive_size,
    )
    return None if new is None else replace(new, observed_rate=old.observed_rate, observed_on=old.observed_on)


def with_conformal(
    u: Uncertainty, conformal: Conformal, archive_size: int, observed: tuple[float, str] | None = None
) -> Uncertainty:
    """``u`` with prediction sets; ``observed``: (share flagged, of what) among the calibration cases."""
    rate, on = observed if observed is not None else (None, "")
    return replace(u, conformal=conformal, conformal_archive_size=archive_size, observed_rate=rate, observed_on=on)
