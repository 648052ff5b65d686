"""A held-out part of a training table: images the model is not trained on, kept for the choices a run and
its index must make on new images (the epoch kept, the novelty threshold), so the validation split is left
for what must be calibrated on data nothing chose from (the prediction sets)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from chaiderm.data.records import ImageTable


def holdout_split(table: ImageTable, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout) of ``table``: about ``fraction`` of it held out, stratified by diagnosis
    and never splitting a lesion (rows sharing a ``lesion_id``), the same for the same seed. Every diagnosis
    keeps at least one training row."""
    if not 0 < fraction < 0.5:
        raise ValueError(f"holdout: a fraction in (0, 0.5), got {fraction}")
    n = len(table)
    n_splits = max(2, round(1 / fraction))
    if n < 2 * n_splits:
        raise ValueError(f"holdout: {n} images are too few to hold out {fraction:g} of them")
    groups = [m.get("lesion_id") or f"\0row{i}" for i, m in enumerate(table.metadata)]
    # sklearn warns when a class has fewer members than folds; a rare class then lands in few folds
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, hold_idx = next(folds.split(np.zeros(n), table.diagnoses, groups))
    kept = {table.diagnoses[i] for i in train_idx}
    if kept != set(table.diagnoses):
        missing = sorted(set(table.diagnoses) - kept)
        raise ValueError(f"holdout: would take every image of {', '.join(missing)} out of training")
    return np.sort(train_idx), np.sort(hold_idx)
