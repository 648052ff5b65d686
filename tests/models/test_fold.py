"""Batch norms folded into convolutions for inference: same maps, fewer layers, never trained or saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.config import ModelConfig
from chaiderm.data.images import load_image
from chaiderm.data.records import load_table
from chaiderm.errors import ArtifactError
from chaiderm.models import build_model, save_model
from chaiderm.models.embedding import load_model
from chaiderm.models.fold import fold_batchnorms, is_folded
from chaiderm.models.registry import list_backbones
from chaiderm.pipeline import Predictor, build_index
from tests.conftest import tiny_cfg

SIZES = {"tiny": 64, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def _randomise_bn(net: nn.Module) -> None:
    """Statistics far from a fresh layer's (mean 0, var 1, weight 1, bias 0), so a fold that got the
    arithmetic or the pairing wrong shows in the output."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_registered_backbone_folds_to_the_same_maps(backbone):
    size = SIZES.get(backbone, 224)
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone=backbone, image_size=size, pretrained=False), load_pretrained=False)
    _randomise_bn(net)
    net.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        g0, e0 = net.evidence_maps(x)
    had = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded = net.fold()
    with torch.no_grad():
        g1, e1 = net.evidence_maps(x)
    assert folded == had and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert (had > 0) == (backbone != "alexnet")  # AlexNet has no batch norm; every other backbone does
    scale = float(g0.abs().max())
    np.testing.assert_allclose(g1.numpy(), g0.numpy(), atol=1e-5 * scale)
    np.testing.assert_allclose(e1.numpy(), e0.numpy(), atol=1e-5 * scale)
    assert torch.equal(g1.mean((2, 3)), e1)  # the maps still average to the embedding searched on


class _Odd(nn.Module):
    """Batch norms a registration-order pairing would fold wrongly: one after an in-place ReLU, one after an
    addition, one whose conv output also feeds a second path."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.b1(torch.relu_(self.c1(x)))
        x = self.b2(self.c2(x) + x)
        return self.b3(self.c3(x))


def test_only_a_batch_norm_fed_straight_by_a_conv_is_folded():
    torch.manual_seed(0)
    net = _Odd()
    _randomise_bn(net)
    net.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
    assert fold_batchnorms(net, x[:1]) == 1
    assert isinstance(net.b1, nn.BatchNorm2d) and isinstance(net.b2, nn.BatchNorm2d)
    assert isinstance(net.b3, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


def test_a_folded_model_refuses_to_train_or_be_saved(tmp_path):
    cfg = tiny_cfg()
    save_model(build_model(cfg.model).eval(), tmp_path / "run", cfg)
    net, cfg = load_model(tmp_path / "run", fold=True)
    assert is_folded(net)
    net.train(False)  # eval mode stays allowed: inference switches to it
    with pytest.raises(ArtifactError, match="folded for inference"):
        net.train()
    with pytest.raises(ArtifactError, match="folded for inference"):
        save_model(net, tmp_path / "again", cfg)
    assert not is_folded(load_model(tmp_path / "run")[0])  # training paths load it unfolded


def test_queries_run_folded_and_rank_as_the_unfolded_model(tmp_path, synth_dir):
    """The product path (Predictor.load) answers with the folded copy; its embeddings and maps equal the
    saved model's to float rounding, so an index built before folding existed still fits."""
    synth_table = load_table(synth_dir, "train").subset(range(30))
    cfg = tiny_cfg()
    torch.manual_seed(3)
    net = build_model(cfg.model)
    _randomise_bn(net)
    save_model(net.eval(), tmp_path / "run", cfg)
    plain, _ = load_model(tmp_path / "run")
    index, _ = build_index(plain, cfg, synth_table, model_dir=tmp_path / "run")
    index.save(tmp_path / "index")
    pred = Predictor.load(tmp_path / "run", tmp_path / "index")
    assert is_folded(pred.model)
    sq = np.stack([pred.square(load_image(p)) for p in synth_table.paths[:4]])
    maps, emb = pred.embed_square(sq)
    np.testing.assert_allclose(emb, index.embeddings[:4], rtol=1e-4, atol=1e-5)
    ref = Predictor(plain, cfg, index).embed_square(sq)[0]
    np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-5)


def test_a_folded_ensemble_still_computes_its_shared_stem_once(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    net = build_model(cfg.model).eval()
    _randomise_bn(net)
    save_model(net, tmp_path / "a", cfg)
    with torch.no_grad():
        for s in list(net.backbone.stages[2:]) + [net.proj]:
            for t in s.parameters():
                t.add_(torch.randn_like(t) * 0.1)
    save_model(net, tmp_path / "b", cfg)
    r = CliRunner().invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")])
    assert r.exit_code == 0, r.output
    plain, folded = load_model(tmp_path / "ab")[0], load_model(tmp_path / "ab", fold=True)[0]
    assert plain.shared_stages() == 2 and folded.shared_stages() == 2
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.forward_features(x), plain.forward_features(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ArtifactError, match="folded for inference"):
        folded.train()


def test_folding_inside_inference_mode_works():
    """Version counters do not exist in inference mode; a server may load a model inside it."""
    torch.manual_seed(0)
    net = build_model(tiny_cfg().model).eval()
    with torch.inference_mode():
        assert net.fold() == 4
