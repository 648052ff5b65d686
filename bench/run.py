"""Benchmarks, one command: ``python bench/run.py [--only NAME ...] [--isic DIR]``.

Sections (figures merged into ``bench/results.json`` with the machine and date):
- ``train``: Lite0 training throughput at 224 on ISIC-sized (256x256) images, the real training path;
- ``query``: one query = embed + exact search over 2000 archive images + 10 QAM/RAM pairs;
- ``ann``: IVF search over 1,000,000 synthetic 1024-d embeddings, k=10, recall@10 against exact search;
- ``normalise``: L2-normalised vs raw embeddings, Disease logic on ISIC 2017 train, val AUC per epoch
  (needs the ISIC data);
- ``ensemble_query``: the ``query`` measurement through ensembles of 2, 3, 5, 8, 10 and 12 Lite0 members
  (batch norms folded, as queries are served): members side by side, in turn, and as a ``serve`` request;
- ``backbone_query``: the same through one model of each larger backbone (Lite1 at 224 and 240, Lite2 at 260);
- ``ray``: archive embedding in one process and on a local Ray cluster with 1 and 2 actors (images/s);
- ``serve``: 8 concurrent clients against ``chaiderm serve`` for a minute: query p50/p95 with 10
  evidence pairs, errors, and feedback rows written vs clicks sent.
ISIC images are used where ``--isic`` (default: ``shared/data/isic2017`` beside the checkout) exists; otherwise
synthetic 256x256 images stand in for the throughput and latency sections.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = HERE.parent.parent / "shared" / "data" / "isic2017"


def _archive(isic: Path, n: int, tmp: Path):
    from chaiderm.data.records import load_table
    from chaiderm.data.synthetic import write_dataset

    if (isic / "ISIC-2017_Training_Part3_GroundTruth.csv").exists():
        return load_table(isic, "train").subset(range(n)), "ISIC 2017 train (256x256 JPEG)"
    write_dataset(tmp / "syn", splits={"train": n}, size=256, seed=0)
    return load_table(tmp / "syn", "train"), "synthetic 256x256 PNG"


def bench_train(isic: Path, tmp: Path) -> dict:
    from chaiderm.config import ModelConfig, RunConfig, TrainConfig
    from chaiderm.training import train

    table, source = _archive(isic, 480, tmp)
    cfg = RunConfig(model=ModelConfig(), train=TrainConfig(logic="disease", epochs=2, batch_size=48, chunk_size=16))
    res = train(cfg, table, tmp / "train_run", force=True)
    ips = [h["images_per_s"] for h in res.history]
    return {
        "data": source,
        "images": len(table),
        "backbone": "efficientnet_lite0",
        "input": 224,
        "batch": 48,
        "images_per_s_by_epoch": ips,
        "images_per_s": max(ips),
    }


def _model_and_index(isic: Path, tmp: Path):
    """Lite0 embedding (ImageNet backbone, seeded head) and an index over 2000 archive images."""
    from chaiderm.config import ModelConfig, RunConfig
    from chaiderm.models.embedding import build_model, save_model
    from chaiderm.pipeline import build_index

    table, source = _archive(isic, 2000, tmp)
    if (tmp / "qindex").exists():
        return table, source, 0.0
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig())
    model = build_model(cfg.model).eval()
    save_model(model, tmp / "qmodel", cfg)
    t = time.perf_counter()
    index, _ = build_index(model, cfg, table, model_dir=tmp / "qmodel")
    index.save(tmp / "qindex")
    return table, source, time.perf_counter() - t


def bench_query(isic: Path, tmp: Path, n_queries: int = 40) -> dict:
    from chaiderm.data.images import load_image
    from chaiderm.pipeline import Predictor

    table, source, build_s = _model_and_index(isic, tmp)
    pred = Predictor.load(tmp / "qmodel", tmp / "qindex")
    images = [load_image(p) for p in table.paths[:n_queries]]
    pred.predict(images[0], k=10)  # warm-up
    times, parts = [], {"embed": [], "search_and_maps": []}
    for img in images:
        t0 = time.perf_counter()
        res = pred.predict(img, k=10, evidence=True)
        times.append(time.perf_counter() - t0)
        assert len(res.qams) == 10
        t1 = time.perf_counter()
        pred.embed_square(pred.square(img)[None])
        parts["embed"].append(time.perf_counter() - t1)
    ms = np.array(times) * 1000
    return {
        "data": source,
        "archive": len(pred.index),
        "k": 10,
        "evidence_pairs": 10,
        "queries": n_queries,
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "embed_only_median_ms": float(np.median(parts["embed"]) * 1000),
        "index_build_s": build_s,
        "maps_stored": True,
    }


def _embeddings_like(real: np.ndarray, n: int, seed: int, rank: int = 256) -> np.ndarray:
    """Draw ``n`` vectors from a Gaussian with the mean and covariance spectrum of real embeddings
    (top ``rank`` principal directions exactly, the rest as isotropic residual variance)."""
    rng = np.random.default_rng(seed)
    real = real.astype(np.float64)
    mu = real.mean(0)
    _, sv, vt = np.linalg.svd(real - mu, full_matrices=False)
    var = sv**2 / (len(real) - 1)
    rank = min(rank, len(var))
    resid = max(float(var[rank:].sum()) / real.shape[1], 0.0)
    basis = (vt[:rank] * np.sqrt(var[:rank])[:, None]).astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = rng.standard_normal((m, rank), dtype=np.float32) @ basis + mu.astype(np.float32)
        out[s : s + m] = x + np.sqrt(resid) * rng.standard_normal((m, real.shape[1]), dtype=np.float32)
    return out


def timed_recall(index, xq: np.ndarray, truth: np.ndarray, k: int = 10) -> tuple[list[float], float]:
    """Each query searched alone: its latency in seconds, and the mean recall@k against ``truth``."""
    lat, found = [], []
    for q in xq:
        t0 = time.perf_counter()
        _, i = index.search(q[None], k)
        lat.append(time.perf_counter() - t0)
        found.append(i[0])
    return lat, float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found, strict=True)]))


def bench_ann(isic: Path, tmp: Path, n: int = 1_000_000, n_queries: int = 200) -> dict:
    """1M synthetic 1024-d embeddings with the statistics of real archive embeddings (no million real
    images exist here): mean and covariance spectrum taken from the 2000-image archive's embeddings."""
    import faiss

    from chaiderm.index.archive import ArchiveIndex
    from chaiderm.index.faiss_index import build_faiss, set_search_params

    _, source, _ = _model_and_index(isic, tmp)
    real = ArchiveIndex.load(tmp / "qindex").embeddings
    var = np.linalg.svd(real - real.mean(0), compute_uv=False) ** 2
    dims90 = int(np.searchsorted(np.cumsum(var) / var.sum(), 0.9) + 1)
    t = time.perf_counter()
    xb = _embeddings_like(real, n, seed=1)
    xq = _embeddings_like(real, n_queries, seed=2)
    d = xb.shape[1]
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    _, exact = faiss.knn(xq, xb, 10)
    exact_s = (time.perf_counter() - t) / n_queries
    t = time.perf_counter()
    index = build_faiss(xb, "ivf", nlist=1024, pca_dim=256, k_factor=8)
    build_s = time.perf_counter() - t
    sweep = []
    for nprobe in (32, 64, 96, 128, 192):
        set_search_params(index, nprobe=nprobe)
        lat, recall = timed_recall(index, xq, exact)
        sweep.append(
            {
                "nprobe": nprobe,
                "recall_at_10": recall,
                "median_ms": float(np.median(lat) * 1000),
                "p95_ms": float(np.percentile(lat, 95) * 1000),
            }
        )
    ok = [s for s in sweep if s["recall_at_10"] >= 0.95 and s["median_ms"] <= 10]
    return {
        "n": n,
        "dim": d,
        "queries": n_queries,
        "index": "PCAR256,IVF1024,SQ8 + exact re-ranking of 8k candidates",
        "data": f"Gaussian with the mean and covariance spectrum of real embeddings ({source})",
        "real_dims_for_90pct_variance": dims90,
        "generate_s": gen_s,
        "build_s": build_s,
        "exact_ms_per_query": exact_s * 1000,
        "sweep": sweep,
        "chosen": ok[0] if ok else None,
    }


