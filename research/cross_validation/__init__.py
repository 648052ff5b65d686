"""Cross-validated choice of training settings: the harness (folds, training, scoring) and rounds 1-7."""
