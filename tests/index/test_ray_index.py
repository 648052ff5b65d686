"""chaiderm index --ray: embedding on a (local, 2-CPU) Ray cluster gives the single-process index."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.data.records import load_table
from chaiderm.errors import DataError
from chaiderm.index.archive import ArchiveIndex
from chaiderm.index.ray_embed import embed_archive_ray
from chaiderm.models import build_model, save_model
from chaiderm.pipeline import build_index, embed_archive
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("raymodel")
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg.model).eval()
    save_model(model, d / "run", cfg)
    return model, cfg, d / "run"


def _same(a, b):
    ea, ma, ta, ca, xa = a
    eb, mb, tb, cb, xb = b
    assert ta.image_ids == tb.image_ids and ca == cb and xa == xb
    np.testing.assert_allclose(eb, ea, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mb.astype(np.float32), ma.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_ray_embeds_what_one_process_embeds(ray_cluster, model_run, synth_dir, tmp_path):
    model, cfg, run = model_run
    table = load_table(synth_dir, "train").subset(range(70))
    one = embed_archive(model, cfg, table)
    shards = tmp_path / "shards"
    ray = embed_archive_ray(run, cfg, table, block_size=16, workers=2, shard_dir=shards)  # 5 blocks, 2 actors
    _same(one, ray)
    assert len(list(shards.glob("*/shard-*.npz"))) == 5  # kept, in a folder of this run's own
    a, _ = build_index(model, cfg, table, model_dir=run)
    b, _ = build_index(model, cfg, table, model_dir=run, ray="local")
    q = a.embeddings[:10]
    assert (a.search(q, 8)[1] == b.search(q, 8)[1]).all()  # the exact kind: the same answers


def test_a_worker_that_dies_is_retried(ray_cluster, model_run, synth_dir, tmp_path):
    model, cfg, run = model_run
    table = load_table(synth_dir, "train").subset(range(40))
    marker = tmp_path / "died"
    got = embed_archive_ray(run, cfg, table, block_size=16, workers=2, fault_marker=str(marker))
    assert marker.exists()  # an actor did die mid-block
    _same(embed_archive(model, cfg, table), got)


def test_corrupt_images_are_skipped_or_refused_as_in_one_process(ray_cluster, model_run, synth_dir, tmp_path):
    model, cfg, run = model_run
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    table = load_table(data, "train").subset(range(30))
    bad = table.paths[7]
    with open(bad, "r+b") as f:
        f.truncate(40)
    _same(embed_archive(model, cfg, table, skip_bad=True), embed_archive_ray(run, cfg, table, skip_bad=True))
    with pytest.raises(DataError) as one:
        embed_archive(model, cfg, table)
    with pytest.raises(DataError) as ray:
        embed_archive_ray(run, cfg, table)
    assert str(ray.value) == str(one.value) and bad in str(ray.value)


def test_cli_index_on_ray(ray_cluster, model_run, synth_dir, tmp_path):
    _, _, run = model_run
    r = CliRunner().invoke(
        app, ["index", "--model", str(run), "--data", str(synth_dir), "--out", str(tmp_path / "ix"), "--ray", "local"]
    )
    assert r.exit_code == 0, r.output
    ix = ArchiveIndex.load(tmp_path / "ix")
    assert len(ix) == len(load_table(synth_dir, "train"))
    args = ["index", "--model", str(run), "--data", str(synth_dir), "--out", str(tmp_path / "x2")]
    r = CliRunner().invoke(app, [*args, "--ray-workers", "2"])
    assert r.exit_code == 2 and "--ray-workers: needs --ray" in r.output
    r = CliRunner().invoke(app, [*args, "--ray", "127.0.0.1:9"])  # nobody there: an answer in seconds
    assert r.exit_code == 2 and "no Ray cluster answers at '127.0.0.1:9'" in r.output, r.output


def test_an_actor_runs_ensemble_members_side_by_side_only_within_its_share(model_run, tmp_path, monkeypatch):
    """Two one-thread actors on two cores must not each start a pool of two member threads."""
    from chaiderm.index.ray_embed import _Embedder
    from chaiderm.models import ensemble

    monkeypatch.setattr(ensemble, "_MEMBER_THREADS", None)  # restored after the test
    monkeypatch.delenv("CHAIDERM_MEMBER_THREADS", raising=False)
    ensemble.set_member_threads(8)  # what the process would use alone
    _Embedder(str(model_run[2]), "none", False, str(tmp_path), 1, None)
    assert ensemble.member_threads() == 1
    _Embedder(str(model_run[2]), "none", False, str(tmp_path), 2, None)
    assert ensemble.member_threads() == 1  # never above what the process had
    ensemble.set_member_threads(8)
    _Embedder(str(model_run[2]), "none", False, str(tmp_path), 2, None)
    assert ensemble.member_threads() == 2
    assert "CHAIDERM_MEMBER_THREADS" not in os.environ  # the actor's own setting, not its environment's
    torch.set_num_threads(2)
