"""FAISS wrappers: contiguous float32 in, ``(D, I)`` out; D is squared L2 (the paper's D())."""

from __future__ import annotations

import contextlib
import math

import faiss
import numpy as np

from chaiderm.errors import DataError

INDEX_TYPES = ("flat", "ivf", "hnsw")


def _f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (n, d) array, got shape {x.shape}")
    return x


def ivf_prefix(d: int, pca_dim: int) -> str:
    """The random-rotation PCA that precedes the IVF lists, where it reduces the dimension."""
    return f"PCAR{pca_dim}," if pca_dim < d else ""


def ivf_min_size(d: int, nlist: int, pca_dim: int) -> int:
    """Vectors needed to train ``nlist`` lists (39 each, FAISS's minimum) and the projection."""
    return max(pca_dim if pca_dim < d else 0, 39 * nlist)


def build_faiss(
    emb: np.ndarray,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    nprobe: int = 128,
    pca_dim: int = 256,
    k_factor: int = 8,
    hnsw_m: int = 32,
    ef_search: int = 64,
    seed: int = 0,
) -> faiss.Index:
    """Build an index. ``flat`` is exact. ``ivf`` is for archives far larger than a challenge set:
    a random-rotation PCA to ``pca_dim`` dims, ``nlist`` inverted lists of 8-bit codes, and an exact
    re-ranking of the ``k_factor * k`` best candidates on the full vectors, so the distances it
    returns are exact. ``hnsw`` is a graph index (slow to build on 2 cores)."""
    emb = _f32(emb)
    n, d = emb.shape
    if kind not in INDEX_TYPES:
        raise DataError(None, f"--kind: unknown index type '{kind}'; use one of {', '.join(INDEX_TYPES)}")
    if kind == "ivf":
        need = ivf_min_size(d, nlist or 1, pca_dim)
        if n < need:
            raise DataError(
                None,
                f"--kind ivf needs at least {need} archive images to train its lists and projection, this "
                f"archive has {n}; use --kind flat (exact, and fast at this size)",
            )
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(4 * int(math.sqrt(n)), n // 39 or 1))
        base = faiss.index_factory(d, f"{ivf_prefix(d, pca_dim)}IVF{nlist},SQ8", faiss.METRIC_L2)
        ivf = faiss.extract_index_ivf(base)
        ivf.cp.seed = seed  # k-means seed: a rebuilt index is the same index
        train = emb
        if n > 100 * nlist:  # 100 points per list trains k-means well; more only costs time
            train = emb[np.random.default_rng(seed).choice(n, 100 * nlist, replace=False)]
        base.train(train)
        ivf.nprobe = min(nprobe, nlist)
        index = faiss.IndexRefineFlat(base)
        index.k_factor = k_factor
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_L2)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index type '{kind}'; use one of {INDEX_TYPES}")
    index.add(emb)
    return index


def set_search_params(
    index: faiss.Index, *, nprobe: int | None = None, k_factor: int | None = None, ef_search: int | None = None
) -> None:
    if nprobe is not None:
        with contextlib.suppress(RuntimeError):  # not an IVF index: nothing to set
            faiss.extract_index_ivf(index).nprobe = nprobe
    if k_factor is not None and isinstance(index, faiss.IndexRefine):
        index.k_factor = k_factor
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search


def exact_search(archive: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN without keeping an index (validation, evaluation)."""
    index = build_faiss(archive, "flat")
    return index.search(_f32(queries), min(k, len(archive)))


def nearest_images(
    model, archive_img: np.ndarray, query_img: np.ndarray, image_size: int, k: int, views: str = "none"
) -> np.ndarray:
    """Rows ``(n_queries, k)`` of each query image's k nearest archive images under ``model``'s embedding
    (prepared uint8 images, centre-cropped to ``image_size``; ``views`` as in ``embed``)."""
    from chaiderm.models.inference import embed

    archive, _ = embed(model, archive_img, image_size, views=views)
    queries, _ = embed(model, query_img, image_size, views=views)
    return exact_search(archive, queries, k)[1]
