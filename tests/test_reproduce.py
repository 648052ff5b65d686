import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from chaiderm.config import RunConfig
from chaiderm.data.records import load_table
from chaiderm.errors import ArtifactError, DataError
from chaiderm.reproduce import VARIANTS, ReproduceSettings, _evaluate_ensemble, _load, run_reproduce
from tests.data.test_enhance import _fake_enhance


def _isic_from_synthetic(synth_dir, root):
    """ISIC 2017 challenge layout built from the synthetic splits."""
    for split, name in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2")):
        t = load_table(synth_dir, split)
        (root / f"ISIC-2017_{name}_Data").mkdir(parents=True)
        lines = ["image_id,melanoma,seborrheic_keratosis"]
        for j, (src, d) in enumerate(zip(t.paths, t.diagnoses, strict=True)):
            iid = f"ISIC_{j + {'train': 0, 'val': 5000, 'test': 6000}[split]:07d}"
            (root / f"ISIC-2017_{name}_Data" / f"{iid}.png").symlink_to(src)
            lines.append(f"{iid},{float(d == 'melanoma')},{float(d == 'seborrheic_keratosis')}")
        (root / f"ISIC-2017_{name}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")


def _tiny_settings(**kw) -> ReproduceSettings:
    """The whole reproduction at toy scale: tiny backbone, one epoch, small groups."""
    base = dict(
        backbone="tiny",
        epochs=1,
        finetune_epochs=1,
        image_size=64,
        load_size=72,
        n_finetune=100,
        n_boot=20,
        groups_per_disease={"melanoma": 3, "seborrheic_keratosis": 2, "nevus": 4},
    )
    return ReproduceSettings(**{**base, **kw})


