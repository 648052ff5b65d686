"""An IVF index for archives larger than memory: inverted lists on disk, vectors on disk.

Built shard by shard, so peak memory is one shard, not the archive. A coarse quantizer is trained once on
a sample: a random-rotation PCA to ``pca_dim`` dimensions, k-means centroids in that space, and an HNSW
graph over the centroids that assigns millions of vectors without scanning every centroid. The projection
only chooses the list: the codes in the lists are 8-bit scalar codes of *all* ``d`` dimensions, because
codes of the projection alone lose near neighbours that no re-ranking can bring back once the archive is
large (10M synthetic cases: recall@10 stopped at 0.875 with 256-d codes, research/ondisk_index/ondisk_index.md). Each
shard's codes go to their own small IVF file; FAISS's ``OnDiskInvertedLists`` merges the shards into one
``lists.ivfdata`` that searches memory-map. The full vectors are kept as a float16 ``.npy`` on disk and
re-rank the ``k_factor * k`` best candidates exactly (distances to float16 precision), so results are
those of an exact search on the candidates, as the in-memory ``ivf`` kind's are.

Folder layout::

    trained.faiss  lists.faiss  lists.ivfdata  vectors.npy

Indexes built before the full-dimension codes (``PCAR...,IVF...,SQ8``) still load and search.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from chaiderm.index.faiss_index import ivf_min_size

KIND = "ivf_ondisk"
LAYOUT = ("trained.faiss", "lists.faiss", "lists.ivfdata", "vectors.npy")


@contextlib.contextmanager
def _quiet_faiss():
    """FAISS's on-disk lists print progress lines ("resizing ...", "updating ondisk filename ...") from C++
    straight to the process's standard output; a user of the CLI should not see them."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two, at least 39 training points each. Finer lists than the
    usual sqrt(n) find more neighbours per code scanned, and scanning is what a query pays for: 2M
    synthetic cases, 120k codes scanned, recall@10 0.941 with 1024 lists, 0.974 with 4096."""
    return int(max(1, min(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))), n // 39 or 1)))


def default_nprobe(nlist: int) -> int:
    """A 32nd of the lists, at least 64: 10M synthetic cases in 16384 lists, 512 probed, recall@10 0.963 in
    a median 17.2 ms (docs/results.md)."""
    return int(min(nlist, max(64, nlist // 32)))


STAGING_PREFIX = "chaiderm-ondisk-"


def staging_dir() -> Path:
    """Where a build writes before ``save`` moves it: ``$CHAIDERM_TMPDIR`` (put it on the disk the index
    will live on, so the move is a rename) or the system's temporary folder."""
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=os.environ.get("CHAIDERM_TMPDIR") or None))


def train_quantizer(
    sample: np.ndarray, *, nlist: int, pca_dim: int = 256, seed: int = 0, niter: int = 10
) -> faiss.Index:
    """An empty, trained IVF index: the part every shard shares."""
    sample = np.ascontiguousarray(sample, np.float32)
    d = sample.shape[1]
    if len(sample) < 39 * nlist:
        raise ValueError(f"{len(sample)} training vectors for {nlist} lists; need at least {39 * nlist}")
    if pca_dim < d:  # k-means in the projection costs a quarter of k-means in 1024-d, for the same lists
        pca = faiss.PCAMatrix(d, pca_dim, 0.0, True)  # random rotation: no dimension dominates a code
        pca.train(sample)
        space = pca.apply(sample)
    else:
        pca, space = None, sample
    km = faiss.Kmeans(space.shape[1], nlist, niter=niter, seed=seed)
    km.train(space)
    graph = faiss.IndexHNSWFlat(space.shape[1], 32)
    graph.add(km.centroids)
    quantizer = faiss.IndexPreTransform(pca, graph) if pca is not None else graph
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2, False)
    ivf.train(sample)  # the quantizer is trained already: this fits the codes' per-dimension ranges
    # a serialised round trip gives one object that owns its quantizer, projection and graph
    return faiss.deserialize_index(faiss.serialize_index(ivf))


def _centroid_graph(ivf: faiss.IndexIVF) -> faiss.IndexHNSW | None:
    """The HNSW graph that finds an IVF index's lists, behind its projection if it has one."""
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexPreTransform):
        q = faiss.downcast_index(q.index)
    return q if isinstance(q, faiss.IndexHNSW) else None


