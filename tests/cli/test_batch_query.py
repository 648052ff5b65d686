"""`chaiderm query` over many images: batched answers equal one-at-a-time ones, reports are a choice, the
CSV is written as answers come and resumed, a bad image is named in one line."""

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from chaiderm import cli
from chaiderm.cli import app
from chaiderm.evaluation.isic_csv import COLUMNS

runner = CliRunner()


def _queries(synth_dir, n):
    return sorted((synth_dir / "test" / "images").glob("*.png"))[:n]


def _args(served, paths, *extra):
    return ["query", *map(str, paths), "--model", str(served / "run"), "--index", str(served / "ix"), *map(str, extra)]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_batched_answers_are_the_one_at_a_time_answers(served, synth_dir, tmp_path):
    """``predict_many`` (batches, one search) votes as ``predict`` does for each image alone, evidence too;
    and `query --csv` (batched) writes what one-at-a-time predictions of the same images say."""
    from chaiderm.data.images import load_image
    from chaiderm.evaluation.isic_csv import row, unknown_of
    from chaiderm.pipeline import Predictor

    predictor = Predictor.load(served / "run", served / "ix")
    paths = _queries(synth_dir, 25)  # several embedding batches, and a search of many rows at once
    images = [load_image(p, fit=predictor.cfg.model.load_size) for p in paths]
    alone = [predictor.predict(img, k=7, image_id=p.stem) for img, p in zip(images, paths, strict=True)]
    many = predictor.predict_many(images, k=7, image_ids=[p.stem for p in paths])
    with_maps = predictor.predict_many(images[:3], k=7, image_ids=[p.stem for p in paths[:3]], evidence=True)
    for a, m in zip(alone, many, strict=True):
        assert m.prediction.image_id == a.prediction.image_id
        assert [n.image_id for n in m.prediction.neighbors] == [n.image_id for n in a.prediction.neighbors]
        assert [n.distance for n in m.prediction.neighbors] == pytest.approx(
            [n.distance for n in a.prediction.neighbors], abs=1e-5
        )
        assert m.prediction.class_probabilities == pytest.approx(a.prediction.class_probabilities, abs=1e-9)
        assert m.qams.size == 0 and m.rams.size == 0  # no evidence maps unless asked
    for a, m in zip(alone, with_maps, strict=False):
        assert m.qams.shape == a.qams.shape and np.allclose(m.qams, a.qams, atol=1e-5)
        assert np.allclose(m.rams, a.rams, atol=1e-5)
    assert predictor.predict_many([], k=7) == []
    # the command's rows are those predictions, in the organisers' layout
    out = tmp_path / "pred.csv"
    r = runner.invoke(app, _args(served, paths, "--k", "7", "--csv", str(out)))
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows[0] == ["image", *COLUMNS["isic2019"]]
    # UNK from each answer's novelty flag (index.novelty), the same one at a time and batched
    assert [m.prediction.uncertainty for m in many] == [a.prediction.uncertainty for a in alone]
    want = [[a.prediction.image_id, *(f"{v:.6f}" for v in row(
                a.prediction.class_probabilities, "isic2019", unknown_of(a.prediction.uncertainty)).values())]
            for a in alone]  # fmt: skip
    assert rows[1:] == want


def test_reports_are_a_choice(served, synth_dir, tmp_path):
    paths = _queries(synth_dir, 3)
    # --csv alone: the CSV and nothing else, and the command says so
    rep = tmp_path / "none"
    r = runner.invoke(app, _args(served, paths, "--csv", str(tmp_path / "a.csv"), "--out", str(rep)))
    assert r.exit_code == 0, r.output
    assert "no report files" in r.output and not rep.exists()
    r = runner.invoke(app, _args(served, paths, "--reports", "none", "--out", str(rep)))
    assert r.exit_code == 0 and not rep.exists() and paths[0].name in r.output
    # json: the vote and its neighbours, no images
    rep = tmp_path / "json"
    r = runner.invoke(app, _args(served, paths, "--csv", str(tmp_path / "b.csv"), "--reports", "json", "--out", rep))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in rep.iterdir()) == sorted(f"{p.stem}.json" for p in paths)
    rec = json.loads((rep / f"{paths[0].stem}.json").read_text())
    assert rec["k"] == 10 and len(rec["neighbors"]) == 10 and "qam" not in rec["neighbors"][0]
    assert {"image_id", "diagnosis", "distance"} <= set(rec["neighbors"][0])
    # no --csv: the evidence page, as before
    rep = tmp_path / "html"
    r = runner.invoke(app, _args(served, paths[:1], "--out", str(rep)))
    assert r.exit_code == 0, r.output
    assert (rep / f"{paths[0].stem}.html").exists() and (rep / f"{paths[0].stem}_files" / "qam_01.png").exists()
    r = runner.invoke(app, _args(served, paths[:1], "--reports", "pdf"))
    assert r.exit_code == 2 and "--reports: one of none, json, html, not 'pdf'" in r.output
    for where in ("/proc/cq", tmp_path / "a.csv"):  # a folder that cannot be made, a file: one line, no traceback
        r = runner.invoke(app, _args(served, paths[:1], "--out", where))
        assert r.exit_code == 2 and r.output.startswith(f"error: {where}: cannot write reports there"), r.output


