"""Ensembles as one model: embeddings side by side, maps stacked, one run folder every command uses."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chaiderm.cli import app
from chaiderm.errors import ArtifactError
from chaiderm.evidence.maps import activation_map_pairs
from chaiderm.models import build_model, ensemble, save_model
from chaiderm.models.embedding import load_model
from chaiderm.models.inference import embed
from tests.conftest import tiny_cfg

runner = CliRunner()


def _member(path, seed, **model_kw):
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    for k, v in model_kw.items():
        setattr(cfg.model, k, v)
    save_model(build_model(cfg.model).eval(), path, cfg)
    return path


def test_ensemble_distance_and_maps_are_the_members_summed(tmp_path, rng):
    runs = [_member(tmp_path / f"m{s}", s) for s in range(3)]
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0 and "ensemble of 3 runs (192-d embedding)" in r.output, r.output
    ens, cfg = load_model(tmp_path / "ens")
    assert cfg.model.backbone == "ensemble" and cfg.data.members == [str(p.resolve()) for p in runs]
    images = rng.integers(0, 255, size=(5, 72, 72, 3), dtype=np.uint8)
    e, maps = embed(ens, images, 64, with_maps=True, maps_dtype=np.float32)
    parts = [embed(load_model(p)[0], images, 64, with_maps=True, maps_dtype=np.float32) for p in runs]
    np.testing.assert_allclose(e, np.concatenate([p[0] for p in parts], 1), rtol=1e-5, atol=1e-6)
    d = ((e[0] - e[1:]) ** 2).sum(1)
    np.testing.assert_allclose(d, sum(((p[0][0] - p[0][1:]) ** 2).sum(1) for p in parts), rtol=1e-4)
    qam, ram = activation_map_pairs(maps[0], maps[1:])
    member_pairs = [activation_map_pairs(p[1][0], p[1][1:]) for p in parts]
    np.testing.assert_allclose(qam, sum(q for q, _ in member_pairs), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ram, sum(r for _, r in member_pairs), rtol=1e-4, atol=1e-6)


def test_stages_the_members_share_are_computed_once_and_change_nothing(tmp_path, rng):
    """Members fine-tuned from one backbone keep its frozen stem: the ensemble runs it once per image,
    and its maps are bit-identical to each member's own."""
    a = _member(tmp_path / "a", 0)
    torch.manual_seed(0)
    cfg = tiny_cfg()
    net = build_model(cfg.model).eval()
    with torch.no_grad():  # a second member: the same first two stages, its own later stages and head
        for s in list(net.backbone.stages[2:]) + [net.proj]:
            for t in s.parameters():
                t.add_(torch.randn_like(t) * 0.1)
    save_model(net, tmp_path / "b", cfg)
    c = _member(tmp_path / "c", 1)  # another backbone altogether
    runner.invoke(app, ["ensemble", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "ab")])
    runner.invoke(app, ["ensemble", str(a), str(tmp_path / "b"), str(c), "--out", str(tmp_path / "abc")])
    ab, abc = load_model(tmp_path / "ab")[0], load_model(tmp_path / "abc")[0]
    assert ab.shared_stages() == 2 and abc.shared_stages() == 0
    _member(tmp_path / "a_rep", 0, padding="replicate")  # a's weights, another padding: other arithmetic
    runner.invoke(app, ["ensemble", str(a), str(tmp_path / "a_rep"), "--out", str(tmp_path / "pad")])
    pad = load_model(tmp_path / "pad")[0]
    assert pad.shared_stages() == 0
    with torch.no_grad():
        xp = torch.rand(2, 3, 64, 64)
        assert torch.equal(pad.forward_features(xp), torch.cat([m.evidence_maps(xp)[0] for m in pad.members], 1))
    x = torch.from_numpy(rng.random((3, 3, 64, 64), dtype=np.float32))
    calls = []
    hooks = [m.backbone.stages[0].register_forward_hook(lambda *_: calls.append(1)) for m in ab.members]
    with torch.no_grad():
        g = ab.forward_features(x)
    for h in hooks:
        h.remove()
    assert len(calls) == 1  # the shared stem ran once for both members
    with torch.no_grad():
        own = torch.cat([m.evidence_maps(x)[0] for m in ab.members], 1)
    assert torch.equal(g, own)  # bit for bit
    ab.load_state_dict(ab.state_dict())
    assert ab._shared is None and ab.shared_stages() == 2  # reloaded weights are counted again