def bench_normalise(isic: Path, tmp: Path, epochs: int = 2, seeds: tuple[int, ...] = (0, 1)) -> dict:
    from chaiderm.config import ModelConfig, RunConfig, TrainConfig
    from chaiderm.data.records import load_table
    from chaiderm.training import train

    if not (isic / "ISIC-2017_Training_Part3_GroundTruth.csv").exists():
        return {"skipped": "ISIC 2017 data not present"}
    tr, va = load_table(isic, "train"), load_table(isic, "val")
    out: dict = {"data": "ISIC 2017 train (2000) -> val (150)", "k": 20, "epochs": epochs, "runs": []}
    for seed in seeds:
        for normalise in (True, False):
            cfg = RunConfig(
                model=ModelConfig(normalize=normalise),
                train=TrainConfig(logic="disease", epochs=epochs, val_k=20, seed=seed),
            )
            res = train(cfg, tr, tmp / f"norm_{normalise}_{seed}", val_table=va, force=True)
            out["runs"].append(
                {
                    "l2_normalised": normalise,
                    "seed": seed,
                    "val_auc_by_epoch": [h["val_auc"] for h in res.history],
                    "loss_by_epoch": [h["loss"] for h in res.history],
                }
            )
    for normalise in (True, False):
        best = [max(r["val_auc_by_epoch"]) for r in out["runs"] if r["l2_normalised"] == normalise]
        out["l2_normalised" if normalise else "raw"] = {"best_val_auc_mean": float(np.mean(best)), "per_seed": best}
    return out


