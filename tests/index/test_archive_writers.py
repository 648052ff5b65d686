"""Writers of one index (the server's `POST/DELETE /api/archive`, `chaiderm archive add/remove`, a second
server): one at a time, every 201 on disk, duplicates caught by the image, outcomes audited, nothing left
behind by a removed or refused case."""

import csv
import getpass
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import chaiderm
from chaiderm import cli
from chaiderm.data.audit import AuditLog
from chaiderm.data.feedback import FeedbackStore
from chaiderm.index.archive import ArchiveIndex
from chaiderm.web import archive_writes
from chaiderm.web.app import create_app
from tests.index.test_archive import _split

runner = CliRunner()


def _png(synth_dir, name: str, split: str = "test") -> bytes:
    return (synth_dir / split / "images" / name).read_bytes()


def _jpeg(png: bytes, side: int = 300) -> bytes:
    """The image as a clinic's camera would give it: larger, and JPEG."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").resize((side, side), Image.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


@pytest.fixture
def ix(served, tmp_path):
    shutil.copytree(served / "ix", tmp_path / "ix")
    return tmp_path / "ix"


@pytest.fixture
def server(served, ix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no chaiderm-feedback.db of the working folder is written by a command
    with TestClient(create_app(served / "run", ix, tmp_path / "fb.db")) as c:
        c.ix, c.db = ix, tmp_path / "fb.db"
        yield c


def _add(c, synth_dir, image_id, name, diagnosis="nevus", data=None):
    data = data if data is not None else _png(synth_dir, name)
    return c.post("/api/archive", files={"image": ("x.png", data)}, data={"image_id": image_id, "diagnosis": diagnosis})


def _cases_files(ix):
    folder = ix.parent / f"{ix.name}-cases"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _audit(db, action=None):
    return [(e.action, e.target, e.status) for e in AuditLog(FeedbackStore(db)).entries(action=action)]


def test_api_and_cli_adds_at_once_lose_nothing(server, served, synth_dir, tmp_path):
    """The server adds cases one after another while a `chaiderm archive add` process embeds and saves 40:
    every case answered 201 and every case the command added is in the index on disk afterwards, and no
    image is left in `<index>-cases/` that the index does not hold."""
    cli_ids = [f"SYN_train_{i:05d}" for i in range(80, 120)]
    data = _split(synth_dir, tmp_path / "new", cli_ids)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaiderm.cli", "archive", "add", "--index", str(server.ix), "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(chaiderm.__file__).parents[1]), *sys.path])},
    )
    images = [("test", f"SYN_test_{n:05d}.png") for n in range(90)] + [
        ("val", f"SYN_val_{n:05d}.png") for n in range(60)
    ]
    answered = []
    for n, (split, name) in enumerate(images):  # until the command has saved, and a few after
        r = _add(server, synth_dir, f"api_{n:03d}", None, data=_png(synth_dir, name, split))
        assert r.status_code in (201, 409, 503), r.text  # 409: a copy of an archive case; 503: waited too long
        if r.status_code == 201:
            answered.append(f"api_{n:03d}")
        if proc.poll() is not None:
            break
        time.sleep(0.2)  # spread over the command's run, its load-embed-save included
    assert proc.poll() is not None, "the command outlasted the server's adds: the race was not run"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "added 40 case(s)" in err, err
    on_disk = ArchiveIndex.load(server.ix)
    assert answered and set(answered) <= set(on_disk.image_ids)
    assert set(cli_ids) <= set(on_disk.image_ids)
    assert len(on_disk) == 80 + 40 + len(answered)
    assert _cases_files(server.ix) == sorted(f"{i}.png" for i in answered)
    assert server.get("/healthz").json()["archive"] == len(on_disk)
    rows = [(t, s) for _, t, s in _audit(server.db, "archive_add") if s == 201]
    assert rows == [(i, 201) for i in answered]  # the audit log says exactly what is on disk


def test_two_servers_on_one_index_lose_nothing(served, ix, synth_dir, tmp_path, monkeypatch):
    """Two servers on the same index folder, each adding from its own thread (saves slowed down so that
    they overlap): every 201 of either is on disk."""
    real_save = ArchiveIndex.save

    def slow_save(self, path):
        threading.Event().wait(0.15)
        return real_save(self, path)

    monkeypatch.setattr(ArchiveIndex, "save", slow_save)
    answered: list[str] = []
    with (
        TestClient(create_app(served / "run", ix, tmp_path / "a.db")) as a,
        TestClient(create_app(served / "run", ix, tmp_path / "b.db")) as b,
    ):

        def adder(c, first: int) -> None:
            for n in range(first, first + 6):
                r = _add(c, synth_dir, f"srv_{n:03d}", f"SYN_test_{n:05d}.png")
                if r.status_code == 201:
                    answered.append(f"srv_{n:03d}")

        threads = [threading.Thread(target=adder, args=(c, f)) for c, f in ((a, 0), (b, 40))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        on_disk = set(ArchiveIndex.load(ix).image_ids)
        assert len(answered) == 12 and set(answered) <= on_disk
        assert a.get("/healthz").json()["archive"] == b.get("/healthz").json()["archive"] == 92


def test_a_writer_that_waits_too_long_changes_nothing(server, synth_dir, tmp_path, monkeypatch):
    from chaiderm.index.lock import writer_lock

    monkeypatch.setattr(archive_writes, "WRITER_WAIT_S", 0.3)
    monkeypatch.setattr(cli.archive, "ARCHIVE_WAIT_S", 0.3)
    data = _split(synth_dir, tmp_path / "new", ["SYN_train_00100"])
    before = {p.name: p.read_bytes() for p in server.ix.iterdir()}
    with writer_lock(server.ix, 0):  # another writer holds the index
        r = _add(server, synth_dir, "busy_1", "SYN_test_00001.png")
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "another writer" in r.json()["detail"]
        d = server.delete("/api/archive/SYN_train_00003")
        assert d.status_code == 503
        res = runner.invoke(
            cli.app, ["archive", "add", "--index", str(server.ix), "--data", str(data), "--db", str(server.db)]
        )
        assert res.exit_code == 2 and "another writer" in res.output and "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in server.ix.iterdir()} == before
    assert _cases_files(server.ix) == []
    statuses = [(a, s) for a, _, s in _audit(server.db) if a.startswith("archive_")]
    assert statuses == [("archive_add", 503), ("archive_remove", 503), ("archive_add", 503)]


def test_the_same_image_is_not_added_twice_whoever_adds_it(server, synth_dir, tmp_path):
    """A JPEG added by the CLI and the same JPEG through the API (decoded shrunk, stored as PNG) are the same
    image to the model: the second is refused, naming the case it repeats; within one batch too."""
    jpeg = _jpeg(_png(synth_dir, "SYN_test_00007.png"))
    new = tmp_path / "new"
    (new / "images").mkdir(parents=True)
    (new / "images" / "clinic_jpeg.jpg").write_bytes(jpeg)
    # the same pixels in a file with other bytes: the digest of the file cannot tell
    Image.open(io.BytesIO(_png(synth_dir, "SYN_test_00008.png"))).save(new / "images" / "first.png")
    Image.open(io.BytesIO(_png(synth_dir, "SYN_test_00008.png"))).save(new / "images" / "again.png", compress_level=1)
    (new / "labels.csv").write_text("image_id,diagnosis\nclinic_jpeg,nevus\nfirst,nevus\nagain,nevus\n")
    r = runner.invoke(cli.app, ["archive", "add", "--index", str(server.ix), "--data", str(new)])
    assert r.exit_code == 0 and "added 2 case(s)" in r.output, r.output
    assert "again (= first)" in r.output
    ids = ArchiveIndex.load(server.ix).image_ids
    assert "clinic_jpeg" in ids and "first" in ids and "again" not in ids
    r = _add(server, synth_dir, "api_copy", None, data=jpeg)
    assert r.status_code == 409 and "api_copy (= clinic_jpeg)" in r.json()["detail"], r.text
    assert _cases_files(server.ix) == []  # the refused upload's image is not kept
    # the other way round: through the API first, then the CLI
    r = _add(server, synth_dir, "api_first", "SYN_test_00009.png")
    assert r.status_code == 201, r.text
    later = tmp_path / "later"
    (later / "images").mkdir(parents=True)
    (later / "images" / "cli_copy.png").write_bytes(_png(synth_dir, "SYN_test_00009.png"))
    (later / "labels.csv").write_text("image_id,diagnosis\ncli_copy,nevus\n")
    r = runner.invoke(cli.app, ["archive", "add", "--index", str(server.ix), "--data", str(later)])
    assert r.exit_code == 0 and "added 0 case(s)" in r.output and "cli_copy (= api_first)" in r.output, r.output
    q = server.post("/api/query", files={"image": ("q.jpg", jpeg)}, data={"k": "5"}).json()
    near = [n["image_id"] for n in q["neighbors"] if n["distance"] < 1e-6]
    assert near == ["clinic_jpeg"]  # found once, counted once


def test_audit_rows_are_outcomes_for_api_and_cli(server, served, synth_dir, tmp_path, monkeypatch):
    # a save that fails: no 200/201 row, the failure is recorded, and the upload's image is not left behind
    def broken_save(self, path):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ArchiveIndex, "save", broken_save)
        r = _add(server, synth_dir, "fails", "SYN_test_00011.png")
    assert r.status_code == 500 and "could not be saved" in r.json()["detail"]
    assert _audit(server.db, "archive_add") == [("archive_add", "fails", 500)]
    assert _cases_files(server.ix) == [] and "fails" not in ArchiveIndex.load(server.ix).image_ids
    # a database that cannot record refuses the change before it is made
    holder = sqlite3.connect(server.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        r = _add(server, synth_dir, "unrecorded", "SYN_test_00012.png")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.status_code == 503 and "unrecorded" not in ArchiveIndex.load(server.ix).image_ids
    assert _cases_files(server.ix) == []
    # the CLI records its changes, as the OS user, when given the server's database
    data = _split(synth_dir, tmp_path / "new", ["SYN_train_00100", "SYN_train_00101"])
    r = runner.invoke(
        cli.app, ["archive", "add", "--index", str(server.ix), "--data", str(data), "--db", str(server.db)]
    )
    assert r.exit_code == 0, r.output
    (tmp_path / "gone.txt").write_text("SYN_train_00100\n")
    r = runner.invoke(
        cli.app,
        ["archive", "remove", "--index", str(server.ix), "--ids", str(tmp_path / "gone.txt"), "--db", str(server.db)],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli.app,
        ["archive", "remove", "--index", str(server.ix), "--ids", str(tmp_path / "gone.txt"), "--db", str(server.db)],
    )
    assert r.exit_code == 2 and "not in the archive" in r.output
    rows = [e for e in AuditLog(FeedbackStore(server.db)).entries() if e.user and e.user.startswith("cli:")]
    assert {e.user for e in rows} == {f"cli:{getpass.getuser()}"}
    assert [(e.action, e.target, e.status) for e in rows] == [
        ("archive_add", "SYN_train_00100", 201),
        ("archive_add", "SYN_train_00101", 201),
        ("archive_remove", "SYN_train_00100", 200),
        ("archive_remove", None, 409),
    ]
    r = runner.invoke(
        cli.app, ["archive", "add", "--index", str(server.ix), "--data", str(data), "--db", str(tmp_path / "x.db")]
    )
    assert r.exit_code == 2 and "database not found" in r.output
    r = runner.invoke(cli.app, ["audit", "--db", str(server.db), "--csv", "-", "--action", "archive_add"])
    assert [x["status"] for x in csv.DictReader(io.StringIO(r.stdout))] == ["500", "201", "201"]


def test_a_removed_case_leaves_nothing_behind(server, synth_dir, tmp_path):
    own = ArchiveIndex.load(server.ix)
    own_image = Path(own.paths[own.row_of("SYN_train_00004")])
    for n, image_id in enumerate(("priv_1", "priv_2")):
        assert _add(server, synth_dir, image_id, f"SYN_test_{20 + n:05d}.png").status_code == 201
    assert _cases_files(server.ix) == ["priv_1.png", "priv_2.png"]
    assert server.delete("/api/archive/priv_1").status_code == 200
    assert _cases_files(server.ix) == ["priv_2.png"]
    (tmp_path / "gone.txt").write_text("priv_2\nSYN_train_00004\n")
    r = runner.invoke(cli.app, ["archive", "remove", "--index", str(server.ix), "--ids", str(tmp_path / "gone.txt")])
    assert r.exit_code == 0, r.output
    assert _cases_files(server.ix) == []
    assert own_image.exists()  # an image of the operator's own archive folder is never deleted by a removal


@pytest.mark.parametrize("diagnosis", ["<b>x</b>", "nevus\nmelanoma", "  ", "maybe melanoma"])
def test_free_text_diagnoses_are_refused(server, synth_dir, diagnosis):
    before = server.get("/api/info").json()["diagnoses"]
    r = _add(server, synth_dir, "free_text", "SYN_test_00030.png", diagnosis=diagnosis)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("diagnosis:") and "melanoma" in detail and "seborrheic_keratosis" in detail
    assert server.get("/api/info").json()["diagnoses"] == before and _cases_files(server.ix) == []
    ok = _add(server, synth_dir, "vocabulary", "SYN_test_00031.png", diagnosis="Basal cell carcinoma")
    assert ok.status_code == 201 and ok.json()["diagnosis"] == "basal_cell_carcinoma"


def test_an_image_request_reads_one_index(server, monkeypatch):
    """A case removed between the row lookup and the path lookup of one request: the request still answers
    from the index it started with (the right image), never another case's image or a 500."""
    state = server.app.state.viewer
    last = state.predictor.index.image_ids[-1]
    expected = Path(state.predictor.index.paths[-1]).read_bytes()
    real_row_of = ArchiveIndex.row_of

    def row_then_removed(self, image_id):
        row = real_row_of(self, image_id)
        if image_id == last and last in state.predictor.index.image_ids:
            state.replace_index(state.predictor.index.remove([last]))  # a removal lands meanwhile
        return row

    monkeypatch.setattr(ArchiveIndex, "row_of", row_then_removed)
    r = server.get(f"/api/images/{last}")
    assert r.status_code == 200 and r.content == expected