def test_reproduce_end_to_end_and_resume(synth_dir, tmp_path):
    _isic_from_synthetic(synth_dir, tmp_path / "isic")
    _fake_enhance(tmp_path / "enh", n=200)
    per = {"melanoma": 3, "seborrheic_keratosis": 2, "nevus": 4}
    s = _tiny_settings(
        n_boot=50,
        seeds=2,
        groups_per_disease=per,
        colour="shades_of_gray",  # the colour settings reach every variant (checked below)
        colour_jitter=0.1,
    )
    out = tmp_path / "out"
    logs = []
    table = run_reproduce(tmp_path / "isic", tmp_path / "enh", synth_dir / "test", out, s, log=logs.append)
    t = json.loads((out / "table1.json").read_text())
    assert set(t["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        row = t["variants"][v]
        assert set(row["auc"]) == {"3", "5", "10", "20", "40"} and all(0 <= x <= 1 for x in row["auc"].values())
        lo, hi = row["auc_ci"]["20"]
        assert lo <= row["auc"]["20"] <= hi
        assert row["rel"]["40"] >= row["rel"]["3"] >= 0
        assert 0 <= row["ja"] <= 1 and 0 <= row["mass_in_mask"] <= 1 and "ja_gaussian" in row
    assert 0 <= t["baselineft_softmax_auc"] <= 1
    assert t["variants"]["Disease"]["n_seeds"] == 2 and set(t["variants"]["Disease"]["auc_std"]) == set(row["auc"])
    assert (out / "runs" / "seed1" / "Hierarchical" / "done").exists()
    for v in VARIANTS:
        cfg = RunConfig.load(out / "runs" / "seed0" / v / "config.json")
        assert cfg.model.colour == "shades_of_gray", v
        assert cfg.train.colour_jitter == (0.1 if v != "Baseline" else 0.0), v
    # two seeds: each ensembled variant is also scored on the concatenation of its two embeddings
    ens = t["ensembles"]["Hierarchical"]
    assert ens["n_models"] == 2 and set(ens["auc"]) == set(ens["val_auc"]) == set(row["auc"])
    assert all(lo <= ens["auc"][k] <= hi for k, (lo, hi) in ens["auc_ci"].items())
    md = (out / "table1.md").read_text()
    assert "Hierarchical, kNN over the concatenated embeddings of 2 seeds" in md
    # an "ensemble" of one model twice has the same neighbours, so the same AUC as the model alone
    d = _load(tmp_path / "isic", synth_dir / "test", out / "groups", s, log=logs.append)
    twice = _evaluate_ensemble([out / "runs" / "seed0" / "Hierarchical"] * 2, d, s, 0)
    single = json.loads((out / "eval" / "seed0" / "Hierarchical.json").read_text())
    assert twice["auc"] == pytest.approx(single["auc"])
    assert " ± " in md  # means over seeds carry their standard deviation
    assert set(t["tests"]) == {"Hierarchical_vs_Disease", "Hierarchical_vs_Baseline"}
    assert 0 <= t["tests"]["Hierarchical_vs_Disease"]["20"]["p_value"] <= 1
    for f in ("table1.md", "roc.png", "fig3.png", "fig4.png"):
        assert (out / f).exists(), f
    assert Image.open(out / "fig3.png").size[0] > 200
    assert "paper" in (out / "table1.md").read_text()
    # held-out REL queries never fed group-based training
    groups = (out / "groups" / "groups.csv").read_text()
    held = [line.split(",")[0] for line in (out / "groups" / "groups_heldout.csv").read_text().splitlines()[1:]]
    assert held and not any(h in groups for h in held)
    # the hierarchical groups have the numbers asked for within each disease
    rows = [line.split(",") for line in groups.splitlines()[1:]]
    for disease, n in per.items():
        assert len({g for _, g, d in rows if d == disease}) == n, disease
    # reproduce computes its figures with the code of `chaiderm evaluate`: the same model, indexed and
    # evaluated by the commands a user types, gives the same test AUCs, SK AUCs and balanced accuracy
    from typer.testing import CliRunner

    from chaiderm.cli import app

    run = out / "runs" / "seed0" / "Disease"
    ix, ev_json = tmp_path / "ix_disease", tmp_path / "ev.json"
    r = CliRunner().invoke(
        app, ["index", "--model", str(run), "--data", str(tmp_path / "isic"), "--split", "train", "--out", str(ix)]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        ["evaluate", "--model", str(run), "--index", str(ix), "--data", str(tmp_path / "isic"), "--out", str(ev_json)],
    )
    assert r.exit_code == 0, r.output
    by_cli = json.loads(ev_json.read_text())
    mine = json.loads((out / "eval" / "seed0" / "Disease.json").read_text())
    assert by_cli["auc"]["melanoma"] == pytest.approx(mine["auc"])
    assert by_cli["auc"]["seborrheic_keratosis"] == pytest.approx(mine["sk_auc"])
    assert by_cli["balanced_accuracy"] == pytest.approx(mine["balanced_accuracy"])
    assert set(mine["external_auc_ci"]) == set(mine["external_auc"])
    # a second run finds every variant done and recomputes nothing but the table
    logs.clear()
    again = run_reproduce(tmp_path / "isic", tmp_path / "enh", synth_dir / "test", out, s, log=logs.append)
    assert not any("epoch" in m for m in logs)
    # the steps' durations survive the resume, so the table still says what the whole run took
    assert again["timing_s"]["train_Disease_seed1"] == table["timing_s"]["train_Disease_seed1"] > 0
    steps = sum(v for k, v in table["timing_s"].items() if k.startswith(("train_", "eval_")))
    assert again["timing_s"]["total"] >= steps > 0 and again["timing_s"]["this_run"] > 0
    assert np.isclose(again["variants"]["Hierarchical"]["auc"]["20"], table["variants"]["Hierarchical"]["auc"]["20"])
    # other settings into the same folder would mix models: refused, naming the file and the setting
    other = dataclasses.replace(s, finetune_epochs=3)
    with pytest.raises(ArtifactError, match=r"settings\.json.*finetune_epochs: 1 there, 3 now"):
        run_reproduce(tmp_path / "isic", tmp_path / "enh", synth_dir / "test", out, other, log=logs.append)


def test_a_bad_device_is_refused_before_anything_is_written(synth_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not a torch device"):
        run_reproduce(tmp_path / "no-isic", tmp_path / "no-enh", synth_dir / "test", out, device="gpu-please")
    assert not out.exists()
    with pytest.raises(DataError, match="views: 'mirror'"):
        s = ReproduceSettings(views="mirror")
        run_reproduce(tmp_path / "no-isic", tmp_path / "no-enh", synth_dir / "test", out, s)
    assert not out.exists()
    for bad, match in (({"colour": "sepia"}, "colour: 'sepia'"), ({"colour_jitter": 2.0}, "colour_jitter")):
        with pytest.raises(DataError, match=match):
            run_reproduce(tmp_path / "no-isic", tmp_path / "no-enh", synth_dir / "test", out, ReproduceSettings(**bad))
        assert not out.exists()


def test_reproduce_teach_maps_scores_only_untaught_images(synth_dir, tmp_path):
    """--teach-maps: the embedding variants learn from a quarter of the masks data, and localisation is
    scored on the other images only."""
    from chaiderm.reproduce import TAUGHT, taught_rows

    _isic_from_synthetic(synth_dir, tmp_path / "isic")
    _fake_enhance(tmp_path / "enh", n=200)
    s = _tiny_settings(teach_maps=True)
    out = tmp_path / "out"
    run_reproduce(tmp_path / "isic", tmp_path / "enh", synth_dir / "test", out, s, log=lambda m: None)
    n = len(load_table(synth_dir, "test"))
    taught = taught_rows(n)
    assert len(taught) == n // 4 and np.array_equal(taught, taught_rows(n))  # the same quarter every time
    t = json.loads((out / "table1.json").read_text())
    for v in VARIANTS:
        assert t["variants"][v]["localisation_images"] == n - n // 4
        cfg = json.loads((out / "runs" / "seed0" / v / "config.json").read_text())
        assert bool(cfg["data"].get("masks")) == (v in TAUGHT), v
        assert cfg["model"]["padding"] == ("replicate" if v in TAUGHT else "zeros"), v  # no imprint where taught


def test_the_one_neighbour_search_never_answers_a_query_with_its_own_keys():
    from chaiderm.evaluation.retrieval import in_memory, nearest_excluding

    archive = np.array([[0.0], [1.0], [2.4], [4.0], [10.0]], np.float32)
    ids = ["a", "b", "c", "d", "e"]
    lesion = ["L1", "L1", "", "L2", ""]
    queries = archive[[0, 2]]
    own = [(["a", "c"], ids), (["L1", ""], lesion)]
    rows, dist = nearest_excluding(in_memory(archive), queries, 5, 2, own)
    assert rows.tolist() == [[2, 3], [1, 3]]  # a: neither itself nor b (its lesion); c: not itself
    np.testing.assert_allclose(dist, [[5.76, 16.0], [1.96, 2.56]], rtol=1e-5)
    assert nearest_excluding(in_memory(archive), queries, 5, 2)[0].tolist() == [[0, 1], [2, 1]]
    with pytest.raises(ValueError, match="fewer than 4"):
        nearest_excluding(in_memory(archive), queries, 5, 4, own)
