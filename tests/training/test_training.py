import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from chaiderm.config import RunConfig
from chaiderm.data.records import load_table
from chaiderm.data.transforms import prepare
from chaiderm.errors import ArtifactError, DataError
from chaiderm.evaluation.retrieval import evaluate_retrieval
from chaiderm.models import build_model, load_model
from chaiderm.training import train
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def tables(synth_dir):
    return load_table(synth_dir, "train"), load_table(synth_dir, "val"), load_table(synth_dir, "test")


class _KilledError(Exception):
    pass


def _kill_after_first(epoch, rec):
    """An ``on_epoch`` callback standing in for a run killed after its first epoch."""
    if epoch == 0:
        raise _KilledError


def test_run_folder_has_weights_config_history(tables, tmp_path):
    tr, va, _ = tables
    res = train(tiny_cfg(epochs=2), tr, tmp_path / "run", val_table=va)
    for name in ("model.safetensors", "config.json", "history.json", "checkpoints/last.pt"):
        assert (tmp_path / "run" / name).exists(), name
    cfg = RunConfig.load(tmp_path / "run" / "config.json")
    assert cfg.train.logic == "disease" and cfg.data.n_train == len(tr) and len(cfg.data.train_fingerprint) == 16
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1] and all("val_auc" in h for h in hist)
    assert res.best_epoch in (0, 1)
    model, _ = load_model(tmp_path / "run")
    assert model.dim == 64
    # a config from before test-time views existed embeds single views, whatever the current default
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["views"] == cfg.model.views
    del saved["model"]["views"]
    assert RunConfig.from_dict(saved).model.views == "none"