def _serve_load(base: str, payloads: list[bytes], clients: int, seconds: float, headers: dict) -> dict:
    """``clients`` threads, each in a loop: query (k=10), fetch one neighbour's QAM and RAM, click."""
    import threading

    import httpx

    q_lat: list[float] = []
    m_lat: list[float] = []
    errors: list[str] = []
    acked = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=base, timeout=60, headers=headers) as c:
            while time.time() < stop:
                data = payloads[int(rng.integers(len(payloads)))]
                try:
                    t0 = time.perf_counter()
                    r = c.post("/api/query", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "10"})
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    q = r.json()
                    n = q["neighbors"][int(rng.integers(10))]
                    c.get(n["qam_url"]).raise_for_status()
                    c.get(n["ram_url"]).raise_for_status()
                    t2 = time.perf_counter()
                    c.post(
                        "/api/feedback",
                        json={"query_id": q["query_id"], "image_id": n["image_id"], "relevant": bool(rng.integers(2))},
                    ).raise_for_status()
                    with lock:
                        q_lat.append(t1 - t0)
                        m_lat.append(t2 - t1)
                        acked[0] += 1
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    with lock:
                        errors.append(repr(e)[:200])

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(q_lat) * 1000
    return {
        "clients": clients,
        "seconds": seconds,
        "queries": len(q_lat),
        "errors": len(errors),
        "error_examples": errors[:3],
        "feedback_acknowledged": acked[0],
        "query_p50_ms": float(np.median(ms)) if len(ms) else None,
        "query_p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "maps_pair_p50_ms": float(np.median(m_lat) * 1000) if m_lat else None,
        "queries_per_s": len(q_lat) / seconds,
    }


def bench_serve(isic: Path, tmp: Path, clients: int = 8, seconds: float = 45.0) -> dict:
    """``chaiderm serve`` in its own process, signed in as an expert (the clinic set-up): first one
    client, then ``clients`` at once, each querying (k=10: 10 QAM/RAM pairs computed), fetching the chosen
    neighbour's QAM and RAM and clicking "similar", for ``seconds`` each. Every acknowledged click must
    be a row in the database afterwards."""
    import socket
    import sqlite3
    import subprocess

    import httpx

    table, source, _ = _model_and_index(isic, tmp)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = tmp / "serve.db"
    users = tmp / "users.json"
    users.unlink(missing_ok=True)
    for name, role in (("bench", "expert"), ("ops", "admin")):  # the clients click; the operator reads /metrics
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chaiderm.cli",
                "users",
                "add",
                name,
                "--role",
                role,
                "--users",
                str(users),
                "--password-stdin",
            ],
            input=b"bench-password-123\n",
            check=True,
            capture_output=True,
        )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chaiderm.cli",
            "serve",
            "--model",
            str(tmp / "qmodel"),
            "--index",
            str(tmp / "qindex"),
            "--db",
            str(db),
            "--port",
            str(port),
            "--users",
            str(users),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.5)
        token = httpx.post(base + "/api/token", json={"name": "bench", "password": "bench-password-123"}).json()
        headers = {"Authorization": f"Bearer {token['token']}"}
        payloads = [Path(p).read_bytes() for p in table.paths[:50]]
        _serve_load(base, payloads, 1, 5, headers)  # warm-up
        one = _serve_load(base, payloads, 1, seconds, headers)
        many = _serve_load(base, payloads, clients, seconds, headers)
        ops = httpx.post(base + "/api/token", json={"name": "ops", "password": "bench-password-123"}).json()
        metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {ops['token']}"}).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    acked = one["feedback_acknowledged"] + many["feedback_acknowledged"]
    return {
        "data": source,
        "archive": len(table),
        "k": 10,
        "evidence_pairs_per_query": 10,
        "one_client": one,
        "many_clients": many,
        "throughput_ratio": many["queries_per_s"] / one["queries_per_s"] if one["queries_per_s"] else None,
        "feedback_acknowledged_after_warmup": acked,
        "feedback_rows": int(rows),
        "metrics_lines": sum(1 for line in metrics.splitlines() if line.startswith("chaiderm_")),
    }