def test_members_answer_side_by_side_as_they_would_in_turn(tmp_path, rng, monkeypatch):
    """Answering queries, the members after the shared stem run on the member pool's threads, one torch
    thread each; their maps are bit-identical to running them in turn on one thread. Training and any
    gradient keep them in the caller's thread."""
    runs = [_member(tmp_path / f"m{s}", s) for s in range(3)]
    runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")])
    net = load_model(tmp_path / "ens", fold=True)[0]
    x = torch.from_numpy(rng.random((2, 3, 64, 64), dtype=np.float32))
    where: list[str] = []
    for m in net.members:
        m.proj.register_forward_hook(lambda *_: where.append(threading.current_thread().name))
    monkeypatch.setattr(ensemble, "_MEMBER_THREADS", None)  # restored after the test
    ensemble.set_member_threads(2)
    with torch.inference_mode():
        side = net.forward_features(x)
    assert len(where) == 3 and all(n.startswith("chaiderm-member") for n in where), where
    assert not side.requires_grad and side.is_inference()  # the caller's inference mode held in the pool
    assert ensemble.set_member_threads(1) == 2  # the previous setting, to restore
    where.clear()
    torch.set_num_threads(1)
    with torch.inference_mode():
        turn = net.forward_features(x)
    assert where == [threading.current_thread().name] * 3
    assert torch.equal(side, turn)
    ensemble.set_member_threads(2)
    where.clear()
    plain = load_model(tmp_path / "ens")[0]
    for m in plain.members:
        m.proj.register_forward_hook(lambda *_: where.append(threading.current_thread().name))
    plain.forward_features(x).sum().backward()  # gradients asked for: in turn, in this thread
    assert where == [threading.current_thread().name] * 3
    assert ensemble.member_pool() is ensemble.member_pool()
    monkeypatch.setattr(ensemble.os, "getpid", lambda: -1)  # as in a forked child: the threads are gone
    assert ensemble.member_pool() is not None and ensemble._POOL[0] == (-1, 2)
    with pytest.raises(ValueError, match="at least 1"):
        ensemble.set_member_threads(0)
    # an operator's CHAIDERM_MEMBER_THREADS holds where nothing in the process set a number
    monkeypatch.setenv("CHAIDERM_MEMBER_THREADS", "3")
    assert ensemble.member_threads() == 2
    ensemble.set_member_threads(None)
    assert ensemble.member_threads() == 3
    monkeypatch.setenv("CHAIDERM_MEMBER_THREADS", "two")
    with pytest.raises(ArtifactError, match="CHAIDERM_MEMBER_THREADS"):
        ensemble.member_threads()


def test_embedding_an_eval_model_does_not_switch_its_modes(tmp_path, rng):
    """Switching an 8-member ensemble to eval and back walked ~3000 modules per query (35 ms of ~180)."""
    runs = [_member(tmp_path / f"m{s}", s) for s in range(2)]
    runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")])
    net = load_model(tmp_path / "ens", fold=True)[0]

    def refuse(mode=True):
        raise AssertionError(f"train({mode}) called on a model already in eval mode")

    net.train = refuse
    embed(net, rng.integers(0, 255, (2, 72, 72, 3), dtype=np.uint8), 64, with_maps=True)
    model = build_model(tiny_cfg().model).train()
    embed(model, rng.integers(0, 255, (1, 72, 72, 3), dtype=np.uint8), 64)
    assert model.training  # a model in training comes back in training


