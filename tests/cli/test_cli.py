import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.records import load_table

runner = CliRunner()
TINY = ["--backbone", "tiny", "--image-size", "64", "--load-size", "72", "--batch-size", "32", "--lr-backbone", "1e-3"]


def test_train_index_query_end_to_end(synth_dir, tmp_path):
    run, ix, rep = tmp_path / "run", tmp_path / "ix", tmp_path / "rep"
    r = runner.invoke(app, ["train", "--data", str(synth_dir), "--out", str(run), "--epochs", "1", *TINY])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "--model", str(run), "--data", str(synth_dir), "--out", str(ix)])
    assert r.exit_code == 0, r.output
    q1 = synth_dir / "test" / "images" / "SYN_test_00000.png"
    q2 = synth_dir / "test" / "images" / "SYN_test_00001.png"
    r = runner.invoke(
        app, ["query", str(q1), str(q2), "--model", str(run), "--index", str(ix), "--k", "5", "--out", str(rep)]
    )
    assert r.exit_code == 0, r.output
    rec = json.loads((rep / "SYN_test_00000.json").read_text())
    assert rec["k"] == 5 and len(rec["neighbors"]) == 5 and 0 <= rec["melanoma_probability"] <= 1
    n0 = rec["neighbors"][0]
    assert {"image_id", "diagnosis", "group", "distance", "qam", "ram"} <= set(n0)
    assert (rep / n0["qam"]).exists() and (rep / n0["ram"]).exists()
    html = (rep / "SYN_test_00000.html").read_text()
    assert "QAM" in html and n0["image_id"] in html
    # the vote is the share of melanoma among the listed neighbours
    share = sum(n["diagnosis"] == "melanoma" for n in rec["neighbors"]) / 5
    assert abs(rec["melanoma_probability"] - share) < 1e-9


def test_bad_inputs_exit_cleanly(tmp_path, synth_dir):
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *TINY])
    assert r.exit_code == 2 and "data folder not found" in r.output
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synth_dir),
            "--out",
            str(tmp_path / "o"),
            "--logic",
            "hierarchical",
            "--groups",
            str(synth_dir / "train" / "groups_blind.csv"),
            *TINY,
        ],
    )
    assert r.exit_code == 2 and "more than one disease" in r.output
    # a bad setting is refused under its flag (the config's rule, config.RULES), before the run folder is made
    for flag, value, said in (
        ("--ema-decay", "1.5", "error: --ema-decay: must be in [0, 1), got 1.5"),
        ("--device", "gpu-please", "not a torch device"),
        ("--views", "rot90", "error: --views: 'rot90' is not one of none, flip, flip4"),
        ("--colour", "sepia", "error: --colour: 'sepia' is not one of none, shades_of_gray"),
        ("--colour-jitter", "1.0", "error: --colour-jitter: must be in [0, 1), got 1.0"),
        ("--zoom", "5", "error: --zoom: must be in [1, 4], got 5.0"),
        ("--vote", "majority", "error: --vote: 'majority' is not one of uniform, distance"),
        ("--logic", "tree", "error: --logic: 'tree' is not one of disease, joint, hierarchical"),
        ("--padding", "circular", "error: --padding: 'circular' is not one of zeros, replicate, reflect"),
        ("--m-per-class", "0", "error: --m-per-class: must be at least 1, got 0"),
    ):
        run = tmp_path / flag.strip("-")
        r = runner.invoke(app, ["train", "--data", str(synth_dir), "--out", str(run), flag, value, *TINY])
        assert r.exit_code == 2 and said in r.output and not run.exists(), flag
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    r = runner.invoke(app, ["query", str(bad), "--model", str(tmp_path), "--index", str(tmp_path)])
    assert r.exit_code == 2 and "error" in r.output