def _one_query_ms(pred, img) -> float:
    """Milliseconds of one query with 10 neighbours and their 10 QAM/RAM pairs."""
    t0 = time.perf_counter()
    res = pred.predict(img, k=10, evidence=True)
    ms = (time.perf_counter() - t0) * 1000
    assert len(res.qams) == 10
    return ms


def _evidence_query_ms(pred, images: list) -> np.ndarray:
    """Milliseconds of each query with 10 neighbours and their 10 QAM/RAM pairs, after one warm-up query."""
    pred.predict(images[0], k=10)
    return np.array([_one_query_ms(pred, img) for img in images])


def _ensemble_query_ms(pred, images: list) -> dict[str, np.ndarray]:
    """Milliseconds of each query with 10 evidence pairs, three ways taken in turn for every image (so the
    shared machine's slow spells fall on all three alike): as ``query`` answers (members side by side on
    the member pool), with the members in turn (``set_member_threads(1)``, the code before the pool),
    and as ``serve`` runs a request (the calling thread on one torch thread, members on the pool)."""
    from concurrent.futures import ThreadPoolExecutor

    from chaiderm.models.ensemble import set_member_threads

    request = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))
    before = set_member_threads(None)
    out: dict[str, list[float]] = {"side_by_side": [], "in_turn": [], "serve_request": []}
    try:
        for warm in (True, False):
            for img in images[:1] if warm else images:
                set_member_threads(None)
                a = _one_query_ms(pred, img)
                set_member_threads(1)
                b = _one_query_ms(pred, img)
                set_member_threads(None)
                c = request.submit(_one_query_ms, pred, img).result()
                if not warm:
                    out["side_by_side"].append(a)
                    out["in_turn"].append(b)
                    out["serve_request"].append(c)
    finally:
        request.shutdown()
        set_member_threads(before)
    return {k: np.array(v) for k, v in out.items()}


def bench_ensemble_query(isic: Path, tmp: Path, n_queries: int = 30, archive: int = 500) -> dict:
    """One query with 10 evidence pairs through ensembles of 2, 3, 5, 8, 10 and 12 Lite0 members, each over
    its own index of the same 500 archive images (the search itself is a small share of a query; bench
    `query` measures it over 2000). Members are seeded heads on the ImageNet backbone with the stages past
    its frozen stem perturbed: latency depends on what members share (the stem, computed once), not on
    what they learned."""
    from chaiderm.config import ModelConfig, RunConfig
    from chaiderm.data.images import load_image
    from chaiderm.models.embedding import build_model, save_model
    from chaiderm.models.ensemble import combine, member_threads
    from chaiderm.pipeline import Predictor, build_index

    table, source, _ = _model_and_index(isic, tmp)
    table = table.subset(range(min(archive, len(table))))
    images = [load_image(p) for p in table.paths[:n_queries]]
    out: dict = {"data": source, "archive": len(table), "k": 10, "evidence_pairs": 10, "queries": n_queries}
    members = []
    sizes = (2, 3, 5, 8, 10, 12)
    for seed in range(max(sizes)):
        torch.manual_seed(seed)
        cfg = RunConfig(model=ModelConfig())
        net = build_model(cfg.model).eval()
        with torch.no_grad():  # as fine-tuning leaves them: each member's own unfrozen stages, a shared stem
            for stage in net.backbone.stages[net.freeze_stages :]:
                for t in stage.parameters():
                    t.add_(torch.randn_like(t) * 1e-3)
        save_model(net, tmp / f"member{seed}", cfg)
        members.append(str(tmp / f"member{seed}"))
    for n in sizes:
        net, cfg = combine(members[:n], tmp / f"ens{n}")
        t = time.perf_counter()
        index, _ = build_index(net, cfg, table, model_dir=tmp / f"ens{n}")
        index.save(tmp / f"ens{n}_index")
        build_s = time.perf_counter() - t
        pred = Predictor.load(tmp / f"ens{n}", tmp / f"ens{n}_index")  # batch norms folded, as served
        ms = _ensemble_query_ms(pred, images)
        out[f"members_{n}"] = {
            "dim": net.dim,
            "member_threads": member_threads(),
            "median_ms": float(np.median(ms["side_by_side"])),
            "p95_ms": float(np.percentile(ms["side_by_side"], 95)),
            "median_ms_in_turn": float(np.median(ms["in_turn"])),
            "p95_ms_in_turn": float(np.percentile(ms["in_turn"], 95)),
            "median_ms_serve_request": float(np.median(ms["serve_request"])),
            "p95_ms_serve_request": float(np.percentile(ms["serve_request"], 95)),
            "index_build_s": build_s,
            "maps_gb": float(index.maps.nbytes / 2**30) if index.maps is not None else 0.0,
            "shared_stages": net.shared_stages(),
        }
        shutil.rmtree(tmp / f"ens{n}_index")
    return out