def test_an_ensemble_indexes_queries_and_evaluates_like_a_run(tmp_path, synth_dir):
    runs = [_member(tmp_path / f"m{s}", s) for s in range(2)]
    ens, ix = tmp_path / "ens", tmp_path / "ix"
    assert runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(ens)]).exit_code == 0
    r = runner.invoke(app, ["index", "--model", str(ens), "--data", str(synth_dir), "--out", str(ix)])
    assert r.exit_code == 0, r.output
    from chaiderm.data.records import load_table

    q = load_table(synth_dir, "test").paths[0]
    r = runner.invoke(app, ["query", str(q), "--model", str(ens), "--index", str(ix), "--k", "5",
                            "--out", str(tmp_path / "rep")])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--model", str(ens), "--index", str(ix), "--data", str(synth_dir),
                            "--split", "test", "--n-boot", "20", "--out", str(tmp_path / "ev.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    from chaiderm.pipeline import Predictor
    from chaiderm.web.app import describe

    info = describe(Predictor.load(ens, ix), ens, ix)  # what the viewer's header says is loaded
    assert (info["logic"], info["backbone"]) == ("ensemble", "2 x tiny")


def test_a_served_ensemble_answers_concurrent_requests_with_members_side_by_side(tmp_path, synth_dir):
    """Requests of ``serve`` run on one torch thread each and share the member pool: four at once all
    answer, each as the same query answered alone in-process, and the members ran on the pool."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from chaiderm.data.images import load_image
    from chaiderm.data.records import load_table
    from chaiderm.pipeline import Predictor
    from chaiderm.web.app import create_app

    runs = [_member(tmp_path / f"m{s}", s) for s in range(3)]
    ens, ix = tmp_path / "ens", tmp_path / "ix"
    assert runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(ens)]).exit_code == 0
    r = runner.invoke(app, ["index", "--model", str(ens), "--data", str(synth_dir), "--out", str(ix)])
    assert r.exit_code == 0, r.output
    paths = load_table(synth_dir, "test").paths[:4]
    alone = [Predictor.load(ens, ix).predict(load_image(p), k=5) for p in paths]
    server = create_app(ens, ix, tmp_path / "fb.db", workers=2)
    where: set[str] = set()
    with TestClient(server) as c:
        for m in server.state.viewer.predictor.model.members:
            m.proj.register_forward_hook(lambda *_: where.add(threading.current_thread().name))

        def ask(path):
            image = ("q.png", Path(path).read_bytes(), "image/png")
            return c.post("/api/query", files={"image": image}, data={"k": "5"})

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, paths))
    for resp, own in zip(answers, alone, strict=True):
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert [n["image_id"] for n in got["neighbors"]] == [n.image_id for n in own.prediction.neighbors]
        assert abs(got["melanoma_probability"] - own.prediction.positive_probability) < 1e-5
    assert where and all(n.startswith("chaiderm-member") for n in where), where


def test_members_that_cannot_be_combined_are_refused(tmp_path, synth_dir):
    a = _member(tmp_path / "a", 0)
    b = _member(tmp_path / "b", 1, image_size=56)
    r = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "image_size is 56" in r.output and "same input" in r.output
    r = runner.invoke(app, ["ensemble", str(a), "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "at least two" in r.output
    r = runner.invoke(app, ["ensemble", str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "nowhere" in r.output and "Traceback" not in r.output
    c = _member(tmp_path / "c", 2)
    assert runner.invoke(app, ["ensemble", str(a), str(c), "--out", str(tmp_path / "e")]).exit_code == 0
    r = runner.invoke(app, ["ensemble", str(a), str(c), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["train", "--data", str(synth_dir), "--out", str(tmp_path / "t"), "--init",
                            str(tmp_path / "e"), "--backbone", "tiny", "--epochs", "1"])  # fmt: skip
    assert r.exit_code != 0 and "is an ensemble" in r.output


def test_ensemble_views_option(tmp_path):
    runs = [_member(tmp_path / f"m{s}", s) for s in range(2)]
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "e"), "--views", "flip"])
    assert r.exit_code == 0
    assert load_model(tmp_path / "e")[1].model.views == "flip"
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "f"), "--views", "sideways"])
    assert r.exit_code == 2 and "sideways" in r.output


def test_an_ensemble_keeps_its_members_vote_unless_told(tmp_path):
    from chaiderm.config import RunConfig

    runs = [_member(tmp_path / f"m{s}", s) for s in range(2)]
    assert load_model(runs[0])[1].model.vote == "uniform"
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "e"), "--vote", "distance"])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "e")[1].model.vote == "distance"
    for run in runs:  # members that vote by distance make an ensemble that does
        cfg = RunConfig.load(run / "config.json")
        cfg.model.vote = "distance"
        cfg.save(run / "config.json")
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "f")])
    assert r.exit_code == 0 and load_model(tmp_path / "f")[1].model.vote == "distance"
    r = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(tmp_path / "g"), "--vote", "closest"])
    assert r.exit_code == 2 and "--vote" in r.output and not (tmp_path / "g").exists()


def test_train_ensemble_trains_its_members_and_combines_them(tmp_path, synth_dir):
    out = tmp_path / "ens"
    args = ["train", "--data", str(synth_dir), "--out", str(out), "--backbone", "tiny", "--no-pretrained",
            "--image-size", "64", "--load-size", "72", "--epochs", "1", "--ensemble", "2", "--seed", "3"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "ensemble of 2 members" in r.output, r.output
    model, cfg = load_model(out)
    assert cfg.data.members == [str((out / "members" / s).resolve()) for s in ("seed3", "seed4")]
    assert [m["backbone"] for m in cfg.model.members] == ["tiny", "tiny"]
    w = [load_model(out / "members" / s)[0].state_dict() for s in ("seed3", "seed4")]
    k = next(iter(w[0]))
    assert not torch.equal(w[0][k], w[1][k])  # two seeds, two members
    r = runner.invoke(app, [*args, "--resume"])  # both members finished: combined again, nothing retrained
    assert r.exit_code == 0 and "member 1 of 2" not in r.output, r.output


def test_the_recommended_recipe_is_eight_disease_seeds_by_name(tmp_path, synth_dir):
    from chaiderm.training.recipes import RECIPES

    out = tmp_path / "rec"
    args = ["train", "--data", str(synth_dir), "--out", str(out), "--backbone", "tiny", "--no-pretrained",
            "--image-size", "64", "--load-size", "72", "--epochs", "1", "--recipe", "recommended"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "ensemble of 8 members" in r.output, r.output
    _, cfg = load_model(out)
    assert cfg.train.recipe == "recommended" and len(cfg.model.members) == RECIPES["recommended"].ensemble
    assert cfg.model.vote == RECIPES["recommended"].vote == "distance"  # round 8's choice reaches the model
    for s in [f"seed{i}" for i in range(8)]:
        _, m = load_model(out / "members" / s)
        assert m.train.logic == "disease" and m.train.recipe == "recommended"
    # the recipe's own settings are never silently replaced, not even by a value that is the default
    for extra in (["--logic", "joint"], ["--ensemble", "3"], ["--zoom", "1.5"], ["--vote", "uniform"]):
        r = runner.invoke(app, [*args, *extra, "--force"])
        assert r.exit_code == 2 and "--recipe recommended sets" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*args[:-1], "best", "--force"])
    assert r.exit_code == 2 and "known: recommended" in r.output


def test_a_slow_query_is_answered_with_what_would_be_faster(tmp_path):
    """Above the budget, an ensemble's operator is pointed at its own members (fewer make a faster model
    without training); a single model's is told the machine is slower; within the budget, nothing."""
    from torch import nn

    from chaiderm.pipeline import QUERY_BUDGET_MS, query_cost_warning

    class Members(nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.members = nn.ModuleList(nn.Identity() for _ in range(n))

    run = tmp_path / "recipe"
    assert query_cost_warning(QUERY_BUDGET_MS, Members(8), run) is None
    eight = query_cost_warning(QUERY_BUDGET_MS + 30, Members(8), run)
    assert eight.startswith(f"a query takes {QUERY_BUDGET_MS + 30:.0f} ms here") and "8 members" in eight
    assert "chaiderm ensemble RUN RUN ..." in eight and "chaiderm index" in eight
    for seed in (3, 4, 5):
        (run / "members" / f"seed{seed}").mkdir(parents=True)
    named = query_cost_warning(QUERY_BUDGET_MS + 30, Members(3), run)
    assert f"chaiderm ensemble {run / 'members' / 'seed3'} {run / 'members' / 'seed4'} ..." in named
    single = query_cost_warning(QUERY_BUDGET_MS + 30, nn.Identity(), run)
    assert "members" not in single and "slower" in single


def _with_a_broken_image(synth_dir, folder, n=40):
    """A generic folder of ``n`` synthetic training images and one file that is not an image."""
    import shutil

    rows = (synth_dir / "train" / "labels.csv").read_text().splitlines()
    (folder / "images").mkdir(parents=True)
    for row in rows[1 : n + 1]:
        image_id = row.split(",")[0]
        shutil.copy(synth_dir / "train" / "images" / f"{image_id}.png", folder / "images")
    (folder / "images" / "BROKEN.png").write_bytes(b"\x89PNG not really")
    (folder / "labels.csv").write_text("\n".join([*rows[: n + 1], "BROKEN,nevus,nevus/x"]) + "\n")
    return folder


def test_train_ensemble_returns_every_members_skipped_images_and_leaves_its_config(tmp_path, synth_dir):
    from chaiderm.data.records import load_table
    from chaiderm.training.ensemble import train_ensemble

    table = load_table(_with_a_broken_image(synth_dir, tmp_path / "data"))
    cfg = tiny_cfg(epochs=1, seed=5)
    logged = []
    res = train_ensemble(cfg, table, tmp_path / "ens", 2, skip_bad=True, log=logged.append)
    assert len(res.trained) == 2 and all(len(r.skipped) == 1 for r in res.trained)
    assert len(res.skipped) == 1 and "BROKEN.png" in res.skipped[0]
    assert res.members == [tmp_path / "ens" / "members" / s for s in ("seed5", "seed6")] and res.dim == 128
    assert logged == ["member 1 of 2 (seed 5)", "member 2 of 2 (seed 6)"] and cfg.train.seed == 5
    again = train_ensemble(cfg, table, tmp_path / "ens", 2, resume=True, skip_bad=True)
    assert again.trained == [] and again.skipped == []  # finished members are combined, not retrained


def test_train_skip_bad_with_an_ensemble_reports_the_skipped_images(tmp_path, synth_dir):
    data = _with_a_broken_image(synth_dir, tmp_path / "data")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "ens"), "--backbone", "tiny", "--no-pretrained",
            "--image-size", "64", "--load-size", "72", "--epochs", "1", "--ensemble", "2", "--skip-bad"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "ensemble of 2 members" in r.output, r.output
    said = " ".join(r.output.split())  # the console wraps long lines, paths anywhere
    assert "warning: skipped 1 unreadable image(s), e.g." in said, r.output
    assert "BROKEN.png" in r.output.replace("\n", ""), r.output