def test_resume_after_kill_matches_uninterrupted_run(tables, tmp_path):
    tr, _, _ = tables
    tr = tr.subset(range(120))
    train(tiny_cfg(epochs=3, select_metric="last"), tr, tmp_path / "straight")

    with pytest.raises(_KilledError):
        train(tiny_cfg(epochs=3, select_metric="last"), tr, tmp_path / "resumed", on_epoch=_kill_after_first)
    with pytest.raises(ArtifactError, match="--resume"):
        train(tiny_cfg(epochs=3, select_metric="last"), tr, tmp_path / "resumed")
    res = train(tiny_cfg(epochs=3, select_metric="last"), tr, tmp_path / "resumed", resume=True)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_weight_averaging_saves_the_average_and_resumes_exactly(tables, tmp_path):
    tr, _, _ = tables
    tr = tr.subset(range(120))
    cfg = lambda: tiny_cfg(epochs=2, select_metric="last", ema_decay=0.9)  # noqa: E731
    train(tiny_cfg(epochs=2, select_metric="last"), tr, tmp_path / "raw")
    train(cfg(), tr, tmp_path / "ema")

    with pytest.raises(_KilledError):
        train(cfg(), tr, tmp_path / "resumed", on_epoch=_kill_after_first)
    train(cfg(), tr, tmp_path / "resumed", resume=True)
    raw, ema, resumed = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("raw", "ema", "resumed"))
    assert raw.keys() == ema.keys()
    # the saved weights are the average, not the last step's (which equal the plain run's)
    assert any(not np.allclose(raw[k].numpy(), ema[k].numpy(), atol=1e-6) for k in raw if k.startswith("proj"))
    for k in ema:
        np.testing.assert_allclose(ema[k].numpy(), resumed[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    with pytest.raises(DataError, match="ema_decay"):
        train(tiny_cfg(epochs=1, ema_decay=1.0), tr, tmp_path / "bad")


def test_trained_embedding_beats_untrained(tables, tmp_path):
    tr, va, te = tables
    cfg = tiny_cfg(epochs=6)
    import torch

    torch.manual_seed(0)
    untrained = build_model(cfg.model)
    before = evaluate_retrieval(untrained, 64, 72, tr, te, ks=(10,), localisation=False)["auc"]["10"]
    train(cfg, tr, tmp_path / "run", val_table=va)
    model, _ = load_model(tmp_path / "run")
    after = evaluate_retrieval(model, 64, 72, tr, te, ks=(10,), localisation=False)["auc"]["10"]
    assert after > before + 0.08, (before, after)


@pytest.mark.parametrize("logic", ["hierarchical", "nonhierarchical", "joint", "classifier"])
def test_other_logics_train_and_fine_tune(tables, tmp_path, logic):
    tr, va, _ = tables
    train(tiny_cfg(epochs=1), tr.subset(range(100)), tmp_path / "disease")
    res = train(
        tiny_cfg(logic, epochs=1),
        tr.subset(range(100)),
        tmp_path / logic,
        val_table=va.subset(range(30)),
        init=tmp_path / "disease" if logic != "classifier" else None,
    )
    assert res.history and np.isfinite(res.history[0]["loss"])
    cfg = RunConfig.load(tmp_path / logic / "config.json")
    if logic == "classifier":
        assert cfg.model.n_classes == 3
    else:
        assert cfg.data.init == str(tmp_path / "disease")


def test_group_fine_tuning_trains_on_annotated_images_and_validates_on_the_whole_archive(tables, tmp_path):
    from chaiderm.training.loop import _Prepared, validate

    tr, va, _ = tables
    tr, va = tr.subset(range(100)), va.subset(range(40))
    tr.groups = [g if i % 2 else None for i, g in enumerate(tr.groups)]  # half the archive unannotated
    train(tiny_cfg(epochs=1), tr, tmp_path / "disease")
    cfg = tiny_cfg("hierarchical", epochs=1, select_metric="last")
    res = train(cfg, tr, tmp_path / "h", val_table=va, init=tmp_path / "disease")
    assert RunConfig.load(tmp_path / "h" / "config.json").data.n_train == 50  # only the annotated half trains
    model, _ = load_model(tmp_path / "h")
    prep = lambda t: _Prepared(prepare(t.paths, 72)[0], t)  # noqa: E731
    whole = validate(model, prep(tr), prep(va), 64, cfg.train.val_k, "melanoma")
    half = validate(model, prep(tr.subset(range(1, 100, 2))), prep(va), 64, cfg.train.val_k, "melanoma")
    assert res.history[0]["val_auc"] == pytest.approx(whole["val_auc"], abs=1e-9)
    assert whole["val_auc"] != pytest.approx(half["val_auc"], abs=1e-9)


def test_random_triplet_protocol(tables, tmp_path):
    tr, _, _ = tables
    res = train(tiny_cfg(epochs=1, protocol="random", triplets_per_epoch=60), tr.subset(range(60)), tmp_path / "r")
    assert res.history[0]["loss"] >= 0


def test_group_logic_without_groups_or_with_unnested_groups(tables, tmp_path):
    tr, _, _ = tables
    no_groups = tr.subset(range(30))
    no_groups.groups = [None] * 30
    with pytest.raises(DataError, match="needs similarity groups"):
        train(tiny_cfg("hierarchical", epochs=1), no_groups, tmp_path / "a")
    blind = tr.subset(range(30))
    blind.groups = [g.split("/")[1] for g in blind.groups]  # disease-blind: sits under several diseases
    with pytest.raises(DataError, match="more than one disease"):
        train(tiny_cfg("hierarchical", epochs=1), blind, tmp_path / "b")
    train(tiny_cfg("joint", epochs=1), blind, tmp_path / "c")  # joint accepts them


def test_skip_bad_images_counted(tables, tmp_path):
    import shutil

    tr, _, _ = tables
    small = tr.subset(range(40))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    small.paths[3] = str(bad)
    with pytest.raises(DataError, match="broken.png"):
        train(tiny_cfg(epochs=1), small, tmp_path / "a")
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
    res = train(tiny_cfg(epochs=1), small, tmp_path / "b", skip_bad=True)
    assert len(res.skipped) == 1 and "broken.png" in res.skipped[0]
    assert RunConfig.load(tmp_path / "b" / "config.json").data.n_train == 39


def test_device_is_checked_before_any_image_is_decoded(tables, tmp_path):
    tr, _, _ = tables
    broken = tr.subset(range(4))
    broken.paths[0] = str(tmp_path / "missing.jpg")  # decoding it would raise a DataError naming the file
    with pytest.raises(DataError, match="not a torch device"):
        train(tiny_cfg(epochs=1), broken, tmp_path / "a", device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            train(tiny_cfg(epochs=1), broken, tmp_path / "b", device="cuda")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_saves_cpu_weights_that_embed_like_the_gpu_model(tables, tmp_path):
    tr, va, _ = tables
    res = train(tiny_cfg(epochs=1), tr.subset(range(60)), tmp_path / "gpu", val_table=va, device="cuda")
    assert res.history[0]["device"].startswith("cuda") and "val_auc" in res.history[0]
    model, cfg = load_model(tmp_path / "gpu")
    assert next(model.parameters()).device.type == "cpu"
    imgs = prepare(va.paths[:8], cfg.model.load_size)[0]
    from chaiderm.models.inference import embed

    cpu, _ = embed(model, imgs, cfg.model.image_size)
    gpu, _ = embed(model.to("cuda"), imgs, cfg.model.image_size)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-2, atol=1e-3)


def test_colour_settings_are_saved_repeatable_and_used(tables, tmp_path):
    tr, _, _ = tables
    tr = tr.subset(range(96))

    def cfg(jitter: float):
        c = tiny_cfg(epochs=1, select_metric="last", colour_jitter=jitter)
        c.model.colour = "shades_of_gray"
        return c

    for name, jitter in (("a", 0.2), ("b", 0.2), ("plain", 0.0)):
        train(cfg(jitter), tr, tmp_path / name)
    saved = RunConfig.load(tmp_path / "a" / "config.json")
    assert saved.model.colour == "shades_of_gray" and saved.train.colour_jitter == 0.2
    assert load_model(tmp_path / "a")[0].colour == "shades_of_gray"
    a, b, plain = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b", "plain"))
    for k in a:  # the jitter is drawn from the run's seed
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    assert any(not np.allclose(a[k].numpy(), plain[k].numpy()) for k in a if k.startswith("proj"))
    with pytest.raises(DataError, match="colour_jitter"):
        train(tiny_cfg(epochs=1, colour_jitter=-0.1), tr, tmp_path / "bad")
    # configs from before the settings read as no colour normalisation and no jitter
    d = saved.to_dict()
    del d["model"]["colour"], d["train"]["colour_jitter"]
    old = RunConfig.from_dict(d)
    assert old.model.colour == "none" and old.train.colour_jitter == 0.0


def test_zoom_enlarges_smaller_crops_and_leaves_the_default_as_it_was():
    from chaiderm.data.transforms import augment

    # each pixel holds its column: a crop's span of values is its side, whatever the flips and turns
    img = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3))
    batch = np.repeat(img[None], 64, axis=0)

    def spans(zoom: float) -> np.ndarray:
        out = augment(batch, 224, np.random.default_rng(0), zoom).astype(int)
        return np.array([max(np.ptp(o[:, :, 0], axis=1).max(), np.ptp(o[:, :, 0], axis=0).max()) for o in out])

    plain, zoomed = spans(1.0), spans(2.0)
    assert plain.min() >= 223  # never enlarged: at least the input's 224 pixels of the image
    assert zoomed.min() < 160 and zoomed.max() >= 223  # down to 112 pixels, enlarged, and still whole images
    with pytest.raises(ValueError, match="zoom"):
        augment(batch, 224, np.random.default_rng(0), 0.5)