def test_index_refuses_mismatched_model(synth_dir, tmp_path):
    from chaiderm.pipeline import Predictor

    for name in ("a", "b"):
        r = runner.invoke(
            app,
            [
                "train",
                "--data",
                str(synth_dir),
                "--out",
                str(tmp_path / name),
                "--epochs",
                "1",
                "--seed",
                str(len(name) + (name == "b")),
                *TINY,
            ],
        )
        assert r.exit_code == 0, r.output
    assert (
        runner.invoke(
            app, ["index", "--model", str(tmp_path / "a"), "--data", str(synth_dir), "--out", str(tmp_path / "ix")]
        ).exit_code
        == 0
    )
    import pytest

    from chaiderm.errors import ArtifactError

    with pytest.raises(ArtifactError, match="another model"):
        Predictor.load(tmp_path / "b", tmp_path / "ix")


def test_reproduce_groups_flag_reaches_the_settings(tmp_path):
    """--half-groups asks for 10 / 6 / 8 groups; a folder made with the default 20 / 12 / 15 refuses it."""
    from dataclasses import asdict

    from chaiderm.reproduce import ReproduceSettings

    out = tmp_path / "out"
    out.mkdir()
    saved = {k: v for k, v in asdict(ReproduceSettings()).items() if k != "seeds"}
    (out / "settings.json").write_text(json.dumps(saved))
    args = ["reproduce", "--isic", str(tmp_path), "--enhance", str(tmp_path), "--masks-data", str(tmp_path)]
    r = runner.invoke(app, [*args, "--out", str(out), "--half-groups"])
    said = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 2 and "groups_per_disease" in said and "'melanoma': 10" in said
    # a folder from before the setting existed was grouped with the paper's numbers: the default resumes it
    del saved["groups_per_disease"]
    (out / "settings.json").write_text(json.dumps(saved))
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2 and "groups_per_disease" not in r.output
    r = runner.invoke(app, [*args, "--out", str(out), "--half-groups"])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "{'melanoma': 20, 'seborrheic_keratosis': 12, 'nevus': 15} there" in said


def _relabel(synth_dir, root, mapping, n=120):
    """A copy of the synthetic training split with its diagnoses written in another coding."""
    import csv
    import shutil

    (root / "images").mkdir(parents=True)
    with open(synth_dir / "train" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for r in rows:
        shutil.copy(synth_dir / "train" / "images" / f"{r['image_id']}.png", root / "images")
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "diagnosis"])
        w.writerows([(r["image_id"], mapping[r["diagnosis"]]) for r in rows])
    return root


def test_ham10000_codes_train_and_vote_for_melanoma(synth_dir, tmp_path):
    codes = {"melanoma": "MEL", "nevus": "nv", "seborrheic_keratosis": "bkl"}
    data = _relabel(synth_dir, tmp_path / "ham", codes)
    run, ix = tmp_path / "run", tmp_path / "ix"
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert set(cfg["data"]["diagnoses"]) == {"melanoma", "nevus", "benign_keratosis"}
    assert cfg["data"]["vocabulary"] and cfg["train"]["positive_class"] == "melanoma"
    assert runner.invoke(app, ["index", "--model", str(run), "--data", str(data), "--out", str(ix)]).exit_code == 0
    q = data / "images" / sorted(p.name for p in (data / "images").iterdir())[0]
    r = runner.invoke(
        app, ["query", str(q), "--model", str(run), "--index", str(ix), "--k", "40", "--out", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / f"{q.stem}.json").read_text())
    assert rec["melanoma_probability"] > 0  # 40 neighbours from an archive with ~1/3 melanoma
    assert set(rec["class_probabilities"]) == {"melanoma", "nevus", "benign_keratosis"}
    assert "melanoma_share=" in r.output and "nevus=" in r.output


def test_a_positive_class_absent_from_the_labels_is_refused(synth_dir, tmp_path):
    data = _relabel(synth_dir, tmp_path / "d", {"melanoma": "nevus", "nevus": "nevus", "seborrheic_keratosis": "bkl"})
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "o"), *TINY])
    assert r.exit_code == 2 and "positive class 'melanoma'" in r.output
    assert "nevus (" in r.output and "benign_keratosis (" in r.output  # lists what was found
    assert not (tmp_path / "o").exists()
    r = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "o"), "--positive-class", "bcc", *TINY]
    )
    assert r.exit_code == 2 and "'basal_cell_carcinoma'" in r.output


