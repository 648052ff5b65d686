"""Plain data passed between layers. Nothing here imports another chaiderm module."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# metadata fields that point at a person or their lesion: kept in an index to keep a query away from its own
# lesion, never shown to a viewer, written into a report, filtered on, or listed in an error message
IDENTIFYING = frozenset({"patient_id", "lesion_id"})


@dataclass(frozen=True)
class Neighbor:
    """One retrieved archive case: the evidence behind a vote."""

    rank: int
    image_id: str
    diagnosis: str
    group: str | None
    distance: float  # squared Euclidean, as in the paper's D()
    image_path: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # age, sex, site, attribution, license...

    def to_dict(self) -> dict[str, Any]:
        """The neighbour as reports and JSON show it: without patient or lesion ids (they stay in the index,
        where they keep a query away from its own lesion; a report is read by people who need none)."""
        out = asdict(self)
        out["metadata"] = {k: v for k, v in self.metadata.items() if k not in IDENTIFYING}
        return out


@dataclass
class Prediction:
    """A kNN-vote prediction for one query image.

    ``class_probabilities`` is the neighbours' full diagnosis distribution over every diagnosis the
    archive holds (largest first); ``positive_probability`` is its entry for ``positive_class``.
    ``melanoma_probability`` is None when the archive holds no melanoma: a vote for an absent class
    would always read 0 and mean nothing."""

    image_id: str
    positive_class: str
    class_probabilities: dict[str, float]
    k: int
    neighbors: list[Neighbor] = field(default_factory=list)
    # "uniform": each neighbour one vote; "distance": weighed by 1 / squared distance (index.knn.VOTES)
    vote: str = "uniform"
    # how far to trust it (index.uncertainty): novelty percentile and words, unlike_archive, calibrated
    # probabilities, prediction set and its level; None where no one computed it
    uncertainty: dict[str, Any] | None = None

    @property
    def unlike_archive(self) -> bool:
        return bool(self.uncertainty and self.uncertainty.get("unlike_archive"))

    @property
    def positive_probability(self) -> float:
        return self.class_probabilities[self.positive_class]

    @property
    def melanoma_probability(self) -> float | None:
        return self.class_probabilities.get("melanoma")

    def summary(self) -> str:
        """The vote in words: '7 of 10 nearest cases: melanoma; 3 nevus' (counts, also under a weighted vote)."""
        if self.neighbors:
            n = Counter(nb.diagnosis for nb in self.neighbors)
            counts = sorted(((d, n[d]) for d in self.class_probabilities), key=lambda x: -x[1])
        else:
            counts = [(d, round(p * self.k)) for d, p in self.class_probabilities.items()]
        counts = [(d, n) for d, n in counts if n > 0]
        if not counts:
            return "no neighbours"
        (d0, n0), rest = counts[0], counts[1:]
        text = f"{n0} of {self.k} nearest cases: {d0.replace('_', ' ')}"
        text += "".join(f"; {n} {d.replace('_', ' ')}" for d, n in rest)
        # a query unlike the archive never reads as a bare vote, wherever the summary is shown
        return f"unlike the archive, so the vote may not apply: {text}" if self.unlike_archive else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "positive_class": self.positive_class,
            "positive_probability": self.positive_probability,
            "melanoma_probability": self.melanoma_probability,
            "class_probabilities": dict(self.class_probabilities),
            "summary": self.summary(),
            "k": self.k,
            "vote": self.vote,
            "uncertainty": self.uncertainty,
            "neighbors": [n.to_dict() for n in self.neighbors],
        }