class OnDiskIVF:
    """The search structure of an ``ivf_ondisk`` archive; ``search`` returns exact squared-L2 distances
    of the re-ranked candidates and their rows, like a FAISS index."""

    def __init__(self, folder: Path, *, nprobe: int | None = None, k_factor: int = 2):
        # k_factor 2: with 8-bit codes of every dimension the candidates are nearly in order already, and each
        # re-ranked row is a read from the cold vectors file (10M cases, 512 lists probed: recall@10 0.963
        # in a median 17.2 ms at 2, 0.975 in 23.8 ms at 8)
        self.folder = Path(folder)
        for name in LAYOUT:
            if not (self.folder / name).exists():
                raise FileNotFoundError(f"{self.folder / name}: missing")
        # the lists file is found beside the index file, wherever the folder has moved
        with _quiet_faiss():
            self.index = faiss.read_index(str(self.folder / "lists.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        self.vectors = np.load(self.folder / "vectors.npy", mmap_mode="r")
        # re-ranking reads a few scattered rows: without this hint each one faults in a read-ahead window
        # of neighbouring rows, which pushes the lists out of the page cache when the vectors outgrow it
        self.vectors._mmap.madvise(mmap.MADV_RANDOM)
        self.k_factor = k_factor
        # one query at a time is the clinic's case: split its lists over the threads, not the queries
        faiss.extract_index_ivf(self.index).parallel_mode = 1
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self.index).invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):
            # FAISS starts 32 threads per query to touch the lists' pages before the scan; on 2 cores with
            # the lists in the page cache they cost more than they save: 1M cases, 512 of 2048 lists
            # probed, median query 17.8 ms with them, 10.5 ms without
            lists.prefetch_nthread = 0
        self.nprobe = nprobe if nprobe is not None else self.nprobe  # else the one saved with the lists

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nprobe(self) -> int:
        return int(faiss.extract_index_ivf(self.index).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = min(int(value), ivf.nlist)
        graph = _centroid_graph(ivf)
        if graph is not None:
            # the graph's own default (16) finds poor lists when hundreds are probed: 1M synthetic cases,
            # 1024 lists, 256 probed: recall@10 0.976 with 16, 0.997 with 128 (research/ondisk_index/ondisk_index.md)
            graph.hnsw.efSearch = max(128, 2 * ivf.nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, np.float32)
        k = min(k, self.ntotal)
        _, cand = self.index.search(q, min(self.ntotal, k * self.k_factor))
        dist = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = c[c >= 0]
            order = np.argsort(c)  # ascending rows: sequential reads of the memory-mapped vectors
            v = np.asarray(self.vectors[c[order]], np.float32)
            d = ((v - q[i]) ** 2).sum(1)
            best = np.argsort(d, kind="stable")[:k]
            dist[i, : len(best)] = d[best]
            rows[i, : len(best)] = c[order][best]
        return dist, rows

    def warm_lists(self, *, wait: bool = False) -> None:
        """Ask the kernel to read the lists into the page cache, so the first queries of a server do not
        each wait on the disk for the lists they scan (the float16 vectors stay cold: a query reads a few
        of their rows). ``wait``: read them now, sequentially, and return when they are in memory."""
        path = self.folder / "lists.ivfdata"
        with open(path, "rb") as f:
            if not wait:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
                return
            while f.read(1 << 24):
                pass

    def disk_bytes(self) -> int:
        return sum((self.folder / n).stat().st_size for n in LAYOUT)


def build(
    shards: Iterable[np.ndarray],
    *,
    trained: faiss.Index,
    n: int,
    folder: Path | None = None,
    nprobe: int = 64,
    k_factor: int = 2,
    existing: OnDiskIVF | None = None,
) -> OnDiskIVF:
    """Write an on-disk index of ``n`` vectors that ``shards`` yields in row order (one shard in memory at
    a time). With ``existing``, its rows come first and its lists are merged, not recomputed: adding
    cases costs the new cases, plus one sequential copy of the lists."""
    staged = folder is None
    folder = Path(folder) if folder is not None else staging_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _build(shards, trained, n, folder, nprobe, k_factor, existing)
    except BaseException:
        if staged:  # a failed build leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _build(shards, trained, n, folder, nprobe, k_factor, existing) -> OnDiskIVF:
    d = trained.d
    start = existing.ntotal if existing is not None else 0
    header = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(start + n, d))
    offset = header.offset
    del header
    faiss.write_index(trained, str(folder / "trained.faiss"))
    shard_files: list[Path] = []
    row = start
    # plain writes, not a writable memory map: written pages belong to the page cache, not to this process
    with open(folder / "vectors.npy", "r+b") as f_vec:
        f_vec.seek(offset)
        for a in range(0, start, 100_000):
            f_vec.write(np.ascontiguousarray(existing.vectors[a : min(a + 100_000, start)]).tobytes())
        for s, x in enumerate(shards):
            x = np.ascontiguousarray(x, np.float32)
            if x.ndim != 2 or x.shape[1] != d:
                raise ValueError(f"shard {s}: expected (m, {d}) vectors, got {x.shape}")
            if row + len(x) > start + n:
                raise ValueError(f"shards hold more than the {n} vectors announced")
            f_vec.write(x.astype(np.float16).tobytes())
            part = faiss.clone_index(trained)
            part.add_with_ids(x, np.arange(row, row + len(x), dtype=np.int64))
            f = folder / f"shard_{s:05d}.faiss"
            faiss.write_index(part, str(f))
            shard_files.append(f)
            row += len(x)
            del part
    if row != start + n:
        raise ValueError(f"shards held {row - start} vectors, {n} announced")
    lists: list = []
    keep: list = []  # the shard indexes own their lists: keep them alive until the merge is done
    if existing is not None:
        lists.append(faiss.extract_index_ivf(existing.index).invlists)
    for f in shard_files:
        part = faiss.read_index(str(f), faiss.IO_FLAG_MMAP)
        keep.append(part)
        lists.append(faiss.extract_index_ivf(part).invlists)
    out = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(out)
    vec = faiss.InvertedListsPtrVector()
    for inv in lists:
        vec.push_back(inv)
    with _quiet_faiss():
        merged = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / "lists.ivfdata"))
        total = merged.merge_from_multiple(vec.data(), vec.size(), False)
    out.ntotal = ivf.ntotal = total
    ivf.nprobe = min(nprobe, ivf.nlist)  # saved with the lists
    ivf.replace_invlists(merged, True)
    merged.this.disown()
    faiss.write_index(out, str(folder / "lists.faiss"))
    del out, keep, lists
    for f in shard_files:
        f.unlink()
    return OnDiskIVF(folder, nprobe=nprobe, k_factor=k_factor)


