"""An archive larger than memory: the ``ivf_ondisk`` index at 10,000,000 cases on this machine.

    python bench/ondisk.py [--n 10000000] [--isic DIR] [--out bench/ondisk.json]

Vectors are drawn as ``bench/run.py``'s 1M ``ann`` section draws them: 1024-d, a Gaussian with the
mean and covariance spectrum of real archive embeddings (Lite0, 2000 ISIC 2017 training images, or
synthetic images where ISIC is absent). They are generated one shard at a time and never held whole
(10M x 1024 float32 would be 41 GB on a 24 GB machine): each shard is coded into the index, appended to
the on-disk float16 vectors and scanned exactly for the queries' true neighbours, then dropped. The build
runs in a child process so its peak resident memory is its own. Reported: build time and peak memory,
disk size, recall@10 against exact search on float32 vectors, and query latency per nprobe (one query at
a time, 2 threads, after the build: the lists and vectors are in whatever page cache the build left).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _real_embeddings(isic: Path, tmp: Path) -> tuple[np.ndarray, str]:
    from chaiderm.index.archive import ArchiveIndex
    from run import _model_and_index

    _, source, _ = _model_and_index(isic, tmp)
    return np.asarray(ArchiveIndex.load(tmp / "qindex").embeddings), source


def _anon_peak(stop, out: list) -> None:
    """Peak anonymous memory (heap, arrays) of this process, sampled: the kernel's peak resident figure
    also counts the pages of memory-mapped files (the shards being merged), which it drops at will."""
    peak = 0
    while not stop.is_set():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]))
        stop.wait(0.2)
    out.append(peak / 2**20)


def _build(real: np.ndarray, folder: str, n: int, shard: int, nlist: int, n_queries: int, q) -> None:
    """Child process: train, then generate -> code -> write -> scan each shard; report through ``q``."""
    import threading

    import faiss

    from chaiderm.index import ondisk
    from run import _embeddings_like

    faiss.omp_set_num_threads(2)
    stop, anon = threading.Event(), []
    sampler = threading.Thread(target=_anon_peak, args=(stop, anon), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    xq = _embeddings_like(real, n_queries, seed=2)
    sample = _embeddings_like(real, 40 * nlist, seed=3)  # drawn like the shards, not one of them
    trained = ondisk.train_quantizer(sample, nlist=nlist, pca_dim=256, seed=0)
    del sample
    train_s = time.perf_counter() - t0
    best_d = np.full((n_queries, 10), np.inf, np.float32)
    best_i = np.full((n_queries, 10), -1, np.int64)

    def shards():
        for s, a in enumerate(range(0, n, shard)):
            x = _embeddings_like(real, min(shard, n - a), seed=1000 + s)
            d, i = faiss.knn(xq, x, 10)  # exact, float32: the truth recall is measured against
            d_all, i_all = np.concatenate([best_d, d], 1), np.concatenate([best_i, i + a], 1)
            o = np.argsort(d_all, 1, kind="stable")[:, :10]
            best_d[:], best_i[:] = np.take_along_axis(d_all, o, 1), np.take_along_axis(i_all, o, 1)
            print(f"[ondisk] shard {s + 1}/{-(-n // shard)} at {time.perf_counter() - t0:.0f} s", flush=True)
            yield x

    ondisk.build(shards(), trained=trained, n=n, folder=Path(folder), nprobe=ondisk.default_nprobe(nlist))
    build_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    q.put(
        {
            "train_s": train_s,
            "build_s": build_s,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_anon_gb": anon[0],
            "xq": xq,
            "truth": best_i,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--shard", type=int, default=500_000)
    ap.add_argument("--nlist", type=int, default=None, help="default: the index's own (ondisk.default_nlist)")
    ap.add_argument("--queries", type=int, default=200, help="per configuration, each its own")
    ap.add_argument(
        "--configs", nargs="*", default=["384:2", "448:2", "512:2", "512:8", "512:1"], help="NPROBE:K_FACTOR"
    )
    ap.add_argument("--isic", type=Path, default=HERE.parent.parent / "shared" / "data" / "isic2017")
    ap.add_argument("--workdir", type=Path, default=None, help="where the index is written (default: a tmp dir)")
    ap.add_argument("--out", type=Path, default=HERE / "ondisk.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        tmp = Path(tmp)
        real, source = _real_embeddings(a.isic, tmp)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        from chaiderm.index.ondisk import default_nlist

        nlist = a.nlist or default_nlist(a.n)
        configs = [tuple(int(v) for v in c.split(":")) for c in a.configs]
        # each configuration answers queries of its own: queries repeated across configurations would
        # find their re-ranking rows in the page cache and flatter every configuration after the first
        n_q = a.queries * len(configs)
        child = ctx.Process(target=_build, args=(real, str(tmp / "ix"), a.n, a.shard, nlist, n_q, q))
        child.start()
        res = q.get()
        child.join()
        if child.exitcode:
            raise SystemExit(f"build failed with exit code {child.exitcode}")
        import faiss

        from chaiderm.index import ondisk
        from run import _embeddings_like, timed_recall

        faiss.omp_set_num_threads(2)

        ix = ondisk.OnDiskIVF(tmp / "ix")
        t_warm = time.perf_counter()
        ix.warm_lists(wait=True)  # as `chaiderm serve` does at start (there in the background)
        res["lists_warm_s"] = time.perf_counter() - t_warm
        xq, truth = res.pop("xq"), res.pop("truth")
        sweep = []
        for c, (nprobe, kf) in enumerate(configs):
            ix.nprobe, ix.k_factor = nprobe, kf
            for w in _embeddings_like(real, 20, seed=5000 + c):  # warm-up queries, not scored
                ix.search(w[None], 10)
            part = slice(c * a.queries, (c + 1) * a.queries)
            lat, recall = timed_recall(ix, xq[part], truth[part])
            row = {
                "nprobe": nprobe,
                "k_factor": kf,
                "recall_at_10": recall,
                "median_ms": float(np.median(lat) * 1000),
                "p95_ms": float(np.percentile(lat, 95) * 1000),
            }
            print(json.dumps(row), flush=True)
            sweep.append(row)
        ok = [s for s in sweep if s["recall_at_10"] >= 0.95 and s["median_ms"] <= 20]
        out = {
            "n": a.n,
            "dim": int(real.shape[1]),
            "queries": f"{a.queries} per configuration, each its own, after 20 unscored warm-up queries; "
            "the lists read into the page cache first (OnDiskIVF.warm_lists), the vectors not",
            "index": f"IVF{nlist} (lists chosen by HNSW32 over k-means centroids in a 256-d random-rotation PCA), "
            "SQ8 codes of all 1024 dimensions in lists on disk, exact re-ranking on float16 vectors on disk",
            "parallel_mode": 1,
            "data": f"Gaussian with the mean and covariance spectrum of real embeddings ({source})",
            "shard": a.shard,
            **res,
            "vectors_float32_gb": a.n * real.shape[1] * 4 / 2**30,
            "disk_gb": ix.disk_bytes() / 2**30,
            "disk_files_gb": {p.name: p.stat().st_size / 2**30 for p in sorted((tmp / "ix").iterdir())},
            "machine_ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "sweep": sweep,
            "chosen": min(ok, key=lambda s: s["median_ms"]) if ok else None,
            "wall_s": time.perf_counter() - t_all,
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "sweep"}, indent=2))


if __name__ == "__main__":
    main()
