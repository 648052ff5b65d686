"""Filtered search: the k nearest among the cases that pass, exactly; errors that say what is valid."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.records import load_table
from chaiderm.errors import DataError
from chaiderm.index.filters import parse_where
from chaiderm.models import load_model
from chaiderm.pipeline import Predictor, build_index, load_image
from tests.index.test_archive import _split

DIAG = ["melanoma", "nevus", "nevus", "seborrheic_keratosis"]
META = [
    {"age": "55", "sex": "female", "site": "back"},
    {"age": "30", "sex": "male", "site": "lower extremity"},
    {"age": "70", "sex": "female"},
    {"sex": "female", "site": "back"},
]


def test_clauses_and_values():
    keep = lambda text: parse_where(text, DIAG, META).mask(DIAG, META).tolist()  # noqa: E731
    assert keep("sex = female and age >= 50") == [True, False, True, False]  # no age: fails its clause
    assert keep("site = 'lower extremity'") == [False, True, False, False]
    assert keep("SEX = FEMALE and diagnosis != mel") == [False, False, True, True]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("height > 3", "unknown field 'height'; this archive has age, diagnosis, sex, site"),
        ("sex = femal", "no case has sex = 'femal'; values: female, male"),
        ("sex > female", "sex is text; compare it with = or !="),
        ("age >= old", "age compares as a number"),
        ("age >= 50 or sex = male", "holds several values"),
        ("sex female", "cannot read 'sex female'"),
        ("site = 'lower", "unbalanced quotes"),
        ("diagnosis = bcc", "no case has diagnosis = 'bcc'; values: melanoma, nevus, seborrheic_keratosis"),
        ("x" * 501, "longer than 500"),
    ],
)
def test_bad_filters_say_what_is_valid(text, said):
    with pytest.raises(DataError, match="--where") as e:
        parse_where(text, DIAG, META)
    assert said in str(e.value) and e.value.code == "bad_filter"


@pytest.fixture
def archive(served, synth_dir, tmp_path):
    ids = load_table(synth_dir, "train").image_ids[:80]
    data = _split(synth_dir, tmp_path / "a", ids)  # ages 20-79 and alternating sex, from test_archive
    model, cfg = load_model(served / "run")
    ix, _ = build_index(model, cfg, load_table(data), model_dir=served / "run")
    ix.save(tmp_path / "ix")
    return data, tmp_path / "ix"


def test_identifying_fields_are_never_filtered_on_nor_listed():
    """Audit (privacy): a filter error listed up to 30 stored values of any field, patient ids included."""
    meta = [dict(m, patient_id=f"PAT-SECRET-{i}", lesion_id=f"L{i}") for i, m in enumerate(META)]
    for text in ("patient_id = x", "lesion_id = L1", "PATIENT_ID = PAT-SECRET-0"):
        with pytest.raises(DataError, match="identifies a person or lesion") as e:
            parse_where(text, DIAG, meta)
        assert "SECRET" not in str(e.value) and "L1" not in str(e.value).replace(text, "")
    with pytest.raises(DataError) as e:
        parse_where("height > 3", DIAG, meta)
    assert "patient_id" not in str(e.value) and "lesion_id" not in str(e.value)


def test_filtered_neighbours_are_the_exact_nearest_that_pass(served, archive, synth_dir):
    data, ix = archive
    p = Predictor.load(served / "run", ix)
    img = load_image(synth_dir / "test" / "images" / "SYN_test_00003.png")
    res = p.predict(img, k=7, where="sex = female and age >= 40")
    passing = [i for i, m in enumerate(p.index.metadata) if m["sex"] == "female" and float(m["age"]) >= 40]
    emb = p.index.embeddings[passing]
    d = ((emb - res.embedding[None]) ** 2).sum(1)
    want = [p.index.image_ids[passing[j]] for j in np.argsort(d, kind="stable")[:7]]
    got = [n.image_id for n in res.prediction.neighbors]
    assert got == want and len(got) == 7
    assert all(n.metadata["sex"] == "female" and float(n.metadata["age"]) >= 40 for n in res.prediction.neighbors)
    assert abs(sum(res.prediction.class_probabilities.values()) - 1) < 1e-9


def test_filters_through_the_api_and_the_cli(served, archive, synth_dir, tmp_path):
    from chaiderm.web.app import create_app

    data, ix = archive
    q = synth_dir / "test" / "images" / "SYN_test_00003.png"
    with TestClient(create_app(served / "run", ix, tmp_path / "fb.db")) as c:
        files = {"image": ("q.png", q.read_bytes(), "image/png")}
        r = c.post("/api/query", files=files, data={"k": "5", "where": "sex = male"})
        assert r.status_code == 200 and r.json()["where"] == "sex = male"
        assert all(n["metadata"]["sex"] == "male" for n in r.json()["neighbors"])
        qid = r.json()["query_id"]
        again = c.get(f"/api/query/{qid}", params={"k": 9, "where": "age < 30"}).json()
        assert len(again["neighbors"]) == 9 and all(float(n["metadata"]["age"]) < 30 for n in again["neighbors"])
        r = c.get(f"/api/query/{qid}", params={"where": "colour = red"})
        assert r.status_code == 422 and "unknown field 'colour'" in r.json()["detail"]
        r = c.get(f"/api/query/{qid}", params={"where": "diagnosis = nevus"})  # no melanoma left to vote for
        assert r.status_code == 422 and "no melanoma among" in r.json()["detail"]
    r = CliRunner().invoke(
        app,
        [
            "query",
            str(q),
            "--model",
            str(served / "run"),
            "--index",
            str(ix),
            "--where",
            "sex = nonbinary",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 2 and "values: female, male" in r.output and "Traceback" not in r.output


def test_an_archive_case_finds_no_image_of_its_own_lesion(served, synth_dir, tmp_path):
    import csv
    import shutil

    ids = load_table(synth_dir, "train").image_ids[:40]
    root = tmp_path / "lesions"
    (root / "images").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "diagnosis", "lesion_id"])
        for n, i in enumerate(ids):
            shutil.copy(synth_dir / "train" / "images" / f"{i}.png", root / "images")
            w.writerow([i, "melanoma" if n % 2 else "nevus", f"L{n // 4}"])  # four images per lesion
    model, cfg = load_model(served / "run")
    ix, _ = build_index(model, cfg, load_table(root), model_dir=served / "run")
    ix.save(tmp_path / "ix")
    p = Predictor.load(served / "run", tmp_path / "ix")
    img = load_image(root / "images" / f"{ids[5]}.png")
    for where, k in ((None, 20), ("diagnosis = melanoma", 10)):  # lesion ids themselves cannot be filtered on
        res = p.predict(img, k=k, exclude_id=ids[5], where=where)
        lesions = {n.metadata["lesion_id"] for n in res.prediction.neighbors}
        assert "L1" not in lesions and len(res.prediction.neighbors) == k
    res = p.predict(img, k=20)  # an uploaded image is no archive case: nothing is excluded
    assert res.prediction.neighbors[0].image_id == ids[5]


def test_evaluation_never_counts_a_querys_own_lesion(served, synth_dir):
    import torch

    from chaiderm.evaluation.retrieval import evaluate_retrieval

    table = load_table(synth_dir, "train").subset(range(60))
    archive = table.subset(range(40))
    queries = table.subset(range(30, 60))  # 10 images in both: their own photograph is in the archive
    for i, iid in enumerate(archive.image_ids):
        archive.metadata[i] = {"lesion_id": iid}
    for i, iid in enumerate(queries.image_ids):
        queries.metadata[i] = {"lesion_id": iid}
    model, cfg = load_model(served / "run")
    torch.manual_seed(0)
    kw = dict(ks=(3,), localisation=False)
    leaky = evaluate_retrieval(model, cfg.model.image_size, cfg.model.load_size, archive, queries, group_by=None, **kw)
    fair = evaluate_retrieval(model, cfg.model.image_size, cfg.model.load_size, archive, queries, **kw)
    assert fair["grouped_by"] == "lesion_id" and leaky["grouped_by"] is None
    assert fair["auc"]["3"] != leaky["auc"]["3"]  # the 10 self-matches no longer vote