def test_cli_user_errors_are_one_line_with_what_to_do(served, synth_dir, tmp_path):
    q = str(synth_dir / "test" / "images" / "SYN_test_00000.png")
    model, ix = str(served / "run"), str(served / "ix")
    r = runner.invoke(app, ["query", q, "--model", model, "--index", ix, "--k", "0"])
    assert r.exit_code == 2 and "--k must be between 1" in r.output
    r = runner.invoke(
        app, ["index", "--model", model, "--data", str(synth_dir), "--out", str(tmp_path / "a"), "--kind", "annoy"]
    )
    assert r.exit_code == 2 and "unknown index type 'annoy'" in r.output and "flat" in r.output
    small = _relabel(synth_dir, tmp_path / "small", {d: d for d in ("melanoma", "nevus", "seborrheic_keratosis")}, 30)
    r = runner.invoke(
        app, ["index", "--model", model, "--data", str(small), "--out", str(tmp_path / "b"), "--kind", "ivf"]
    )
    assert r.exit_code == 2 and "--kind ivf needs at least" in r.output and "--kind flat" in r.output
    next(iter((small / "images").iterdir())).write_bytes(b"\xff\xd8\xff broken")
    r = runner.invoke(app, ["index", "--model", model, "--data", str(small), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--skip-bad" in r.output
    for result in (r,):
        assert "Traceback" not in result.output


def test_indexing_a_killed_run_needs_an_explicit_flag(served, synth_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(served / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["epochs"] = 200
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "history.json").write_text(json.dumps([{"epoch": e} for e in range(6)]))  # killed at epoch 6 of 200
    args = ["index", "--model", str(run), "--data", str(synth_dir), "--out", str(tmp_path / "ix")]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "epoch 6 of 200" in r.output and "--allow-incomplete" in r.output
    r = runner.invoke(app, [*args, "--allow-incomplete"])
    assert r.exit_code == 0 and "warning" in r.output


def test_serve_start_up_failures_are_one_line(served, tmp_path):
    import socket

    r = runner.invoke(app, ["serve", "--model", str(tmp_path / "nope"), "--index", str(served / "ix")])
    assert r.exit_code == 2 and "not a model run folder" in r.output and "http://" not in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = runner.invoke(
            app,
            [
                "serve",
                "--model",
                str(served / "run"),
                "--index",
                str(served / "ix"),
                "--db",
                str(tmp_path / "f.db"),
                "--port",
                str(port),
            ],
        )
    assert r.exit_code == 2 and "--port" in r.output and "http://" not in r.output


def test_serve_says_what_a_query_costs_here_before_the_first_user(served, tmp_path, monkeypatch):
    """Warm-up queries run before the address is announced: the first user does not pay torch's one-time
    set-up, the operator reads what a query costs on this machine, and nothing is stored for them."""
    import re
    import sqlite3

    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    db = tmp_path / "f.db"
    r = runner.invoke(app, ["serve", "--model", str(served / "run"), "--index", str(served / "ix"), "--db", str(db),
                            "--port", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    took = re.search(r"a query with its evidence took (\d+) ms here", r.output)
    assert took and r.output.index(took.group(0)) < r.output.index("evidence viewer on"), r.output
    tables = [t for (t,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        if table.startswith("sqlite"):
            continue
        assert sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table


def test_serve_warns_when_a_query_costs_more_than_its_budget_here(served, tmp_path, monkeypatch):
    """A machine slower than the one the recipe was sized on: the operator is told before the address, with
    what would answer faster; within the budget nothing is said."""
    import uvicorn

    from chaiderm.pipeline import QUERY_BUDGET_MS, Predictor

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    args = ["serve", "--model", str(served / "run"), "--index", str(served / "ix"), "--port", "0"]
    monkeypatch.setattr(Predictor, "warm_up", lambda self, n=3, k=10: QUERY_BUDGET_MS + 250)
    r = runner.invoke(app, [*args, "--db", str(tmp_path / "slow.db")])
    assert r.exit_code == 0, r.output
    line = f"warning: a query takes {QUERY_BUDGET_MS + 250:.0f} ms here, above the {QUERY_BUDGET_MS:.0f} ms"
    assert line in r.output and r.output.index(line) < r.output.index("evidence viewer on"), r.output
    monkeypatch.setattr(Predictor, "warm_up", lambda self, n=3, k=10: QUERY_BUDGET_MS - 1)
    r = runner.invoke(app, [*args, "--db", str(tmp_path / "fast.db")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_names_with_brackets_are_printed_as_they_are(tmp_path):
    """Paths are data, not console markup: an output folder named like a closing tag once raised after the
    work was done, and one named like a style lost its name."""
    for name in ("[/b]set", "[red]set"):
        out = tmp_path / name
        r = runner.invoke(app, ["synth", "--out", str(out), "--n-train", "6", "--n-val", "3", "--n-test", "3",
                                "--size", "32"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert f"to {out}" in r.output.replace("\n", ""), r.output
        assert (out / "train").is_dir()


def test_query_csv_is_scored_by_the_isic_organisers_scorer(served, synth_dir, tmp_path):
    """`query --csv` in the ISIC 2018 task 3 layout, scored by `isic-challenge-scoring`, not by us."""
    import csv
    import shutil
    import warnings

    import isic_challenge_scoring as isic

    from chaiderm.evaluation.isic_csv import COLUMNS, write_truth

    codes = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]  # HAM10000's coding, read by the vocabulary
    images = sorted((synth_dir / "train" / "images").glob("*.png"))[:105]
    arch, queries = tmp_path / "arch", tmp_path / "q"
    (arch / "images").mkdir(parents=True)
    queries.mkdir()
    with open(arch / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "diagnosis"])
        for j, img in enumerate(images[:70]):
            shutil.copy(img, arch / "images")
            w.writerow([img.stem, codes[j % 7]])
    q_ids, q_truth = [], []
    for j, img in enumerate(images[70:]):
        shutil.copy(img, queries / f"ISIC_{j:07d}.png")
        q_ids.append(f"ISIC_{j:07d}")
        q_truth.append(
            [
                "melanoma",
                "nevus",
                "basal_cell_carcinoma",
                "actinic_keratosis",
                "benign_keratosis",
                "dermatofibroma",
                "vascular_lesion",
            ][j % 7]
        )
    ix = tmp_path / "ix"
    assert (
        runner.invoke(app, ["index", "--model", str(served / "run"), "--data", str(arch), "--out", str(ix)]).exit_code
        == 0
    )
    pred = tmp_path / "pred.csv"
    args = ["query", *map(str, sorted(queries.iterdir())), "--model", str(served / "run"), "--index", str(ix)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "rep"), "--csv", str(pred), "--csv-format", "isic2018"])
    assert r.exit_code == 0, r.output
    header = pred.read_text().splitlines()[0].split(",")
    assert header == ["image", *COLUMNS["isic2018"]]
    truth = tmp_path / "truth.csv"
    write_truth(truth, q_ids, q_truth, "isic2018")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = isic.ClassificationScore.from_file(truth, pred, isic.ClassificationMetric.BALANCED_ACCURACY)
    # the organisers' balanced accuracy, checked against an independent computation on the same files
    with open(pred) as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    cols = COLUMNS["isic2018"]

    def label(r):  # the organisers' rule: a tie between top columns is "undecided", i.e. wrong
        top = max(float(r[c]) for c in cols)
        best = [c for c in cols if float(r[c]) == top]
        return best[0] if len(best) == 1 else "undecided"

    y_pred = [label(rows[i]) for i in q_ids]
    with open(truth) as fh:
        y_true = [max(cols, key=lambda c, r=r: float(r[c])) for r in csv.DictReader(fh)]
    recall = [np.mean([p == t for p, t in zip(y_pred, y_true, strict=True) if t == c]) for c in cols]
    assert abs(score.overall - np.mean(recall)) < 1e-9
    per_category = score.to_dict()["per_category"]  # their per-diagnosis AUC, one per column
    assert set(per_category["auc"]) == set(cols) and all(0 <= v <= 1 for v in per_category["auc"].values())
    # the 2019 layout takes every diagnosis; a diagnosis the 2018 layout lacks is refused by name
    r = runner.invoke(
        app,
        [
            *args[:2],
            "--model",
            str(served / "run"),
            "--index",
            str(served / "ix"),
            "--out",
            str(tmp_path / "rep2"),
            "--csv",
            str(tmp_path / "x.csv"),
            "--csv-format",
            "isic2017",
        ],
    )
    assert r.exit_code == 2 and "--csv-format: 'isic2017'" in r.output


def test_train_uses_experts_feedback_from_the_server_database(synth_dir, tmp_path):
    """`train --feedback DB` reads the server's clicks: experts' train, viewers' and purged ones are
    counted and left out, and the clicks change the trained weights."""
    from pathlib import Path

    from safetensors.numpy import load_file

    from chaiderm.data.feedback import FeedbackStore

    store = FeedbackStore(tmp_path / "fb.db")
    test = sorted((synth_dir / "test" / "images").glob("*.png"))
    for i, path in enumerate(test[:4]):
        qid = store.add_query(Path(path).read_bytes())
        store.add_feedback(qid, f"SYN_train_{i:05d}", True, user="dr.ada", role="expert")
        store.add_feedback(qid, f"SYN_train_{i + 50:05d}", False, user="dr.ada", role="expert")
        store.add_feedback(qid, f"SYN_train_{i + 90:05d}", False, user="nurse", role="viewer")
    purged = store.add_query(Path(test[5]).read_bytes())
    store.add_feedback(purged, "SYN_train_00001", True, user="dr.ada", role="expert")
    store.add_feedback(purged, "SYN_train_00002", False, user="dr.ada", role="expert")
    store.purge(0)
    for path in test[:4]:  # re-add the first four after the purge: their images are back
        store.add_query(Path(path).read_bytes())
    with_fb, without = tmp_path / "fb_run", tmp_path / "plain_run"
    args = ["train", "--data", str(synth_dir), "--epochs", "1", "--seed", "3", *TINY]
    r = runner.invoke(
        app, [*args, "--out", str(with_fb), "--feedback", str(tmp_path / "fb.db"), "--feedback-weight", "5"]
    )
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "feedback: 4 triplet(s) from 4 quer" in out
    assert "1 judged queries whose image the retention policy erased" in out
    assert "4 clicks by users whose role does not train the model" in out
    cfg = json.loads((with_fb / "config.json").read_text())
    assert cfg["data"]["feedback"] == str(tmp_path / "fb.db") and cfg["train"]["feedback_weight"] == 5.0
    assert runner.invoke(app, [*args, "--out", str(without)]).exit_code == 0
    a, b = load_file(with_fb / "model.safetensors"), load_file(without / "model.safetensors")
    assert any(not np.allclose(a[k], b[k]) for k in a), "the clicks did not reach training"


def test_train_with_mask_data_defaults_to_maps_without_imprint(synth_dir, tmp_path):
    run = tmp_path / "taught"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synth_dir),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--mask-data",
            str(synth_dir / "val"),
            *TINY,
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["padding"] == "replicate" and cfg["train"]["mask_weight"] == 3.0 and cfg["data"]["masks"]
    assert cfg["model"]["map_stride"] == 16  # 14x14 maps at 224: round 9 of research/maps/maps.md
    r = runner.invoke(
        app, ["train", "--data", str(synth_dir), "--out", str(tmp_path / "x"), "--mask-data", str(tmp_path), *TINY]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_evaluate_command(served, synth_dir, tmp_path):
    out = tmp_path / "eval.json"
    base = ["evaluate", "--model", str(served / "run"), "--index", str(served / "ix"), "--out", str(out)]
    r = runner.invoke(app, [*base, "--data", str(synth_dir), "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_queries"] == 90 and set(res["auc"]) == {"melanoma", "nevus", "seborrheic_keratosis"}
    for c, row in res["auc"].items():
        for k, v in row.items():
            lo, hi = res["auc_ci"][c][k]
            assert 0 <= lo <= v <= hi <= 1
    assert set(res["balanced_accuracy"]) == {"3", "5", "10", "20", "40"} and "rel" in res
    assert "balanced" in r.output and "AUC" in r.output
    # the archive's own images as queries: each excludes itself, so none is its own nearest case
    r = runner.invoke(app, [*base, "--data", str(synth_dir), "--split", "train", "--n-boot", "20"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "--data", str(tmp_path / "none")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_evaluate_table_fits_80_columns_with_every_figure():
    # ham10000_dev's seven diagnoses once hid every interval behind an ellipsis at 80 columns
    from rich.console import Console

    from chaiderm.cli import evaluation_table

    names = ["nevus", "melanoma", "basal_cell_carcinoma", "actinic_keratosis", "vascular_lesion", "x" * 30]
    ks = ["3", "5", "10", "20", "40"]
    res = {
        "n_archive": 552,
        "auc": {c: {k: 0.5 + i / 100 + j / 1000 for j, k in enumerate(ks)} for i, c in enumerate(names)},
        "auc_ci": {c: {k: [0.11 + i / 100, 0.91 - j / 100] for j, k in enumerate(ks)} for i, c in enumerate(names)},
        "balanced_accuracy": {k: 0.321 for k in ks},
    }
    console = Console(width=80, record=True, force_terminal=False)
    console.print(evaluation_table(res, 556))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for i, c in enumerate(names):
        for j, k in enumerate(ks):
            assert f"{res['auc'][c][k]:.3f}" in text and f"{0.11 + i / 100:.2f}-{0.91 - j / 100:.2f}" in text
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2)
    assert all(c in first_column for c in names)  # long names fold, none is cut


def test_evaluate_weighs_votes_by_distance(served, synth_dir, tmp_path):
    from sklearn.metrics import roc_auc_score

    from chaiderm.evaluation.evaluate import evaluate_index
    from chaiderm.index.knn import knn_vote
    from chaiderm.pipeline import Predictor

    p = Predictor.load(served / "run", served / "ix")
    table = load_table(synth_dir, "test")
    res = evaluate_index(p, table, ks=(5,), n_boot=20, vote="distance")
    emb, _ = p.embed_table(table)
    d, rows = p.index.search(emb, 5)  # test images are not in the archive: nothing is excluded
    y = np.asarray(table.diagnoses) == "melanoma"
    pos = (np.asarray(p.index.diagnoses)[rows] == "melanoma").astype(float)
    assert res["vote"] == "distance"
    assert res["auc"]["melanoma"]["5"] == pytest.approx(roc_auc_score(y, knn_vote(pos, 5, d, "distance")))
    assert res["auc"]["melanoma"]["5"] != pytest.approx(roc_auc_score(y, pos.mean(1)))  # not the plain vote
    base = ["evaluate", "--model", str(served / "run"), "--index", str(served / "ix"), "--data", str(synth_dir)]
    r = runner.invoke(app, [*base, "--vote", "nearest"])
    assert r.exit_code == 2 and "--vote" in r.output and "Traceback" not in r.output


def test_train_on_extra_data_records_it_and_refuses_a_case_twice(synth_dir, tmp_path):
    from chaiderm.config import RunConfig

    run = tmp_path / "run"
    extra = synth_dir / "test"  # another labelled folder: its cases join the training rows
    r = runner.invoke(
        app, ["train", "--data", str(synth_dir), "--extra-data", str(extra), "--out", str(run), "--epochs", "1", *TINY]
    )
    assert r.exit_code == 0, r.output
    cfg = RunConfig.load(run / "config.json")
    assert cfg.data.extra == [str(extra)] and cfg.data.n_train == 240 + 90
    # the training split itself again would put every case in twice: refused, naming the folder
    r = runner.invoke(
        app,
        ["train", "--data", str(synth_dir), "--extra-data", str(synth_dir / "train"), "--out", str(tmp_path / "o"),
         *TINY],
    )  # fmt: skip
    assert r.exit_code == 2 and "is also in" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_a_model_that_votes_by_distance_is_followed_by_query_and_evaluate(served, synth_dir, tmp_path):
    import shutil

    from chaiderm.config import RunConfig
    from chaiderm.data.images import load_image
    from chaiderm.pipeline import Predictor

    run = tmp_path / "run"
    shutil.copytree(served / "run", run)
    cfg = RunConfig.load(run / "config.json")
    cfg.model.vote = "distance"
    cfg.save(run / "config.json")
    q = synth_dir / "test" / "images" / "SYN_test_00000.png"
    pred = Predictor.load(run, served / "ix").predict(load_image(q), k=7, evidence=False).prediction
    weight: dict[str, float] = {}
    for n in pred.neighbors:
        weight[n.diagnosis] = weight.get(n.diagnosis, 0.0) + 1 / (n.distance + 1e-6)
    for d, share in pred.class_probabilities.items():
        assert share == pytest.approx(weight.get(d, 0.0) / sum(weight.values())), d
    assert pred.vote == "distance" and pred.to_dict()["vote"] == "distance"
    # the summary still counts cases, whatever their weights
    counts = sorted((sum(n.diagnosis == d for n in pred.neighbors) for d in weight), reverse=True)
    assert pred.summary().startswith(f"{counts[0]} of 7 nearest cases")
    # `chaiderm query` with that model: the report says so
    rep = tmp_path / "rep"
    r = runner.invoke(app, ["query", str(q), "--model", str(run), "--index", str(served / "ix"), "--k", "7",
                            "--out", str(rep)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((rep / "SYN_test_00000.json").read_text())["vote"] == "distance"
    assert "weighed by its closeness" in (rep / "SYN_test_00000.html").read_text()
    # `chaiderm evaluate` follows the model's vote unless told otherwise
    out = tmp_path / "ev.json"
    base = ["evaluate", "--model", str(run), "--index", str(served / "ix"), "--data", str(synth_dir), "--n-boot", "20"]
    for extra, want in (([], "distance"), (["--vote", "uniform"], "uniform")):
        r = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["vote"] == want
    # a bad vote is refused before a run folder is made
    r = runner.invoke(
        app, ["train", "--data", str(synth_dir), "--out", str(tmp_path / "v"), "--vote", "nearest", *TINY]
    )
    assert r.exit_code == 2 and "vote: 'nearest'" in r.output and not (tmp_path / "v").exists()


def _self_signed(folder):
    """A throwaway certificate and key (PEM), made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    c, k = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(k), "-out", str(c), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return c, k


def test_hostile_cli_arguments_are_one_line_and_the_port_announced_is_the_port_listened_on(
    served, synth_dir, tmp_path, monkeypatch
):
    """Audit failures 11, 12 and 15: `serve --port 99999` announced 99999 and listened elsewhere; a swapped
    certificate and key, `query --out /proc/...` and `synth --out /proc/...` printed tracebacks;
    `purge --older-than nan` was accepted."""
    import uvicorn

    listened = {}

    def run(self, sockets=None):
        listened.update(port=sockets[0].getsockname()[1])

    monkeypatch.setattr(uvicorn.Server, "run", run)
    base = ["serve", "--model", str(served / "run"), "--index", str(served / "ix"), "--db", str(tmp_path / "s.db")]
    r = runner.invoke(app, [*base, "--port", "99999"])
    assert r.exit_code == 2 and "--port must be between 1 and 65535" in r.output and "http" not in r.output
    r = runner.invoke(app, [*base, "--port", "0"])
    assert r.exit_code == 0, r.output
    assert f"http://127.0.0.1:{listened['port']}/" in r.output and listened["port"] != 0
    cert, key = _self_signed(tmp_path)
    r = runner.invoke(app, [*base, "--port", "0", "--ssl-certfile", str(key), "--ssl-keyfile", str(cert)])
    assert r.exit_code == 2 and "not a matching PEM certificate and private key" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    r = runner.invoke(app, [*base, "--keep-queries", "nan"])
    assert r.exit_code == 2 and "--keep-queries" in r.output
    q = str(synth_dir / "test" / "images" / "SYN_test_00000.png")
    r = runner.invoke(app, ["query", q, "--model", str(served / "run"), "--index", str(served / "ix"),
                            "--out", "/proc/cq"])  # fmt: skip
    assert r.exit_code == 2 and r.output.startswith("error: /proc/cq") and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["synth", "--out", "/proc/x", "--n-train", "3", "--n-val", "3", "--n-test", "3"])
    assert r.exit_code == 2 and "error: /proc/x" in r.output, r.output
    db = tmp_path / "p.db"
    from chaiderm.data.feedback import FeedbackStore

    FeedbackStore(db)
    for bad in ("nan", "-1"):
        r = runner.invoke(app, ["purge", "--db", str(db), "--older-than", bad])
        assert r.exit_code == 2 and "--older-than must be 0 or more days" in r.output, r.output


def test_train_options_set_the_settings_they_are_named_after():
    from chaiderm.cli._common import config_from_options, flag_of
    from chaiderm.config import ModelConfig, TrainConfig

    options = {"lr_step": 2, "weights": Path("w.pt"), "logic": None, "data": Path("x"), "ensemble": 3}
    assert config_from_options(TrainConfig, options) == TrainConfig(lr_step=2)  # None: the default
    assert config_from_options(ModelConfig, options) == ModelConfig(weights="w.pt")
    assert flag_of("colour_jitter") == "--colour-jitter"
    # every other option of `chaiderm train` says where data comes from or how this run goes, none a setting
    import typer

    train = typer.main.get_command(app).commands["train"]
    settings = {f.name for kind in (ModelConfig, TrainConfig) for f in dataclasses.fields(kind)}
    others = {p.name for p in train.params} - settings
    assert others == {"data", "out", "extra_data", "groups", "init", "feedback", "mask_data", "split", "val_data",
                      "val_split", "resume", "force", "skip_bad", "device", "ensemble", "nproc"}  # fmt: skip


def test_holdout_is_not_trained_on_chooses_the_epoch_and_is_recorded(synth_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(synth_dir), "--out", str(run), "--epochs", "1", "--holdout", "0.2", *TINY]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    held = cfg["data"]["holdout"]
    train = load_table(synth_dir, "train")
    assert cfg["train"]["holdout"] == 0.2 and 40 <= len(held) <= 56  # a fifth of 240, by whole strata
    assert set(held) <= set(train.image_ids) and len(set(held)) == len(held)
    # the held-out images validated the run, the rest trained it; the validation split was not read
    assert cfg["data"]["n_train"] == len(train) - len(held) and cfg["data"]["n_val"] == len(held)
    assert cfg["data"]["val_split"] is None
    held_dx = {train.diagnoses[train.image_ids.index(i)] for i in held}
    assert held_dx == set(train.diagnoses)  # stratified: every diagnosis is held out too
    # the same seed holds out the same images
    r = runner.invoke(app, [*args[:4], str(tmp_path / "again"), *args[5:]])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "again" / "config.json").read_text())["data"]["holdout"] == held


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--holdout", "0.6"], "--holdout"),
        (["--holdout", "0.2", "--val-split", "val"], "leave --val-data and --val-split out"),
    ],
)
def test_bad_holdout_is_one_line_naming_the_flag(synth_dir, tmp_path, extra, says):
    r = runner.invoke(app, ["train", "--data", str(synth_dir), "--out", str(tmp_path / "o"), *extra, *TINY])
    assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output, r.output