class _PullTerm:
    """A caller's own loss term: pulls every embedding towards zero, through a layer of its own."""

    whole = False

    def __init__(self):
        self.weight, self.calls, self.prepared = 2.0, 0, False

    def prepare(self, model, cfg, n_classes):
        self.prepared = model.classifier is None and n_classes == 3

    def __call__(self, b):
        self.calls += 1
        return b.out.pow(2).mean()


def test_train_leaves_its_config_alone_and_adds_extra_terms(tables, tmp_path):
    import copy

    tr, va, _ = tables
    tr = tr.subset(range(90))
    cfg = tiny_cfg(epochs=1, select_metric="last", positive_class="mel")
    before = copy.deepcopy(cfg)
    train(cfg, tr, tmp_path / "plain", val_table=va.subset(range(20)))
    assert cfg == before  # not completed, canonicalised or resized in place
    saved = RunConfig.load(tmp_path / "plain" / "config.json")
    assert saved.train.positive_class == "melanoma" and saved.data.n_train == 90 and saved.version

    term = _PullTerm()
    train(cfg, tr, tmp_path / "pulled", extra_terms=[term])
    assert term.prepared and term.calls > 0
    loss = {n: json.loads((tmp_path / n / "history.json").read_text())[0]["loss"] for n in ("plain", "pulled")}
    assert loss["pulled"] > loss["plain"]  # the term's weighted value is in the objective


def test_a_run_trained_with_a_removed_setting_is_not_resumed_without_it(tables, tmp_path):
    from chaiderm.training.checkpoint import load_checkpoint, save_checkpoint

    tr, _, _ = tables
    tr = tr.subset(range(40))
    with pytest.raises(_KilledError):
        train(tiny_cfg(epochs=2, select_metric="last"), tr, tmp_path / "r", on_epoch=_kill_after_first)
    ckpt = load_checkpoint(tmp_path / "r")  # as a run of the version that had ce_weight wrote it
    cfg = json.loads(ckpt["config"])
    cfg["train"]["ce_weight"] = 1.0
    save_checkpoint(tmp_path / "r", {**ckpt, "config": json.dumps(cfg)})
    with pytest.raises(ArtifactError, match="cannot resume: .*ce_weight = 1.0"):
        train(tiny_cfg(epochs=2, select_metric="last"), tr, tmp_path / "r", resume=True)
