"""Growing and shrinking an index: the same answers as a fresh build, nothing added twice, atomic."""

import csv
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.records import load_table
from chaiderm.errors import ArtifactError
from chaiderm.index.archive import ArchiveIndex
from chaiderm.models import load_model
from chaiderm.pipeline import add_to_index, build_index

runner = CliRunner()


def _split(synth_dir, root, ids):
    """A labelled folder holding the given training cases of the synthetic set."""
    (root / "images").mkdir(parents=True)
    with open(synth_dir / "train" / "labels.csv") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "diagnosis", "group", "age_approx", "sex"])
        for n, i in enumerate(ids):
            shutil.copy(synth_dir / "train" / "images" / f"{i}.png", root / "images")
            w.writerow(
                [i, rows[i]["diagnosis"], rows[i]["group"], 20 + int(i[-3:]) % 60, "female" if n % 2 else "male"]
            )
    return root


def _neighbours(index, queries, k=10):
    d, i = index.search(queries, k)
    return d, [[index.image_ids[j] for j in row] for row in i]


@pytest.fixture
def parts(synth_dir, tmp_path):
    ids = load_table(synth_dir, "train").image_ids[:90]
    return _split(synth_dir, tmp_path / "a", ids[:60]), _split(synth_dir, tmp_path / "b", ids[60:]), ids


def test_add_then_remove_equal_a_fresh_build(served, synth_dir, parts, tmp_path):
    a, b, ids = parts
    model, cfg = load_model(served / "run")
    first, _ = build_index(model, cfg, load_table(a), model_dir=served / "run")
    grown, notes = add_to_index(first, model, cfg, load_table(b))
    assert notes == [] and grown.image_ids == ids and first.image_ids == ids[:60]  # rows appended, ids stable
    # a fresh build of all 90 cases gives the same embeddings, maps and answers
    both, _ = build_index(model, cfg, load_table(_split(synth_dir, tmp_path / "ab", ids)), model_dir=served / "run")
    assert np.allclose(grown.embeddings, both.embeddings, atol=1e-6)
    assert np.array_equal(np.asarray(grown.maps), np.asarray(both.maps))
    assert grown.content == both.content and all(grown.content)  # digests handed over, not recomputed
    q = both.embeddings[::7] + 0.01
    d1, n1 = _neighbours(grown, q)
    d2, n2 = _neighbours(both, q)
    assert n1 == n2 and np.allclose(d1, d2, atol=1e-5)
    gone = ids[10:40:3]
    shrunk = grown.remove(gone)
    kept = [i for i in ids if i not in set(gone)]
    rebuilt = ArchiveIndex.build(
        np.stack([grown.embeddings[ids.index(i)] for i in kept]),
        image_ids=kept,
        diagnoses=[grown.diagnoses[ids.index(i)] for i in kept],
        groups=[None] * len(kept),
        paths=[""] * len(kept),
    )
    d1, n1 = _neighbours(shrunk, q)
    d2, n2 = _neighbours(rebuilt, q)
    assert shrunk.image_ids == kept and n1 == n2 and np.allclose(d1, d2)
    # metadata travels with its case through the build, the add and the removal
    assert [m["age"] for m in shrunk.metadata] == [str(20 + int(i[-3:]) % 60) for i in kept]
    assert len(shrunk.maps) == len(kept) and all(g not in shrunk.image_ids for g in gone)
    with pytest.raises(ArtifactError, match="not in the archive"):
        shrunk.remove(["SYN_nope"])


def test_nothing_is_added_twice(served, parts, tmp_path):
    a, b, ids = parts
    model, cfg = load_model(served / "run")
    ix, _ = build_index(model, cfg, load_table(a), model_dir=served / "run")
    same, notes = add_to_index(ix, model, cfg, load_table(a))
    assert same is ix and "60 case(s) already in the archive by id" in notes[0]
    copy = tmp_path / "c"
    (copy / "images").mkdir(parents=True)
    shutil.copy(a / "images" / f"{ids[0]}.png", copy / "images" / "renamed.png")
    shutil.copy(b / "images" / f"{ids[70]}.png", copy / "images" / "new.png")
    (copy / "labels.csv").write_text("image_id,diagnosis\nrenamed,melanoma\nnew,nevus\n")
    grown, notes = add_to_index(ix, model, cfg, load_table(copy))
    assert grown.image_ids[-1] == "new" and "renamed" not in grown.image_ids
    assert any("identical to an archive case" in n and "renamed" in n for n in notes)
    ix.content = [""] * len(ix)  # an index from before content digests were recorded
    grown, notes = add_to_index(ix, model, cfg, load_table(copy))
    assert "renamed" not in grown.image_ids and any("computed content digests of 60" in n for n in notes)


