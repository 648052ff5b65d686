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
from chaiderm.evaluation.conformal import Conformal, check_level, set_in_words
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
        self, novelty_pct: float, shares: dict[str, float], *, level: float, threshold: float | None = None
    ) -> dict[str, Any]:
        """Everything a surface shows beside the vote, as plain data (``Prediction.uncertainty``)."""
        t = self.threshold if threshold is None else nv.check_threshold(threshold)
        flagged = bool(novelty_pct >= t)
        calibrated = self.calibrator.apply(shares) if self.calibrator is not None else None
        members = self.conformal.prediction_set(shares, check_level(level)) if self.conformal is not None else None
        return {
            "novelty_percentile": round(float(novelty_pct), 2),
            "novelty_method": self.method,
            "novelty_threshold": t,
            "stated_false_alarm_rate": round(1 - t / 100, 4),
            "unlike_archive": flagged,
            "novelty_words": nv.in_words(float(novelty_pct), t),
            "calibrated_probabilities": calibrated,
            "calibration_method": self.calibrator.to_dict()["method"] if self.calibrator is not None else None,
            "prediction_set": members,
            "set_level": level if members is not None else None,
            "set_words": set_in_words(members, level) if members is not None else None,
        }

    # ---- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "novelty": {
                "method": self.method,
                "k": self.k,
                "threshold_percentile": self.threshold,
                "stated_false_alarm_rate": round(1 - self.threshold / 100, 4),
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
        )


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


def build(
    index,
    *,
    vote: str,
    method: str = nv.DEFAULT_METHOD,
    threshold: float = nv.DEFAULT_THRESHOLD,
    conformal: Conformal | None = None,
    conformal_archive_size: int | None = None,
) -> Uncertainty | None:
    """The reference of ``index`` (an ``ArchiveIndex``); None for an archive too small to have one."""
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
    final = emb_ref
    if method == "mean+image":
        scale = nv.StatScale.fit(index.image_stats)
        z = scale.apply(index.image_stats)
        img = nv.image_distances(z, z[rows], excluded=excluded).mean(1)
        img_ref = np.sort(img)
        both = nv.combine(nv.percentile(emb_ref, emb), nv.percentile(img_ref, img))
        final = np.sort(both)
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
        threshold=nv.check_threshold(threshold),
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


def rebuilt(index, old: Uncertainty) -> Uncertainty | None:
    """``old``'s settings over the archive as it now is (after cases were added or removed)."""
    return build(
        index,
        vote=old.vote,
        method=old.method,
        threshold=old.threshold,
        conformal=old.conformal,
        conformal_archive_size=old.conformal_archive_size,
    )


def with_conformal(u: Uncertainty, conformal: Conformal, archive_size: int) -> Uncertainty:
    return replace(u, conformal=conformal, conformal_archive_size=archive_size)
