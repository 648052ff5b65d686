"""Round 13's candidate, kept in the research record: a diagnosis classifier's cross-entropy beside the
triplet loss, as a training loss term (``chaiderm.training.LossTerm``). The product's ``ce_weight`` setting
left with the round's verdict (no better than another seed, ``cv_round13.json``); this term trains exactly
as ``TrainConfig(ce_weight=w)`` did: ``train(cfg, ..., extra_terms=[CrossEntropyTerm(w)])``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chaiderm.config import RunConfig
from chaiderm.models.embedding import EmbeddingNet
from chaiderm.training import Batch


class CrossEntropyTerm:
    """``weight`` x the cross-entropy of a linear diagnosis classifier on the batch's embeddings (the head
    is saved with the model and never votes)."""

    whole = False  # scores the batch's own embeddings

    def __init__(self, weight: float = 1.0):
        if weight <= 0:
            raise ValueError(f"ce weight: must be above 0, got {weight}")
        self.weight = weight

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        if model.classifier is None:
            cfg.model.n_classes = n_classes  # so the saved model is loaded with its head
            model.classifier = torch.nn.Linear(model.dim, n_classes)

    def __call__(self, b: Batch) -> torch.Tensor:
        return F.cross_entropy(b.model.classifier(b.out), torch.from_numpy(b.diagnoses).to(b.device))
