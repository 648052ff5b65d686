"""Per-epoch checkpoints (model + optimiser + history), written atomically, read with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chaiderm._io import atomic_path
from chaiderm.errors import ArtifactError

LAST = "checkpoints/last.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    path = run_dir / LAST
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / LAST
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(f"{path}: checkpoint unreadable ({e}); delete it to start over") from None


def training_progress(run_dir: str | Path) -> tuple[int, int] | None:
    """``(epochs finished, epochs planned)`` of a run folder, or None where it records neither
    (a model saved outside the training loop). A killed run has fewer finished than planned."""
    import json

    run_dir = Path(run_dir)
    try:
        history = json.loads((run_dir / "history.json").read_text())
        planned = int(json.loads((run_dir / "config.json").read_text())["train"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(history), planned
