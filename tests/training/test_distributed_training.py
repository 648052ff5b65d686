"""torchrun with 2 gloo processes on CPU: the whole batch's loss and gradients, as one process gets them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

ARGS = [
    "--backbone", "tiny", "--no-pretrained", "--image-size", "64", "--load-size", "72",
    "--optimizer", "sgd", "--lr-backbone", "0.05", "--lr-head", "0.05", "--force",
]  # fmt: skip


def _train(data, out, nproc: int, batch: int, epochs: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic in every process
    cmd = [sys.executable, "-m", "chaiderm.cli", "train", "--data", str(data), "--out", str(out)]
    cmd += [*ARGS, "--batch-size", str(batch), "--nproc", str(nproc), "--epochs", str(epochs)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(synth_dir, tmp_path):
    """SGD makes the update linear in the gradient: equal weights after the steps mean equal gradients.
    48 rows in chunks of 16 split 2:1 between the processes, so the shares are unequal, as they can be."""
    one = _train(synth_dir, tmp_path / "one", 1, 48)
    two = _train(synth_dir, tmp_path / "two", 2, 48)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert h1[0]["loss"] == pytest.approx(h2[0]["loss"], rel=1e-5)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert _train(synth_dir, tmp_path / "init", 1, 48, epochs=0).returncode == 0
    w0 = load_file(tmp_path / "init" / "model.safetensors")
    moved = 0.0
    for k in w1:
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics are the first process's share (as DistributedDataParallel keeps them)
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-4, atol=1e-5, err_msg=k)
        moved = max(moved, float(np.abs(w1[k] - w0[k]).max()))
    assert moved > 1e-3  # the steps really moved the weights, far beyond the tolerance
    # only the first process wrote and reported
    assert two.stderr.count("model written to") == 1
    assert not list((tmp_path / "two").glob("*.tmp"))


@pytest.mark.slow
def test_two_processes_resume_a_killed_run(synth_dir, tmp_path):
    """Stopped after epoch 1 of 2 and resumed on 2 processes: the weights of an unbroken 2-epoch run."""
    whole = _train(synth_dir, tmp_path / "whole", 2, 96, epochs=2)
    assert whole.returncode == 0, whole.stderr[-2000:]
    first = _train(synth_dir, tmp_path / "cut", 2, 96, epochs=1)
    assert first.returncode == 0, first.stderr[-2000:]
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cfg["train"]["epochs"] == 1
    # the checkpoint of epoch 1, resumed with the 2-epoch settings (as a run killed after epoch 1 would be)
    cfg["train"]["epochs"] = 2
    import torch

    ck = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    saved = json.loads(ck["config"])
    saved["train"]["epochs"] = 2
    ck["config"] = json.dumps(saved)
    torch.save(ck, tmp_path / "cut" / "checkpoints" / "last.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "chaiderm.cli", "train", "--data", str(synth_dir), "--out", str(tmp_path / "cut")]
    cmd += [*ARGS, "--batch-size", "96", "--nproc", "2", "--epochs", "2", "--resume"]
    cmd.remove("--force")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        if "running" not in k and "num_batches" not in k:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 2
