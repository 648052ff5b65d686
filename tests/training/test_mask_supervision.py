"""Evidence maps taught by lesion masks: the mask term pulls the QAM's mass into the lesion."""

import json

import numpy as np
import pytest
import torch

from chaiderm.data.records import load_table
from chaiderm.data.transforms import mask_as_seen, prepare
from chaiderm.errors import DataError
from chaiderm.evaluation.metrics import calculate_mass_in_mask
from chaiderm.evidence.maps import activation_map_pairs
from chaiderm.models import load_model
from chaiderm.models.inference import embed
from chaiderm.training import train
from tests.conftest import tiny_cfg


def _mass(run, table, archive) -> float:
    model, cfg = load_model(run)
    size, load = cfg.model.image_size, cfg.model.load_size
    _, q_maps = embed(model, prepare(table.paths, load)[0], size, with_maps=True)
    _, a_maps = embed(model, prepare(archive.paths, load)[0], size, with_maps=True)
    out = []
    for i, mpath in enumerate(table.mask_paths):
        qam, _ = activation_map_pairs(q_maps[i], a_maps[i % len(archive)][None])
        out.append(calculate_mass_in_mask(qam[0], mask_as_seen(mpath, load, size)))
    return float(np.mean(out))


def test_masks_pull_the_maps_into_the_lesion(synth_dir, tmp_path):
    table = load_table(synth_dir, "train").subset(range(120))
    masked = load_table(synth_dir, "val")  # images the model is taught on, with their masks
    held_out = load_table(synth_dir, "test").subset(range(40))
    cfg = tiny_cfg(epochs=3, select_metric="last")
    train(cfg, table, tmp_path / "plain")
    cfg = tiny_cfg(epochs=3, select_metric="last", mask_weight=3.0)
    train(cfg, table, tmp_path / "masked", masks=masked)
    saved = json.loads((tmp_path / "masked" / "config.json").read_text())
    assert saved["train"]["mask_weight"] == 3.0 and saved["data"]["masks"]
    before, after = _mass(tmp_path / "plain", held_out, table), _mass(tmp_path / "masked", held_out, table)
    assert after > before + 0.05, (before, after)


def test_mask_data_without_masks_is_refused(synth_dir, tmp_path):
    table = load_table(synth_dir, "train").subset(range(40))
    no_masks = table.subset(range(10))
    no_masks.mask_paths = [None] * len(no_masks)
    with pytest.raises(DataError, match="no lesion mask"):
        train(tiny_cfg(epochs=1), table, tmp_path / "r", masks=no_masks)
    torch.set_num_threads(2)