def test_requests_while_cases_are_added_never_answer_500(server, synth_dir):
    """Cases added through the API and, as `chaiderm archive add` does, straight into the index folder (which
    the server picks up between requests), while four clients query, re-query, fetch archive images and maps
    and list the archive: every request answers from one state of the archive, never with a 500."""
    from chaiderm.data.records import ImageTable
    from chaiderm.index.lock import open_for_writing
    from chaiderm.pipeline import add_to_index

    state = server.app.state.viewer
    model, cfg = state.predictor.model, state.predictor.cfg
    done, seen, failures = threading.Event(), [], []

    def add_cases():
        try:
            for n in range(6):
                r = _add(server, synth_dir, f"api_race_{n}", f"SYN_test_{n:05d}.png")
                assert r.status_code in (201, 409), r.text
                path = synth_dir / "train" / "images" / f"SYN_train_{80 + n:05d}.png"
                table = ImageTable([f"cli_race_{n}"], [str(path)], ["nevus"], source="test")
                with open_for_writing(server.ix, 30) as index:
                    add_to_index(index, model, cfg, table)[0].save(server.ix)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(f"adder: {e!r}")
        finally:
            done.set()

    def client(seed: int):
        n = 0
        while not done.is_set() or n < 8:
            n += 1
            try:
                for r in _one_round(server, seed + n):
                    seen.append(r.status_code)
                    if r.request.url.path == "/api/info" and r.status_code == 200:  # one archive, not two
                        info = r.json()
                        if info["archive_size"] != len(info["cases"]):
                            failures.append(
                                f"/api/info: {info['archive_size']} cases said, {len(info['cases'])} listed"
                            )
                    if r.status_code >= 500:
                        failures.append(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
            except BaseException as e:  # noqa: BLE001 - the server raised instead of answering
                failures.append(f"client: {e!r}")

    threads = [threading.Thread(target=add_cases)] + [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures[:5]
    assert len(seen) > 100 and seen.count(200) > len(seen) // 2
    assert server.get("/healthz").json()["archive"] == len(ArchiveIndex.load(server.ix))


def _one_round(c, seed: int) -> list:
    """One client's requests against whatever the archive holds right now, newest cases included."""
    cases = c.get("/api/archive", params={"limit": 5000})
    ids = [x["image_id"] for x in cases.json()]
    newest, pick = ids[-1], ids[seed % len(ids)]
    q = c.post("/api/query", data={"archive_id": pick, "k": "5"})
    out = [
        cases,
        c.get("/api/info", params={"limit": 5000}),
        c.get(f"/api/images/{newest}"),
        c.get(f"/api/images/{pick}"),
        q,
    ]
    if q.status_code == 200:
        body = q.json()
        out.append(c.get(f"/api/query/{body['query_id']}", params={"k": 3, "similar": newest}))
        out.append(c.get(body["neighbors"][0]["qam_url"]))
        out.append(c.get(f"/api/maps/{body['query_id']}/{newest}/ram.png"))
    return out