def test_approximate_index_keeps_its_lists_and_recall(served, synth_dir, tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    new = rng.normal(size=(500, 64)).astype(np.float32)
    mk = lambda e, n0: dict(  # noqa: E731
        image_ids=[f"c{i}" for i in range(n0, n0 + len(e))],
        diagnoses=["nevus"] * len(e),
        groups=[None] * len(e),
        paths=[""] * len(e),
    )
    ivf = ArchiveIndex.build(base, kind="ivf", nlist=32, nprobe=32, **mk(base, 0))
    grown = ivf.add(new, **mk(new, 3000)).remove([f"c{i}" for i in range(0, 3000, 5)])
    flat = ArchiveIndex.build(grown.embeddings, **{**mk(grown.embeddings, 0), "image_ids": grown.image_ids})
    q = rng.normal(size=(50, 64)).astype(np.float32)
    _, approx = _neighbours(grown, q)
    _, exact = _neighbours(flat, q)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95 and type(grown.index).__name__ == "IndexRefineFlat"


def test_archive_cli_and_a_running_viewer_sees_the_change(served, parts, tmp_path):
    from chaiderm.web.app import create_app

    a, b, ids = parts
    ix = tmp_path / "ix"
    r = runner.invoke(app, ["index", "--model", str(served / "run"), "--data", str(a), "--out", str(ix)])
    assert r.exit_code == 0, r.output
    with TestClient(create_app(served / "run", ix, tmp_path / "fb.db")) as c:
        assert c.get("/healthz").json()["archive"] == 60
        r = runner.invoke(app, ["archive", "add", "--index", str(ix), "--data", str(b)])
        assert r.exit_code == 0 and "added 30 case(s)" in r.output, r.output
        assert c.get("/healthz").json()["archive"] == 90  # no restart
        assert c.get(f"/api/images/{ids[75]}").status_code == 200
        q = c.post("/api/query", data={"archive_id": ids[75], "k": "5"}).json()
        assert all(set(n["metadata"]) == {"age", "sex"} for n in q["neighbors"])
        r = runner.invoke(app, ["archive", "add", "--index", str(ix), "--data", str(b)])
        assert r.exit_code == 0 and "already in the archive" in r.output and "added 0" in r.output
        (tmp_path / "gone.txt").write_text("\n".join(ids[:5]) + "\n")
        r = runner.invoke(app, ["archive", "remove", "--index", str(ix), "--ids", str(tmp_path / "gone.txt")])
        assert r.exit_code == 0 and "removed 5" in r.output
        assert c.get("/healthz").json()["archive"] == 85
        assert c.get(f"/api/images/{ids[0]}").status_code == 404
    r = runner.invoke(app, ["archive", "list", "--index", str(ix)])
    assert r.exit_code == 0 and "85 cases" in r.output and str(a) in r.output and str(b) in r.output
    r = runner.invoke(app, ["archive", "remove", "--index", str(ix), "--ids", str(tmp_path / "gone.txt")])
    assert r.exit_code == 2 and "not in the archive" in r.output


def test_a_killed_add_leaves_the_index_as_it_was(served, parts, tmp_path, monkeypatch):
    a, b, _ = parts
    ix = tmp_path / "ix"
    assert (
        runner.invoke(app, ["index", "--model", str(served / "run"), "--data", str(a), "--out", str(ix)]).exit_code == 0
    )
    before = {p.name: p.read_bytes() for p in ix.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", killed)  # dies while writing the new folder
    with pytest.raises(KeyboardInterrupt):
        ArchiveIndex.load(ix).add(
            np.zeros((1, ArchiveIndex.load(ix).embeddings.shape[1]), np.float32),
            image_ids=["z"],
            diagnoses=["nevus"],
            groups=[None],
            paths=[""],
            maps=np.zeros((1, *ArchiveIndex.load(ix).maps.shape[1:]), np.float16),
        ).save(ix)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in ix.iterdir()} == before
    assert not [p for p in ix.parent.iterdir() if p.name.startswith(".ix")]
