"""Round 13's cross-entropy term (research/recipe_rounds/ce_term.py) trains a diagnosis head on the embedding."""

import json

import numpy as np
import pytest
import torch

from chaiderm.data.records import load_table
from chaiderm.data.synthetic import write_dataset
from chaiderm.models import load_model
from chaiderm.training import train
from research._common import tiny_config
from research.recipe_rounds.ce_term import CrossEntropyTerm


def test_cross_entropy_term_trains_a_diagnosis_head_that_changes_the_embedding(tmp_path):
    write_dataset(tmp_path / "syn", splits={"train": 90}, size=72, seed=0, difficulty="easy")
    tr = load_table(tmp_path / "syn", "train")
    cfg = tiny_config(epochs=1)
    cfg.train.select_metric = "last"
    train(cfg, tr, tmp_path / "plain")
    train(cfg, tr, tmp_path / "ce", extra_terms=[CrossEntropyTerm(1.0)])
    plain, _ = load_model(tmp_path / "plain")
    ce, cfg = load_model(tmp_path / "ce")
    assert plain.classifier is None
    # the head is saved (a reloaded run keeps it) and sized to the training diagnoses
    assert cfg.model.n_classes == len(set(tr.diagnoses)) and ce.classifier is not None
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x), ce.eval()(x))
    # the objective holds the cross-entropy (about ln 3 for three diagnoses after one short epoch)
    loss = {n: json.loads((tmp_path / n / "history.json").read_text())[0]["loss"] for n in ("plain", "ce")}
    assert np.isfinite(loss["ce"]) and loss["ce"] - loss["plain"] > 0.3
    with pytest.raises(ValueError, match="ce weight"):
        CrossEntropyTerm(-1.0)
