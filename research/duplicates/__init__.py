"""Near-duplicate thresholds and train/test leakage."""
