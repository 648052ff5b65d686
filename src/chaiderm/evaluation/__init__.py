"""Evaluation: AUC@k, REL@k and evidence-map localisation, as in the paper's Table 1."""

from chaiderm.evaluation.metrics import (
    calculate_auc_at_k,
    calculate_jaccard,
    calculate_mass_in_mask,
    calculate_rel_at_k,
    threshold_map,
)
from chaiderm.evaluation.retrieval import evaluate_retrieval

__all__ = [
    "calculate_auc_at_k",
    "calculate_jaccard",
    "calculate_mass_in_mask",
    "calculate_rel_at_k",
    "evaluate_retrieval",
    "threshold_map",
]
