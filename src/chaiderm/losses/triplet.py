"""The CHAI triplet loss, Eq. 1: max(0, m + D(a, b) - (D(a, c) + D(b, c)) / 2), D squared Euclidean."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from chaiderm.losses.distances import pairwise_squared_euclidean, squared_euclidean
from chaiderm.losses.logic import TripletRule
from chaiderm.losses.miners import all_valid_triplets


def chai_triplet_loss(
    emb_a: torch.Tensor, emb_b: torch.Tensor, emb_c: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Per-triplet loss of Eq. 1, shape ``(n,)``; b is similar to a, c dissimilar to both."""
    d_ab = squared_euclidean(emb_a, emb_b)
    d_ac = squared_euclidean(emb_a, emb_c)
    d_bc = squared_euclidean(emb_b, emb_c)
    return torch.clamp(margin + d_ab - 0.5 * (d_ac + d_bc), min=0.0)


def reduce(losses: torch.Tensor, how: str) -> torch.Tensor:
    if losses.numel() == 0:
        return losses.sum()  # zero with a graph: a batch with no valid triplet contributes nothing
    if how == "mean":
        return losses.mean()
    if how == "nonzero_mean":
        # averaging over active triplets only keeps the gradient from vanishing as easy ones resolve
        nz = losses > 0
        return losses[nz].mean() if nz.any() else losses.sum() * 0.0
    raise ValueError(f"unknown reduction '{how}'")


class ChaiTripletLoss(nn.Module):
    """Loss over a batch: ``forward(embeddings, disease, group, indices_tuple=None)``.

    Without ``indices_tuple`` all valid in-batch triplets under ``rule`` are used.
    """

    def __init__(
        self,
        rule: TripletRule,
        margin: float = 1.0,
        reduction: Literal["mean", "nonzero_mean"] = "nonzero_mean",
    ):
        super().__init__()
        self.rule = rule
        self.margin = margin
        self.reduction = reduction
        self.last_n_triplets = 0
        self.last_active = 0

    def forward(
        self,
        embeddings: torch.Tensor,
        disease: np.ndarray | None = None,
        group: np.ndarray | None = None,
        indices_tuple: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if indices_tuple is None:
            if disease is None or group is None:
                raise ValueError("labels are needed when no triplets are given")
            indices_tuple = all_valid_triplets(self.rule, disease, group)
        a, b, c = (i.to(embeddings.device) for i in indices_tuple)
        # one (n, n) distance matrix instead of gathering three (n_triplets, d) tensors: a 48-image
        # batch has ~23k disease triplets, and the gathers (and their backward) dominated the step
        dist = pairwise_squared_euclidean(embeddings)
        losses = torch.clamp(self.margin + dist[a, b] - 0.5 * (dist[a, c] + dist[b, c]), min=0.0)
        self.last_n_triplets = int(losses.numel())
        self.last_active = int((losses > 0).sum())
        return reduce(losses, self.reduction)
