"""chaiderm against a real PACS (Orthanc + DICOMweb, started per module on loopback): archive cases from a
study, query a study and store the results back as an SR and an evidence capture, and refuse a PACS that is
down or slow and DICOM that is hostile, by name. Patient names and ids never reach an output or the audit."""

from __future__ import annotations

import csv
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, DermoscopicPhotographyImageStorage, generate_uid
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.feedback import FeedbackStore
from chaiderm.index.archive import ArchiveIndex, cases_dir
from tests.pacs import pacs_fixture as pf

why = pf.missing()
if why and pf.REQUIRED:
    raise RuntimeError(f"CHAIDERM_REQUIRE_PACS=1 but {why}")

runner = CliRunner()
N_IMAGES = 6  # dermoscopic instances of the main study (one of them VL photographic)


def _labels(synth_dir: Path, split: str = "test") -> list[tuple[str, str]]:
    with open(synth_dir / split / "labels.csv") as fh:
        return [(r["image_id"], r["diagnosis"]) for r in csv.DictReader(fh)]


def _pixels(synth_dir: Path, image_id: str, split: str = "test") -> np.ndarray:
    return np.asarray(Image.open(synth_dir / split / "images" / f"{image_id}.png").convert("RGB"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if why:
        pytest.skip(why)
    with pf.running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def study(orthanc, synth_dir, tmp_path_factory):
    """A study of N_IMAGES synthetic dermoscopy photographs, a CT slice and a text report; its labels CSV
    names every photograph but the last by SOP Instance UID."""
    uid, series = generate_uid(), generate_uid()
    cases = _labels(synth_dir)[:N_IMAGES]
    photos = [
        pf.photograph(
            _pixels(synth_dir, iid),
            uid,
            series,
            number=i + 1,
            sop=pf.VL_PHOTOGRAPHIC if i == 1 else DermoscopicPhotographyImageStorage,
        )
        for i, (iid, _) in enumerate(cases)
    ]
    pf.store(orthanc, [*photos, pf.ct_slice(uid), pf.text_report(uid)])
    labels = tmp_path_factory.mktemp("labels") / "labels.csv"
    rows = [(p.SOPInstanceUID, d) for p, (_, d) in zip(photos, cases, strict=True)][:-1]
    labels.write_text("sop_instance_uid,diagnosis\n" + "".join(f"{u},{d}\n" for u, d in rows))
    return {
        "uid": uid,
        "series": series,
        "photos": [p.SOPInstanceUID for p in photos],
        "labels": labels,
        "rows": dict(rows),
    }


@pytest.fixture
def ix(served, tmp_path):
    shutil.copytree(served / "ix", tmp_path / "ix")
    FeedbackStore(tmp_path / "fb.db")  # the server's database, for the audit rows
    return tmp_path / "ix"


def _no_patient(*texts: str) -> None:
    for text in texts:
        for secret in pf.PATIENT:
            assert secret not in text


def _audit_dump(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'")]
        return "\n".join(repr(row) for t in tables for row in con.execute(f"select * from {t}"))
    finally:
        con.close()


def _add(ix: Path, url: str, study: dict, *extra: str):
    return runner.invoke(
        app,
        ["archive", "add", "--index", str(ix), "--dicomweb", url, "--study", study["uid"]]
        + ["--labels", str(study["labels"]), "--db", str(ix.parent / "fb.db"), *extra],
    )


def test_archive_add_from_pacs_takes_the_labelled_photographs_once(orthanc, study, ix, monkeypatch):
    from chaiderm.pacs import client

    fetched: list[str] = []
    real = client.Pacs.fetch
    monkeypatch.setattr(client.Pacs, "fetch", lambda self, ref: fetched.append(ref.instance) or real(self, ref))
    before = len(ArchiveIndex.load(ix))
    r = _add(ix, orthanc.dicomweb, study)
    assert r.exit_code == 0, r.output
    new = ArchiveIndex.load(ix)
    want = study["rows"]
    assert len(new) == before + len(want)
    assert dict(zip(new.image_ids[before:], new.diagnoses[before:], strict=True)) == want
    assert sorted(fetched) == sorted(want)  # the unlabelled photograph is not even retrieved
    assert all((cases_dir(ix) / f"{u}.dcm").is_file() for u in want)
    assert "1 CT Image Storage" in r.output and "1 Basic Text SR Storage" in r.output
    assert "1 instance(s) without a row in the labels CSV" in r.output
    # the archive keeps the patient id (it keeps a query away from its own lesion), never shows it
    assert new.metadata[before]["patient_id"] == pf.PATIENT[1]
    audit = _audit_dump(ix.parent / "fb.db")
    assert all(u in audit for u in want) and study["uid"] in audit
    _no_patient(r.output, audit)

    fetched.clear()
    again = _add(ix, orthanc.dicomweb, study)
    assert again.exit_code == 0, again.output
    assert fetched == [] and len(ArchiveIndex.load(ix)) == len(new)
    assert f"{len(want)} instance(s) already in the archive, not retrieved" in again.output
    assert "added 0 case(s)" in again.output


def test_index_from_pacs_by_a_qido_query(orthanc, study, served, tmp_path):
    out = tmp_path / "pacs-ix"
    r = runner.invoke(
        app,
        ["index", "--model", str(served / "run"), "--out", str(out), "--dicomweb", orthanc.dicomweb]
        + ["--qido", f"StudyInstanceUID={study['uid']}", "--labels", str(study["labels"])],
    )
    assert r.exit_code == 0, r.output
    ix = ArchiveIndex.load(out)
    assert sorted(ix.image_ids) == sorted(study["rows"])
    _no_patient(r.output)
    # by series: the photographs' series alone (the CT and the report are in series of their own)
    from chaiderm.pacs.client import Pacs

    found = Pacs(orthanc.dicomweb).find(series=[study["series"]])
    assert sorted(r.instance for r in found.images) == sorted(study["photos"]) and not found.others


def test_query_store_puts_a_report_and_a_capture_per_image_into_new_series(orthanc, study, served, tmp_path):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    from chaiderm.pacs import results

    k = 5
    dw = DICOMwebClient(orthanc.dicomweb)
    old = {s["0020000E"]["Value"][0] for s in dw.search_for_series(study["uid"])}
    r = runner.invoke(
        app,
        ["query", "--model", str(served / "run"), "--index", str(served / "ix"), "--dicomweb", orthanc.dicomweb]
        + ["--study", study["uid"], "--store", "--k", str(k)],
    )
    assert r.exit_code == 0, r.output
    answered = [line.split("\t")[0] for line in r.output.splitlines() if "\tmelanoma_probability=" in line]
    assert sorted(answered) == sorted(study["photos"])
    assert f"stored {2 * N_IMAGES} result object(s)" in r.output
    _no_patient(r.output)

    series = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in dw.search_for_series(study["uid"])}
    new = {uid: m for uid, m in series.items() if uid not in old}
    assert sorted(new.values()) == ["OT", "SR"]  # one series per modality, beside the study's own
    sources = set(study["photos"])
    files = []
    for uid, modality in new.items():
        instances = dw.search_for_instances(study["uid"], uid)
        assert len(instances) == N_IMAGES
        for item in instances:
            ds = dw.retrieve_instance(study["uid"], uid, item["00080018"]["Value"][0])
            path = tmp_path / f"{modality}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            assert ds.StudyInstanceUID == study["uid"]
            if modality == "SR":
                sr = hd.sr.ComprehensiveSR.from_dataset(ds)
                assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
                content = sr.ContentSequence
                refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content if i.ValueType == "IMAGE"]
                assert len(refs) == 1 and refs[0] in sources
                sources.discard(refs[0])
                neighbours = [i for i in content if i.ConceptNameCodeSequence[0].CodeValue == results.NEIGHBOURS.value]
                assert len(neighbours[0].ContentSequence) == k
                votes = [i for i in content if i.ConceptNameCodeSequence[0].CodeValue == results.VOTE.value][0]
                codes = {v.ConceptNameCodeSequence[0].CodeValue for v in votes.ContentSequence}
                shares = [float(v.MeasuredValueSequence[0].NumericValue) for v in votes.ContentSequence]
                assert abs(sum(shares) - 1) < 1e-6
                assert codes <= {"1162635006", "400096001", "DX-SK"}
                texts = {i.ConceptNameCodeSequence[0].CodeMeaning: getattr(i, "TextValue", "") for i in content}
                assert texts["Model weights digest"] == ArchiveIndex.load(served / "ix").info["model_digest"]
                assert texts["Algorithm Version"].startswith("chaiderm ")
                assert "not a diagnosis" in texts["Intended use"]
            else:
                assert "not a diagnosis" in ds.ImageComments and ds.BurnedInAnnotation == "YES"
                assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.pixel_array.ndim == 3
                assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in study["photos"]
            back = dcmread(path)
            assert back.SOPInstanceUID == ds.SOPInstanceUID  # pydicom round trip of the file
    assert sources == set()  # every photograph has its report
    if shutil.which("dciodvfy"):
        for path in files:
            verdict = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (verdict.stdout + verdict.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], (path.name, errors)
    elif pf.REQUIRED:
        pytest.fail("dciodvfy (dicom3tools) is not installed")

    # the study now holds chaiderm's own results: a second query passes over them, and answers the same images
    again = runner.invoke(
        app,
        ["query", "--model", str(served / "run"), "--index", str(served / "ix"), "--dicomweb", orthanc.dicomweb]
        + ["--study", study["uid"]],
    )
    assert again.exit_code == 0, again.output
    assert "Comprehensive SR Storage" in again.output and "Secondary Capture Image Storage" in again.output
    assert sum("\tmelanoma_probability=" in ln for ln in again.output.splitlines()) == N_IMAGES


def _dead_port() -> int:
    return pf.free_port()  # nothing listens there once the probe socket is closed


@pytest.fixture
def nowhere(tmp_path):
    """A study to ask for, and its labels, for a PACS that never answers (no Orthanc needed)."""
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed")
    labels = tmp_path / "labels.csv"
    labels.write_text("sop_instance_uid,diagnosis\n1.2.3.4,melanoma\n")
    return {"uid": "1.2.3", "labels": labels}


def test_a_pacs_that_is_down_is_one_line_and_changes_nothing(nowhere, ix, served):
    study = nowhere
    url = f"http://127.0.0.1:{_dead_port()}/dicom-web"
    before = (ix / "cases.json").read_bytes()
    t = time.monotonic()
    r = _add(ix, url, study)
    assert r.exit_code == 2
    assert r.output.strip().count("\n") <= 1 and "cannot reach the PACS" in r.output, r.output
    assert time.monotonic() - t < 30
    assert (ix / "cases.json").read_bytes() == before and not any(cases_dir(ix).glob("*.dcm"))
    q = runner.invoke(
        app,
        ["query", "--model", str(served / "run"), "--index", str(ix), "--dicomweb", url, "--study", study["uid"]],
    )
    assert q.exit_code == 2 and "cannot reach the PACS" in q.output


@pytest.fixture
def silent_pacs():
    """A socket that accepts connections and never answers a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/dicom-web"
    stop.set()
    thread.join(5)
    for c in held:
        c.close()
    srv.close()


def test_a_slow_pacs_times_out_within_the_limit(silent_pacs, nowhere, ix, monkeypatch):
    from chaiderm.pacs import client

    study = nowhere
    monkeypatch.setattr(client, "READ_S", 1.0)
    before = (ix / "cases.json").read_bytes()
    t = time.monotonic()
    r = _add(ix, silent_pacs, study)
    took = time.monotonic() - t
    assert r.exit_code == 2 and "did not answer" in r.output and "within 1 s" in r.output, r.output
    assert took < 10, took
    assert (ix / "cases.json").read_bytes() == before


@pytest.fixture(scope="module")
def hostile(orthanc, synth_dir, tmp_path_factory):
    """A study with one good photograph and hostile ones: truncated pixel data, 60,000 x 60,000 pixels
    claimed, a dermoscopic class without pixels, and an image under a class chaiderm does not read."""
    uid, series = generate_uid(), generate_uid()
    (iid, diagnosis), *_ = _labels(synth_dir, "val")
    good = pf.photograph(_pixels(synth_dir, iid, "val"), uid, series, number=1)
    truncated = pf.photograph(_pixels(synth_dir, iid, "val"), uid, series, number=2)
    truncated.PixelData = truncated.PixelData[:1000]
    huge = pf.photograph(_pixels(synth_dir, iid, "val"), uid, series, number=3)
    huge.Rows = huge.Columns = 60_000
    empty = pf.photograph(_pixels(synth_dir, iid, "val"), uid, series, number=4)
    del empty.PixelData
    wrong = pf.photograph(_pixels(synth_dir, iid, "val")[::-1].copy(), uid, series, number=5, sop=CTImageStorage)
    pf.store(orthanc, [good, truncated, huge, empty, wrong])
    labels = tmp_path_factory.mktemp("hostile") / "labels.csv"
    every = [good, truncated, huge, empty, wrong]
    labels.write_text("sop_instance_uid,diagnosis\n" + "".join(f"{d.SOPInstanceUID},{diagnosis}\n" for d in every))
    return {
        "uid": uid,
        "labels": labels,
        "good": good.SOPInstanceUID,
        "bad": {"truncated": truncated.SOPInstanceUID, "huge": huge.SOPInstanceUID, "empty": empty.SOPInstanceUID},
        "wrong": wrong.SOPInstanceUID,
    }


def test_hostile_dicom_from_the_pacs_is_refused_by_name(orthanc, hostile, served, ix):
    base = ["query", "--model", str(served / "run"), "--index", str(served / "ix"), "--dicomweb", orthanc.dicomweb]
    r = runner.invoke(app, [*base, "--study", hostile["uid"]])
    assert r.exit_code == 2
    assert any(f"instance {u}:" in r.output for u in hostile["bad"].values()), r.output
    # the wrong class is passed over by name, never decoded
    assert "1 CT Image Storage" in r.output and hostile["wrong"] in r.output

    r = runner.invoke(app, [*base, "--study", hostile["uid"], "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert f"{hostile['good']}\tmelanoma_probability=" in r.output
    assert f"instance {hostile['bad']['truncated']}: cannot decode the DICOM pixel data" in r.output
    assert f"instance {hostile['bad']['huge']}: image is 60000x60000" in r.output
    assert f"instance {hostile['bad']['empty']}:" in r.output

    before = len(ArchiveIndex.load(ix))
    study = {"uid": hostile["uid"], "labels": hostile["labels"]}
    r = _add(ix, orthanc.dicomweb, study)
    assert r.exit_code == 2 and "instance " in r.output
    assert len(ArchiveIndex.load(ix)) == before and not any(cases_dir(ix).glob("*.dcm"))
    r = _add(ix, orthanc.dicomweb, study, "--skip-bad")
    assert r.exit_code == 0, r.output
    assert ArchiveIndex.load(ix).image_ids[before:] == [hostile["good"]]
    assert sorted(p.stem for p in cases_dir(ix).glob("*.dcm")) == [hostile["good"]]


def test_pacs_options_are_checked_before_any_request():
    from chaiderm.cli._pacs import parse_qido
    from chaiderm.errors import DataError
    from chaiderm.pacs.client import check_url, display_url
    from chaiderm.pacs.fetch import check_uid

    assert (
        display_url("https://user:secret@pacs.example:8443/dicom-web/?token=x") == "https://pacs.example:8443/dicom-web"
    )
    assert parse_qido(["Modality=XC", "StudyDate=20260101-20261231"]) == {
        "Modality": "XC",
        "StudyDate": "20260101-20261231",
    }
    for bad in (["Modality"], ["a b=c"], ["=x"]):
        with pytest.raises(DataError, match="--qido"):
            parse_qido(bad)
    for url in ("ftp://pacs/dicom-web", "pacs:8042", "http://"):
        with pytest.raises(DataError, match="--dicomweb"):
            check_url(url)
    for uid in ("../../etc/passwd", "1.2.x", "1" * 65):
        with pytest.raises(DataError):
            check_uid(uid)


@pytest.fixture
def pacs_server(orthanc, served, tmp_path):
    """The viewer on the test PACS, signed in (a viewer and an expert), storing no query images."""
    from fastapi.testclient import TestClient

    from chaiderm.web.app import create_app
    from chaiderm.web.auth import Users
    from tests.web.test_clinic import PASSWORD

    users = Users(tmp_path / "users.json", create=True)
    for name, role in (("viewer", "viewer"), ("expert", "expert"), ("admin", "admin")):
        users.add(name, role, PASSWORD)
    app = create_app(
        served / "run",
        served / "ix",
        tmp_path / "fb.db",
        users=tmp_path / "users.json",
        keep_queries_days=0,
        dicomweb=orthanc.dicomweb,
    )
    with TestClient(app) as c:

        def token(name: str) -> dict:
            r = c.post("/api/token", json={"name": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            return {"Authorization": f"Bearer {r.json()['token']}"}

        c.token, c.db = token, tmp_path / "fb.db"
        yield c


def test_the_viewer_opens_a_pacs_study_and_only_experts_store_back(pacs_server, orthanc, study):
    from dicomweb_client.api import DICOMwebClient

    c = pacs_server
    viewer, expert = c.token("viewer"), c.token("expert")
    assert c.get("/api/pacs", headers=viewer).json() == {"configured": True}
    listed = c.get(f"/api/pacs/studies/{study['uid']}", headers=viewer)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert sorted(i["instance"] for i in body["images"]) == sorted(study["photos"])
    assert body["skipped"]["CT Image Storage"] == 1
    first = study["photos"][0]
    q = c.post("/api/pacs/query", data={"study": study["uid"], "instance": first, "k": 5}, headers=viewer)
    assert q.status_code == 200, q.text
    query_id = q.json()["query_id"]
    assert len(q.json()["neighbors"]) == 5
    # --keep-queries 0: the image is held in memory for the page, never written to the database
    assert FeedbackStore(c.db).query_record(query_id)[0] is None

    before = len(DICOMwebClient(orthanc.dicomweb).search_for_instances(study["uid"]))
    assert c.post("/api/pacs/store", data={"query_id": query_id}, headers=viewer).status_code == 403
    assert c.post("/api/pacs/store", data={"query_id": query_id}, headers=expert).status_code == 404  # not theirs
    q2 = c.post("/api/pacs/query", data={"study": study["uid"], "instance": first}, headers=expert)
    stored = c.post("/api/pacs/store", data={"query_id": q2.json()["query_id"]}, headers=expert)
    assert stored.status_code == 201, stored.text
    assert len(stored.json()["stored"]) == 2
    assert len(DICOMwebClient(orthanc.dicomweb).search_for_instances(study["uid"])) == before + 2

    assert c.get("/api/pacs/studies/not-a-uid", headers=viewer).status_code == 422
    other = c.post("/api/pacs/query", data={"study": study["uid"], "instance": "1.2.3"}, headers=viewer)
    assert other.status_code == 404
    audit = _audit_dump(c.db)
    assert "pacs_study" in audit and "pacs_store" in audit and first in audit and study["uid"] in audit
    _no_patient(audit, listed.text, q.text, stored.text)


def test_a_viewer_without_a_configured_pacs_says_so(served, tmp_path):
    from fastapi.testclient import TestClient

    from chaiderm.web.app import create_app

    with TestClient(create_app(served / "run", served / "ix", tmp_path / "fb.db")) as c:
        assert c.get("/api/pacs").json() == {"configured": False}
        assert c.get("/api/pacs/studies/1.2.3").status_code == 404


def test_the_report_carries_novelty_and_a_prediction_set_where_the_result_has_them(synth_dir):
    """Results from before those fields (none of either) and with them (a score object, a set of classes)."""
    import dataclasses

    hd = pytest.importorskip("highdicom", reason="the pacs extra is not installed")

    from chaiderm.interfaces import Neighbor, Prediction
    from chaiderm.pacs import results
    from chaiderm.pipeline import QueryResult

    @dataclasses.dataclass
    class Novelty:
        score: float
        novel: bool

    (iid, _), *_ = _labels(synth_dir)
    pixels = _pixels(synth_dir, iid)
    source = pf.photograph(pixels, generate_uid(), generate_uid())
    neighbours = [Neighbor(r + 1, f"case{r}", d, None, 0.1 * (r + 1)) for r, d in enumerate(["melanoma", "nevus"])]
    pred = Prediction("q", "melanoma", {"melanoma": 0.5, "nevus": 0.5}, 2, neighbours)
    maps = np.zeros((2, 4, 4), np.float32)
    plain = QueryResult(pred, pixels, maps, maps, np.zeros(4), np.zeros((4, 4, 4)))
    identity = results.Identity("digest", "2 cases, x", "chaiderm test")

    def concepts(sr) -> dict[str, object]:
        return {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}

    before = concepts(results.result_sr(source, plain, identity, series_uid=hd.UID()))
    assert "Novelty" not in before and "Prediction set" not in before
    richer = dataclasses.replace(plain)
    richer.novelty, richer.prediction_set = Novelty(0.93, True), ["melanoma", "nevus"]
    after = concepts(results.result_sr(source, richer, identity, series_uid=hd.UID()))
    assert float(after["Novelty"].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.93)
    assert after["Novelty detail"].TextValue == "novel: True"
    members = {i.ConceptCodeSequence[0].CodeValue for i in after["Prediction set"].ContentSequence}
    assert members == {"1162635006", "400096001"}
