"""The paper's D(): squared Euclidean distance."""

from __future__ import annotations

import torch


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||x_i - y_i||^2`` for equal-shaped ``(n, d)`` inputs."""
    return (x - y).pow(2).sum(dim=-1)


def pairwise_squared_euclidean(x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` matrix of squared distances (clamped at 0 against round-off)."""
    sq = x.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
