"""Batch samplers for in-batch triplet mining."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def m_per_class_batches(labels: np.ndarray, batch_size: int, m: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield index batches of ``batch_size`` built from ``m`` images of each of several labels.

    One epoch visits about every image once. Labels with fewer than 2 images are still drawn
    (they serve as negatives); labels < 0 are never drawn as a class of their own.
    """
    labels = np.asarray(labels)
    classes = [c for c in np.unique(labels) if c >= 0]
    if not classes:
        raise ValueError("no labelled images to sample from")
    pools = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    n_batches = max(1, int(np.ceil((labels >= 0).sum() / batch_size)))
    # with few labels (three diseases) take more per label so the batch is still full
    m = max(m, -(-batch_size // len(classes)))
    per_batch = max(2, batch_size // m)
    cursor = dict.fromkeys(classes, 0)
    for _ in range(n_batches):
        picked = rng.permutation(classes)[:per_batch]
        idx: list[int] = []
        for c in picked:
            pool = pools[c]
            take = min(m, len(pool))
            for _ in range(take):
                if cursor[c] >= len(pool):
                    pools[c] = pool = rng.permutation(pool).tolist()
                    cursor[c] = 0
                idx.append(pool[cursor[c]])
                cursor[c] += 1
        yield np.asarray(idx[:batch_size], dtype=np.int64)