BACKBONE_QUERY = (
    ("efficientnet_lite0", 224, 256),
    ("efficientnet_lite1", 224, 256),
    ("efficientnet_lite1", 240, 256),
    ("efficientnet_lite2", 260, 260),  # 260 > the 256 images here: loaded at 260 (an upscale)
)


def bench_backbone_query(isic: Path, tmp: Path, n_queries: int = 30, archive: int = 500) -> dict:
    """One query with 10 evidence pairs through one model per backbone and input size (``BACKBONE_QUERY``),
    each over its own index of the same 500 archive images: what one member of each kind costs, the first
    thing to know before a larger backbone can join the recipe (it shares no stem with Lite0 members)."""
    from chaiderm.config import ModelConfig, RunConfig
    from chaiderm.data.images import load_image
    from chaiderm.models.embedding import build_model, save_model
    from chaiderm.pipeline import Predictor, build_index

    table, source, _ = _model_and_index(isic, tmp)
    table = table.subset(range(min(archive, len(table))))
    images = [load_image(p) for p in table.paths[:n_queries]]
    out: dict = {"data": source, "archive": len(table), "k": 10, "evidence_pairs": 10, "queries": n_queries}
    for backbone, size, load in BACKBONE_QUERY:
        name = f"{backbone}_{size}"
        torch.manual_seed(0)
        # timing does not depend on the weights: random ones need no optional weights package
        cfg = RunConfig(model=ModelConfig(backbone=backbone, image_size=size, load_size=load, pretrained=False))
        net = build_model(cfg.model).eval()
        save_model(net, tmp / name, cfg)
        index, _ = build_index(net, cfg, table, model_dir=tmp / name)
        index.save(tmp / f"{name}_index")
        pred = Predictor.load(tmp / name, tmp / f"{name}_index")
        ms = _evidence_query_ms(pred, images)
        out[name] = {
            "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)),
            "map_cells": int(index.maps.shape[-1] * index.maps.shape[-2]) if index.maps is not None else 0,
        }
        shutil.rmtree(tmp / f"{name}_index")
    return out


def bench_ray(isic: Path, tmp: Path, n: int = 2000) -> dict:
    """Embedding an archive (Lite0, evidence maps kept, image hashing) in one process, and on a local Ray
    cluster with 1 and 2 actors. Ray is started beforehand; each Ray figure includes starting its actors
    (a process each, loading torch and the model: seconds), as every `index --ray` pays it."""
    from chaiderm.index.ray_embed import connect, embed_archive_ray
    from chaiderm.models.embedding import load_model
    from chaiderm.pipeline import embed_archive

    table, source, _ = _model_and_index(isic, tmp)
    table = table.subset(range(min(n, len(table))))
    model, cfg = load_model(tmp / "qmodel")
    t = time.perf_counter()
    ray = connect("local")
    start_s = time.perf_counter() - t
    embed_archive_ray(tmp / "qmodel", cfg, table.subset(range(8)), workers=1)  # actors' first start-up
    out = {"images": len(table), "data": source, "ray": ray.__version__, "ray_start_s": start_s}
    t = time.perf_counter()
    ref = embed_archive(model, cfg, table)
    out["one_process_images_per_s"] = len(table) / (time.perf_counter() - t)
    for workers in (1, 2):
        t = time.perf_counter()
        got = embed_archive_ray(tmp / "qmodel", cfg, table, workers=workers)
        out[f"ray_{workers}_workers_images_per_s"] = len(table) / (time.perf_counter() - t)
        out[f"ray_{workers}_workers_max_abs_diff"] = float(np.abs(got[0] - ref[0]).max())
        assert got[2].image_ids == ref[2].image_ids
    ray.shutdown()
    return out


SECTIONS = {
    "train": bench_train,
    "ray": bench_ray,
    "ensemble_query": bench_ensemble_query,
    "backbone_query": bench_backbone_query,
    "query": bench_query,
    "ann": bench_ann,
    "normalise": bench_normalise,
    "serve": bench_serve,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to run (default: all)")
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 2))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.only or list(SECTIONS):
            fn = SECTIONS[name]
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            res = fn(isic=args.isic, tmp=Path(d))
            res["wall_s"] = time.perf_counter() - t
            res["when"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
            results[name] = res
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main()