def build_from_array(
    emb: np.ndarray,
    *,
    nlist: int | None = None,
    pca_dim: int = 256,
    nprobe: int | None = None,
    k_factor: int = 2,
    shard_size: int = 100_000,
    seed: int = 0,
    folder: Path | None = None,
) -> OnDiskIVF:
    """The on-disk index of vectors that are at hand (a memory map is fine: read a shard at a time)."""
    n, d = emb.shape
    nlist = nlist or default_nlist(n)
    need = ivf_min_size(d, nlist, pca_dim)
    if n < need:
        raise ValueError(f"needs at least {need} vectors to train its lists and projection, got {n}")
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))
    trained = train_quantizer(np.asarray(emb[sample_rows], np.float32), nlist=nlist, pca_dim=pca_dim, seed=seed)
    shards = (emb[a : a + shard_size] for a in range(0, n, shard_size))
    nprobe = nprobe or default_nprobe(nlist)
    return build(shards, trained=trained, n=n, folder=folder, nprobe=nprobe, k_factor=k_factor)


def grow(ix: OnDiskIVF, new: np.ndarray) -> OnDiskIVF:
    """A new on-disk index (in a fresh staging folder) with ``new`` rows appended; ``ix`` is untouched."""
    trained = faiss.read_index(str(ix.folder / "trained.faiss"))
    return build([new], trained=trained, n=len(new), existing=ix, nprobe=ix.nprobe, k_factor=ix.k_factor)


def keep_rows(ix: OnDiskIVF, rows: np.ndarray, shard_size: int = 100_000) -> OnDiskIVF:
    """A new on-disk index of ``rows`` only (in that order), coded with the same trained quantizer."""
    trained = faiss.read_index(str(ix.folder / "trained.faiss"))
    rows = np.asarray(rows, np.int64)
    shards = (np.asarray(ix.vectors[rows[a : a + shard_size]], np.float32) for a in range(0, len(rows), shard_size))
    return build(shards, trained=trained, n=len(rows), nprobe=ix.nprobe, k_factor=ix.k_factor)


def store(ix: OnDiskIVF, dest: Path) -> None:
    """Put the index's files into ``dest``: moved from a build's staging folder (a rename on the same disk;
    the open memory maps follow the files), copied from a folder it was loaded from. ``ix.folder``
    becomes ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    src = ix.folder
    staged = src.name.startswith(STAGING_PREFIX)
    for name in LAYOUT:
        if staged:
            shutil.move(str(src / name), str(dest / name))
        else:
            shutil.copyfile(src / name, dest / name)
    ix.folder = dest
    if staged:
        shutil.rmtree(src, ignore_errors=True)
