"""The ivf_ondisk index: lists and vectors on disk, built shard by shard, the same answers as exact search."""

from __future__ import annotations

import shutil

import faiss
import numpy as np
import pytest

from chaiderm.errors import ArtifactError
from chaiderm.index import ondisk
from chaiderm.index.archive import ArchiveIndex


def _clustered(rng, n=6000, d=48, centres=40):
    c = rng.normal(size=(centres, d)).astype(np.float32) * 4
    return (c[rng.integers(centres, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def _columns(n, prefix=""):
    return dict(
        image_ids=[f"{prefix}{i}" for i in range(n)],
        diagnoses=["melanoma" if i % 3 == 0 else "nevus" for i in range(n)],
        groups=[None] * n,
        paths=[f"/nowhere/{prefix}{i}.jpg" for i in range(n)],
    )


def test_shards_merge_into_one_index_that_searches_like_exact(rng, tmp_path):
    x = _clustered(rng)
    q = x[:40] + 0.05 * rng.normal(size=(40, x.shape[1])).astype(np.float32)
    ix = ondisk.build_from_array(x, nlist=32, shard_size=1000, folder=tmp_path / "o", nprobe=32)  # six shards
    assert ix.ntotal == len(x) and not list((tmp_path / "o").glob("shard_*"))  # shards merged and removed
    d_ex, i_ex = faiss.knn(q, x, 10)
    d, i = ix.search(q, 10)  # every list probed: the candidates' exact re-ranking is exact search
    assert (i == i_ex).mean() > 0.99
    np.testing.assert_allclose(d, d_ex, rtol=2e-3, atol=1e-2)  # float16 vectors on disk
    ix.nprobe = 4  # a few lists: approximate, still good on clustered data
    _, i4 = ix.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i4, i_ex, strict=True)]) > 0.9
    assert ix.vectors.dtype == np.float16 and isinstance(ix.vectors, np.memmap)
    ix.warm_lists()  # a hint to the kernel, and a read that waits: neither changes an answer
    ix.warm_lists(wait=True)
    assert (ix.search(q, 10)[1] == i4).all()


def test_default_lists_and_probes_grow_with_the_archive():
    assert ondisk.default_nlist(10_000_000) == 16384 and ondisk.default_nprobe(16384) == 512
    assert ondisk.default_nlist(3000) == 76  # 39 training vectors a list at least
    assert ondisk.default_nprobe(40) == 40  # never more than the lists


def test_codes_keep_the_dimensions_the_projection_drops(rng, tmp_path):
    # 20 points repeated 200 times in the 8 loud dimensions; only the 56 quiet ones tell the copies apart.
    # A 8-d projection chooses the lists, but if it also made the codes, the 200 copies would tie and a
    # case could not be found among them (the 10M benchmark's failure, in miniature)
    loud = np.repeat(rng.normal(size=(20, 8)).astype(np.float32) * 10, 200, axis=0)
    x = np.concatenate([loud, rng.normal(size=(len(loud), 56)).astype(np.float32)], axis=1)
    ix = ondisk.build_from_array(x, nlist=16, pca_dim=8, nprobe=16, k_factor=2, folder=tmp_path / "o")
    assert faiss.extract_index_ivf(ix.index).code_size == 64  # one byte per dimension, all of them
    rows = rng.choice(len(x), 100, replace=False)
    _, i = ix.search(x[rows] + 0.01 * rng.normal(size=(100, 64)).astype(np.float32), 1)
    assert (i[:, 0] == rows).mean() > 0.95


def test_archive_index_on_disk_saves_moves_grows_and_shrinks(rng, tmp_path):
    x = _clustered(rng, n=3000)
    a = ArchiveIndex.build(x, kind="ivf_ondisk", nlist=16, nprobe=16, **_columns(len(x)))
    assert a.info["index_type"] == "ivf_ondisk" and a.info["maps_storage"] == "recomputed"
    a.save(tmp_path / "ix")
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {*ondisk.LAYOUT, "cases.json", "info.json"}
    assert a.search(x[:1], 1)[1][0, 0] == 0  # still answers after its files moved
    shutil.move(tmp_path / "ix", tmp_path / "moved")  # the index and its lists move together
    b = ArchiveIndex.load(tmp_path / "moved")
    assert b.index.nprobe == 16 and len(b) == 3000
    b.warm_cache()  # what a server does on load: a background read, no change to any answer
    assert b.search(x[:1], 1)[1][0, 0] == 0
    new = x[:5] + 100.0
    c = b.add(new, **_columns(5, "new"))
    assert len(c) == 3005 and len(b) == 3000  # the loaded index is untouched
    assert c.search(new[:1], 1)[1][0, 0] == 3000
    c.save(tmp_path / "moved")  # over the folder it was loaded from
    d = ArchiveIndex.load(tmp_path / "moved").remove(["0", "new0"])
    assert len(d) == 3003 and d.image_ids[:2] == ["1", "2"]
    _, i = d.search(new[1:2], 1)
    assert d.image_ids[i[0, 0]] == "new1"
    _, i = d.search_among(x[1:2], 1, np.arange(10))
    assert i[0, 0] == 0  # row 0 of d is case "1"


def test_too_small_an_archive_is_refused_with_a_way_out(rng):
    x = _clustered(rng, n=200)
    with pytest.raises(ArtifactError, match="use --kind flat"):
        ArchiveIndex.build(x, kind="ivf_ondisk", nlist=64, **_columns(len(x)))


def test_missing_lists_file_is_a_clear_error(rng, tmp_path):
    x = _clustered(rng, n=2000)
    ArchiveIndex.build(x, kind="ivf_ondisk", nlist=8, **_columns(len(x))).save(tmp_path / "ix")
    (tmp_path / "ix" / "lists.ivfdata").unlink()
    with pytest.raises(ArtifactError, match="lists.ivfdata missing"):
        ArchiveIndex.load(tmp_path / "ix")


def test_cli_builds_grows_and_shrinks_an_on_disk_index(served, synth_dir, tmp_path):
    from typer.testing import CliRunner

    from chaiderm.cli import app
    from chaiderm.data.records import load_table
    from chaiderm.pipeline import Predictor

    run, ix = served / "run", tmp_path / "ix"
    r = CliRunner().invoke(
        app, ["index", "--model", str(run), "--data", str(synth_dir), "--out", str(ix), "--kind", "ivf_ondisk",
              "--nlist", "4", "--nprobe", "4"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert ArchiveIndex.load(ix).info["index_type"] == "ivf_ondisk"
    r = CliRunner().invoke(app, ["archive", "add", "--index", str(ix), "--data", str(synth_dir), "--split", "val"])
    assert r.exit_code == 0 and "added 60 case(s)" in r.output, r.output
    val = load_table(synth_dir, "val")
    (tmp_path / "gone.txt").write_text(val.image_ids[0] + "\n")
    r = CliRunner().invoke(app, ["archive", "remove", "--index", str(ix), "--ids", str(tmp_path / "gone.txt")])
    assert r.exit_code == 0 and "removed 1" in r.output, r.output
    pred = Predictor.load(run, ix)
    assert len(pred.index) == 240 + 59
    res = pred.predict(np.asarray(__import__("PIL.Image").Image.open(val.paths[1]).convert("RGB")), k=5)
    assert res.prediction.neighbors[0].image_id == val.image_ids[1]  # an added case, found through the on-disk lists
