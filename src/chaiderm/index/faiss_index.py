"""FAISS wrappers: contiguous float32 in, ``(D, I)`` out; D is squared L2 (the paper's D())."""

from __future__ import annotations

import math

import faiss
import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw")


def _f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (n, d) array, got shape {x.shape}")
    return x


def build_faiss(
    emb: np.ndarray,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 64,
    seed: int = 0,
) -> faiss.Index:
    """Build an index. ``flat`` is exact; ``ivf`` (inverted lists) and ``hnsw`` are approximate
    and meant for archives far larger than a challenge set."""
    emb = _f32(emb)
    n, d = emb.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(4 * int(math.sqrt(n)), n // 39 or 1))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
        index.cp.seed = seed  # k-means seed: a rebuilt index is the same index
        train = emb
        if n > 256 * nlist:
            train = emb[np.random.default_rng(seed).choice(n, 256 * nlist, replace=False)]
        index.train(train)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_L2)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index type '{kind}'; use one of {INDEX_TYPES}")
    index.add(emb)
    return index


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = nprobe
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search


def exact_search(archive: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN without keeping an index (validation, evaluation)."""
    index = build_faiss(archive, "flat")
    return index.search(_f32(queries), min(k, len(archive)))
