"""What the research scripts share: where the repository and the datasets are, and the tiny test model."""

from __future__ import annotations

from pathlib import Path

from chaiderm.config import ModelConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
# The datasets (isic2017/, enhance/, ham10000_dev/) are not in the repository; every script takes them as
# flags (--isic, --ham, --masks-data ...) and defaults to a `shared/data` folder beside the checkout.
DATA = REPO.parent / "shared" / "data"
ISIC = DATA / "isic2017"


def study_path(path: Path) -> str:
    """``path`` relative to the repository (``research/<study>/<file>``), as result files name each other."""
    return Path(path).resolve().relative_to(REPO).as_posix()


def tiny_config(logic: str = "disease", epochs: int = 2) -> RunConfig:
    """The tests' tiny CPU model (64 px, 64-d): for studies that time a rule, not an accuracy."""
    return RunConfig(
        model=ModelConfig(backbone="tiny", image_size=64, load_size=72, embedding_dim=64),
        train=TrainConfig(logic=logic, epochs=epochs, batch_size=32, lr_backbone=1e-3, lr_head=1e-3),
    )