def test_the_csv_is_written_as_answers_come_and_a_rerun_resumes(served, synth_dir, tmp_path, monkeypatch):
    paths = _queries(synth_dir, 10)
    whole = tmp_path / "whole.csv"
    assert runner.invoke(app, _args(served, paths, "--csv", str(whole))).exit_code == 0
    reference = whole.read_text()
    assert len(reference.splitlines()) == 11
    # a run stopped (Ctrl-C) after its first batch keeps that batch's rows, each whole
    from chaiderm.data import images

    monkeypatch.setattr(cli.query, "QUERY_CHUNK", 4)
    real = images.load_image
    calls = []

    def stopped_at_the_fifth_image(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(images, "load_image", stopped_at_the_fifth_image)
    part = tmp_path / "part.csv"
    r = runner.invoke(app, _args(served, paths, "--csv", str(part)))
    assert r.exit_code != 0 and part.exists()
    assert part.read_text() == "".join(reference.splitlines(keepends=True)[:5])
    monkeypatch.setattr(images, "load_image", real)
    # killed while writing a row: the torn line is dropped, its image answered again
    part.write_text(part.read_text() + reference.splitlines()[5][:12])
    r = runner.invoke(app, _args(served, paths, "--csv", str(part)))
    assert r.exit_code == 0, r.output
    assert "already answers 4 of these 10 image(s)" in r.output and "6 row(s) added" in r.output
    assert part.read_text() == reference  # every image once, in order
    r = runner.invoke(app, _args(served, paths, "--csv", str(part)))
    assert r.exit_code == 0 and "already answers 10 of these 10" in r.output and part.read_text() == reference
    # a file of another layout is refused in one line, untouched
    other = tmp_path / "other.csv"
    other.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nx,1,0,0,0,0,0,0\n")
    r = runner.invoke(app, _args(served, paths, "--csv", str(other)))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: {other}: its header" in r.output and "--csv-format isic2018" in r.output
    assert other.read_text() == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nx,1,0,0,0,0,0,0\n"
    # a second run on a file another run is writing is refused: both would answer the missing images
    from chaiderm.evaluation.isic_csv import PredictionsFile

    with PredictionsFile(part, "isic2019"):
        r = runner.invoke(app, _args(served, paths, "--csv", str(part)))
    assert r.exit_code == 2 and f"error: {part}: another run is writing this file" in r.output
    assert part.read_text() == reference
    # two files that would answer under one id are refused before any work; the same file twice is one query
    dup = tmp_path / "d"
    dup.mkdir()
    shutil.copy(paths[0], dup / paths[0].name)
    r = runner.invoke(app, _args(served, [paths[0], dup / paths[0].name], "--csv", str(tmp_path / "dup.csv")))
    assert r.exit_code == 2 and f"would both answer as image '{paths[0].stem}'" in r.output
    r = runner.invoke(app, _args(served, [paths[0], paths[0]], "--csv", str(tmp_path / "twice.csv")))
    assert r.exit_code == 0 and len(_rows(tmp_path / "twice.csv")) == 2


def test_a_bad_image_in_a_batch_is_named_and_can_be_skipped(served, synth_dir, tmp_path):
    good = _queries(synth_dir, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    paths = [good[0], bad, good[1], good[2]]
    out = tmp_path / "p.csv"
    r = runner.invoke(app, _args(served, paths, "--csv", str(out)))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: {bad}:" in r.output and "--skip-bad" in r.output
    assert [row[0] for row in _rows(out)[1:]] == [good[0].stem]  # the answers before it are kept
    r = runner.invoke(app, _args(served, paths, "--csv", str(out), "--skip-bad"))
    assert r.exit_code == 0, r.output
    assert f"skipped {bad}:" in r.output and "skipped 1 unreadable image(s)" in r.output
    assert [row[0] for row in _rows(out)[1:]] == [p.stem for p in good]
