"""Two ways to draw triplets from one rule: all valid triplets in a batch (in-batch mining), and
the paper's protocol of N random triplets over the whole training set."""

from __future__ import annotations

import numpy as np
import torch

from chaiderm.losses.logic import TripletRule


def all_valid_triplets(
    rule: TripletRule, disease: np.ndarray, group: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every valid (a, b, c) among the batch rows, as three index tensors (pml's indices_tuple)."""
    valid = None
    for sim, dis in rule.masks(disease, group):
        v = sim[:, :, None] & dis[:, None, :] & dis[None, :, :]
        valid = v if valid is None else valid | v
    a, b, c = np.nonzero(valid)
    return torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)


def sample_triplets(
    rule: TripletRule, disease: np.ndarray, group: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n`` valid triplets uniformly over criterion, then anchor, similar and dissimilar image.

    Returns an ``(n, 3)`` int array. Raises ValueError when the rule admits no triplet at all.
    """
    crit = rule.masks(disease, group)
    usable = []
    for sim, dis in crit:
        has_sim = sim.any(1)
        has_dis = dis.any(1)
        anchors = np.flatnonzero(has_sim & has_dis)
        if len(anchors):
            usable.append((sim, dis, anchors))
    if not usable:
        raise ValueError(f"no valid triplet under '{rule.name}' logic for these labels")
    out = np.empty((n, 3), dtype=np.int64)
    filled = 0
    attempts = 0
    while filled < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} triplets under '{rule.name}' logic")
        sim, dis, anchors = usable[int(rng.integers(len(usable)))]
        a = int(anchors[rng.integers(len(anchors))])
        bs = np.flatnonzero(sim[a])
        b = int(bs[rng.integers(len(bs))])
        cs = np.flatnonzero(dis[a] & dis[b])
        if len(cs) == 0:
            continue
        out[filled] = (a, b, int(cs[rng.integers(len(cs))]))
        filled += 1
    return out
