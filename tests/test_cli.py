import json

from typer.testing import CliRunner

from chaiderm.cli import app

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
    # a bad setting is refused, named, before the run folder is made
    for flag, value, said in (
        ("--ema-decay", "1.5", "ema_decay"),
        ("--device", "gpu-please", "not a torch device"),
        ("--views", "rot90", "views: 'rot90'"),
        ("--colour", "sepia", "colour: 'sepia'"),
        ("--colour-jitter", "1.0", "colour_jitter"),
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
