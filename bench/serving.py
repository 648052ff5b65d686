"""Shared by the serving benchmarks: a small archive to serve, and a `chaiderm serve` process on it."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

BUILD = """
import sys
import chaiderm, torch
from chaiderm.config import ModelConfig, RunConfig
from chaiderm.data.records import load_table
from chaiderm.models import build_model, save_model
from chaiderm.pipeline import build_index
torch.manual_seed(0)
cfg = RunConfig(model=ModelConfig())
m = build_model(cfg.model).eval()
save_model(m, sys.argv[2], cfg)
build_index(m, cfg, load_table(sys.argv[1]), model_dir=sys.argv[2])[0].save(sys.argv[3])
"""


def build_archive(tmp: Path, n_train: int = 100, n_test: int = 30, env: dict | None = None) -> tuple[Path, Path]:
    """An ImageNet EfficientNet-Lite0 model (untrained head) and its index over synthetic cases."""
    subprocess.run(
        [
            "chaiderm",
            "synth",
            "--out",
            str(tmp / "syn"),
            "--n-train",
            str(n_train),
            "--n-val",
            "5",
            "--n-test",
            str(n_test),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp / "syn" / "train"), str(tmp / "run"), str(tmp / "ix")],
        check=True,
        env=env,
    )
    return tmp / "run", tmp / "ix"


def start_server(run: Path, ix: Path, db: Path, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """`chaiderm serve` on a free loopback port, returned once it answers /healthz."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        ["chaiderm", "serve", "--model", str(run), "--index", str(ix), "--db", str(db), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
            return srv, port
        except OSError:
            time.sleep(0.1)
    srv.kill()
    raise RuntimeError("chaiderm serve did not start")
