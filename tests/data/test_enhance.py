import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.enhance import FEATURES, HALF_GROUPS, enhance_groups, read_enhance
from chaiderm.data.records import attach_groups, check_nested, read_groups
from chaiderm.errors import DataError
from tests.conftest import SHARED


def _fake_enhance(root, n=60, seed=0):
    """Crowd files (comma, 0-10 scale) and a Dutch student file (';', 0-2 scale) over the same ids."""
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    (root / "crowd").mkdir(parents=True)
    for f in FEATURES:
        rows = ["ID,i,ii,iii"] + [f"{i}," + ",".join(str(int(v)) for v in rng.integers(0, 10, 3)) for i in ids]
        (root / "crowd" / f"{f}.csv").write_text("\n".join(rows) + "\n")
    (root / "student" / "2019-2020").mkdir(parents=True)
    header = "\ufeffID;Symmetrie_01_1;Symmetrie_01_2;Grens_01_1;Kleur_01_1;Onbekend_1"
    rows = [header] + [f"{i};{rng.integers(0, 3)};{rng.integers(0, 3)};{rng.integers(0, 3)};;x" for i in ids[:30]]
    (root / "student" / "2019-2020" / "group01.csv").write_text("\n".join(rows) + "\n")
    return ids


def test_ratings_standardised_per_source(tmp_path):
    ids = _fake_enhance(tmp_path)
    r = read_enhance(tmp_path)
    assert set(r.values) == set(ids)
    assert r.sources["crowd/asymmetry"] == 60 and r.sources["student/2019-2020/group01.csv"] == 30
    # colour: only the crowd rated it (the student column is empty), so it is exactly the crowd z-score
    col = np.array([r.values[i]["color"] for i in ids])
    assert abs(col.mean()) < 1e-9 and abs(col.std() - 1) < 1e-9
    # asymmetry: the Dutch "Symmetrie" columns count, averaged with the crowd z-score for the first 30
    assert all("asymmetry" in r.values[i] for i in ids)


def test_groups_nested_split_exact_and_disjoint(tmp_path):
    ids = _fake_enhance(tmp_path)
    dis = ["melanoma"] * 20 + ["nevus"] * 25 + ["seborrheic_keratosis"] * 15
    parts = enhance_groups(
        read_enhance(tmp_path),
        ids + ["ISIC_9999999"],
        dis + ["nevus"],
        n_finetune=30,
        groups_per_disease={"melanoma": 3, "nevus": 4, "seborrheic_keratosis": 2},
        n_blind=5,
    )
    fine = {i for i, _, _ in parts["finetune"]}
    held = {i for i, _, _ in parts["heldout"]}
    assert len(fine) == 30 and len(held) == 30 and not fine & held
    assert "ISIC_9999999" not in fine | held  # unrated images are not grouped
    assert {i for i, _, _ in parts["blind_finetune"]} == fine  # one split for both groupings
    assert len({g for _, g, _ in parts["finetune"] + parts["heldout"]}) == 3 + 4 + 2
    assert len({g for _, g, _ in parts["blind_finetune"] + parts["blind_heldout"]}) == 5
    assert all(g.startswith(d + "/") for _, g, d in parts["finetune"])
    # stratified: the fine-tuning share of each disease is about half
    assert sum(d == "melanoma" for _, _, d in parts["finetune"]) == 10


def test_groups_enhance_command_writes_training_csvs(tmp_path, synth_dir):
    from chaiderm.data.records import load_table

    table = load_table(synth_dir, "train")
    ids = _fake_enhance(tmp_path / "enh", n=len(table))
    # rename the synthetic ids to the fake ENHANCE ids through a generic-layout copy of the labels
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["image_id,diagnosis"]
    for iid, src, d in zip(ids, table.paths, table.diagnoses, strict=True):
        (data / "images" / f"{iid}.png").symlink_to(src)
        rows.append(f"{iid},{d}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    r = CliRunner().invoke(
        app,
        [
            "groups",
            "enhance",
            "--enhance",
            str(tmp_path / "enh"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "g"),
            "--n-finetune",
            "100",
            "--melanoma-groups",
            "4",
            "--sk-groups",
            "3",
            "--nevus-groups",
            "4",
            "--blind-groups",
            "6",
        ],
    )
    assert r.exit_code == 0, r.output
    g = read_groups(tmp_path / "g" / "groups.csv")
    assert len(g) == 100
    from chaiderm.data.records import read_folder

    check_nested(attach_groups(read_folder(data), tmp_path / "g" / "groups.csv"))
    assert len(read_groups(tmp_path / "g" / "groups_heldout.csv")) == len(table) - 100
    assert set(read_groups(tmp_path / "g" / "groups_blind.csv")) == set(g)
    info = json.loads((tmp_path / "g" / "groups_info.json").read_text())
    assert info["counts"]["finetune"] == 100 and info["blind_groups"] == 6


def test_missing_folder():
    with pytest.raises(DataError, match="not found"):
        read_enhance("/nonexistent/enhance")


@pytest.mark.skipif(
    not (SHARED / "enhance").exists() or not (SHARED / "isic2017").exists(),
    reason="ENHANCE / ISIC 2017 data not present",
)
def test_real_enhance_paper_protocol():
    from chaiderm.data.records import read_isic2017

    t = read_isic2017(SHARED / "isic2017", "train")
    ratings = read_enhance(SHARED / "enhance")
    parts = enhance_groups(ratings, t.image_ids, t.diagnoses)
    assert len(parts["finetune"]) == 1000 and len(parts["heldout"]) > 700
    assert len({g for _, g, _ in parts["finetune"] + parts["heldout"]}) == 20 + 12 + 15  # the paper's
    assert len({g for _, g, _ in parts["blind_finetune"] + parts["blind_heldout"]}) == 37
    paper = parts
    parts = enhance_groups(ratings, t.image_ids, t.diagnoses, groups_per_disease=HALF_GROUPS)
    assert len({g for _, g, _ in parts["finetune"] + parts["heldout"]}) == 10 + 6 + 8
    # the number of groups changes neither which images are held out nor the disease-blind groups
    for key in ("blind_finetune", "blind_heldout"):
        assert paper[key] == parts[key]
    for key in ("finetune", "heldout"):
        assert [i for i, _, _ in paper[key]] == [i for i, _, _ in parts[key]]


def test_proxy_groups_follow_visible_appearance(synth_dir, tmp_path):
    from sklearn.metrics import adjusted_rand_score

    from chaiderm.data.proxy import proxy_groups
    from chaiderm.data.records import load_table

    t = load_table(synth_dir, "train")
    parts = proxy_groups(
        t.paths,
        t.image_ids,
        t.diagnoses,
        n_finetune=120,
        n_blind=4,
        groups_per_disease={"melanoma": 4, "nevus": 4, "seborrheic_keratosis": 4},
    )
    blind = dict((i, g) for i, g, _ in parts["blind_finetune"] + parts["blind_heldout"])
    truth = [g.split("/")[1] for g in t.groups]  # the synthetic size-tone groups
    ari = adjusted_rand_score(truth, [blind[i] for i in t.image_ids])
    assert ari > 0.1, ari  # the computed groups track what the generator made visible
    assert all(g.startswith("proxy-") for g in blind.values())
    r = CliRunner().invoke(
        app,
        [
            "groups",
            "proxy",
            "--data",
            str(synth_dir),
            "--out",
            str(tmp_path / "p"),
            "--n-finetune",
            "100",
            "--blind-groups",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    check_nested(attach_groups(t, tmp_path / "p" / "groups.csv"))
