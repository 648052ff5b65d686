from __future__ import annotations

from pathlib import Path

import numpy as np  # the repository's conftest.py has said what to install where these are missing
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small, easy synthetic set shared by the tests (written once per session)."""
    from chaiderm.data.synthetic import write_dataset

    out = tmp_path_factory.mktemp("synthetic") / "syn"
    write_dataset(out, splits={"train": 240, "val": 60, "test": 90}, size=72, seed=0, difficulty="easy")
    return out


@pytest.fixture(scope="session")
def served(synth_dir, tmp_path_factory):
    """A tiny (untrained) model and its index over the synthetic archive."""
    from chaiderm.data.records import load_table
    from chaiderm.models import build_model, save_model
    from chaiderm.pipeline import build_index

    d = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg.model).eval()
    save_model(model, d / "run", cfg)
    table = load_table(synth_dir, "train").subset(range(80))
    index, _ = build_index(model, cfg, table, model_dir=d / "run")
    index.save(d / "ix")
    return d


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def tiny_cfg(logic: str = "disease", epochs: int = 2, **train_kw):
    from chaiderm.config import ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(backbone="tiny", image_size=64, load_size=72, embedding_dim=64),
        train=TrainConfig(logic=logic, epochs=epochs, batch_size=32, lr_backbone=1e-3, lr_head=1e-3, **train_kw),
    )


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole test session: its start-up costs seconds."""
    ray = pytest.importorskip("ray", reason="the distributed extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
