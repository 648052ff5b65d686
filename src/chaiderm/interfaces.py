"""Plain data passed between layers. Nothing here imports another chaiderm module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Neighbor:
    """One retrieved archive case: the evidence behind a vote."""

    rank: int
    image_id: str
    diagnosis: str
    group: str | None
    distance: float  # squared Euclidean, as in the paper's D()
    image_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prediction:
    """A kNN-vote prediction for one query image."""

    image_id: str
    melanoma_probability: float
    k: int
    neighbors: list[Neighbor] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "melanoma_probability": self.melanoma_probability,
            "k": self.k,
            "neighbors": [n.to_dict() for n in self.neighbors],
        }
