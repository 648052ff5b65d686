"""An archive index on disk: the FAISS index plus the row -> case map (ids, diagnoses, groups,
image locations) and, optionally, every case's evidence maps (float16, memory-mapped) so a query
computes its QAM/RAM pairs without re-running the network on its neighbours.

Folder layout (written atomically: a killed ``index`` command leaves the old folder intact)::

    index.faiss  cases.json  embeddings.npy  [maps.npy]  info.json  [uncertainty.json  image_stats.npy]

The ``ivf_ondisk`` kind (archives larger than memory, ``index.ondisk``) keeps its lists and its float16
vectors on disk instead of ``index.faiss`` and ``embeddings.npy``::

    trained.faiss  lists.faiss  lists.ivfdata  vectors.npy  cases.json  [maps.npy]  info.json

Beside the folder: ``<index>-cases/`` holds the images of cases added through the server (the index folder
itself is replaced whole on every change), and ``<index>.lock`` is the writers' lock (``index.lock``).

``uncertainty.json`` (``index.uncertainty``: novelty reference, calibrator, conformal scores) and
``image_stats.npy`` (per case, ``data.image_stats``) are absent from indexes built before them, which load
and answer with "novelty unknown".
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from chaiderm._io import atomic_dir
from chaiderm.data.diagnoses import VOCABULARY, canonical_all
from chaiderm.errors import ArtifactError
from chaiderm.index import ondisk
from chaiderm.index.faiss_index import build_faiss, set_search_params


def _ondisk_params(params: dict[str, Any], search_only: bool = False) -> dict[str, Any]:
    """The settings ``ivf_ondisk`` takes, from the in-memory kinds' keyword arguments."""
    names = ("nprobe", "k_factor") if search_only else ("nlist", "pca_dim", "nprobe", "k_factor", "seed")
    return {k: v for k, v in params.items() if k in names and v is not None}


def _relative_to(paths: list[str], home: Path) -> list[str]:
    """Each path relative to ``home``, computed once per folder (an archive has few, and 100,000 files)."""
    folders: dict[str, str] = {}
    out = []
    for p in paths:
        folder, name = os.path.split(p)
        if folder not in folders:
            folders[folder] = os.path.relpath(Path(folder or ".").resolve(), home)
        out.append(os.path.join(folders[folder], name))
    return out


def cases_dir(index_dir: str | Path) -> Path:
    """Where cases added through the server keep their images: beside the index folder."""
    index_dir = Path(index_dir)
    return index_dir.parent / f"{index_dir.name}-cases"


def discard_added_images(index_dir: str | Path, paths: list[str]) -> None:
    """Delete the images of removed cases that the server had stored in :func:`cases_dir` (a removed case
    leaves nothing behind); images elsewhere belong to the operator's own data and are never touched."""
    home = cases_dir(index_dir).resolve()
    for p in paths:
        path = Path(p).resolve()
        if path.parent == home:
            path.unlink(missing_ok=True)


@dataclass
class ArchiveIndex:
    index: faiss.Index | ondisk.OnDiskIVF
    embeddings: np.ndarray
    image_ids: list[str]
    diagnoses: list[str]
    groups: list[str | None]
    paths: list[str]
    maps: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # sha256 prefix of each case's image file ("" where unknown: indexes from before), to refuse the same
    # image added again under another id
    content: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)  # per case (data.records.METADATA_ALIASES)
    image_stats: np.ndarray | None = None  # (n, F) per case (data.image_stats), for novelty; None: unknown
    uncertainty: Any = None  # index.uncertainty.Uncertainty, or None (an index from before it)

    def __post_init__(self) -> None:
        if not self.content:
            self.content = [""] * len(self.image_ids)
        if not self.metadata:
            self.metadata = [{} for _ in self.image_ids]

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        *,
        image_ids: list[str],
        diagnoses: list[str],
        groups: list[str | None],
        paths: list[str],
        maps: np.ndarray | None = None,
        kind: str = "flat",
        info: dict[str, Any] | None = None,
        content: list[str] | None = None,
        metadata: list[dict[str, str]] | None = None,
        image_stats: np.ndarray | None = None,
        **index_params: Any,
    ) -> ArchiveIndex:
        n = len(embeddings)
        if not (len(image_ids) == len(diagnoses) == len(groups) == len(paths) == n):
            raise ValueError("archive columns differ in length from the embeddings")
        if maps is not None and len(maps) != n:
            raise ValueError("maps and embeddings differ in length")
        if n == 0:
            raise ArtifactError("cannot index an empty archive")
        meta = dict(info or {})
        meta.update(index_type=kind, n=n, dim=int(embeddings.shape[1]), vocabulary=VOCABULARY)
        if kind == ondisk.KIND:
            try:
                index = ondisk.build_from_array(embeddings, **_ondisk_params(index_params))
            except ValueError as e:
                raise ArtifactError(f"--kind {kind}: {e}; use --kind flat (exact, and fast at this size)") from None
            vectors = index.vectors
            meta.update(
                maps_storage="stored" if maps is not None else "recomputed",
                vectors="float16 on disk",
                search={"k_factor": index.k_factor},
            )
        else:
            index = build_faiss(embeddings, kind, **index_params)
            vectors = np.ascontiguousarray(embeddings, np.float32)
        return cls(
            index,
            vectors,
            list(image_ids),
            canonical_all(diagnoses),
            list(groups),
            list(paths),
            maps,
            meta,
            list(content) if content is not None else [],
            list(metadata) if metadata is not None else [],
            _stats(image_stats, n),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def search_among(self, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest among ``rows`` only (not a search followed by a cut, which could return fewer
        than k or miss the true neighbours). The exact index searches through a FAISS id selector; the
        approximate kinds compute the distances to those rows directly."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        k = min(k, len(rows))
        if isinstance(self.index, faiss.IndexFlat):
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(rows))
            return self.index.search(q, k, params=params)
        sub = np.asarray(self.embeddings[rows], np.float64)  # float64: no cancellation near distance 0
        q64 = q.astype(np.float64)
        d = (q64 * q64).sum(1)[:, None] - 2 * q64 @ sub.T + (sub * sub).sum(1)[None]
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, 1).clip(min=0).astype(np.float32), rows[order]

    def warm_cache(self) -> None:
        """For a server: an on-disk index's lists start loading into the page cache in the background, so
        its first queries do not each wait on the disk. In-memory kinds have nothing to load."""
        if isinstance(self.index, ondisk.OnDiskIVF):
            threading.Thread(target=self.index.warm_lists, daemon=True).start()

    def set_search_params(self, **kw: Any) -> None:
        if isinstance(self.index, ondisk.OnDiskIVF):
            if kw.get("nprobe") is not None:
                self.index.nprobe = kw["nprobe"]
            if kw.get("k_factor") is not None:
                self.index.k_factor = kw["k_factor"]
            return
        set_search_params(self.index, **kw)

    def row_of(self, image_id: str) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {iid: i for i, iid in enumerate(self.image_ids)}
        return self._rows.get(image_id)

    def add(
        self,
        embeddings: np.ndarray,
        *,
        image_ids: list[str],
        diagnoses: list[str],
        groups: list[str | None],
        paths: list[str],
        maps: np.ndarray | None = None,
        content: list[str] | None = None,
        metadata: list[dict[str, str]] | None = None,
        image_stats: np.ndarray | None = None,
    ) -> ArchiveIndex:
        """A new index with these cases appended: existing rows keep their place, and the search
        structure grows without retraining (an IVF index keeps its lists and projection)."""
        n = len(embeddings)
        if not (len(image_ids) == len(diagnoses) == len(groups) == len(paths) == n):
            raise ValueError("new cases' columns differ in length from their embeddings")
        clash = sorted(set(image_ids) & set(self.image_ids))
        if clash or len(set(image_ids)) != n:
            raise ArtifactError(f"image ids already in the archive (or repeated): {(clash or image_ids)[:5]}")
        if (self.maps is None) != (maps is None):
            raise ArtifactError("this index stores evidence maps for every case or for none: give them for all")
        emb = np.ascontiguousarray(embeddings, np.float32)
        if isinstance(self.index, ondisk.OnDiskIVF):  # new lists in a staging folder; this index untouched
            index = ondisk.grow(self.index, emb)
            all_emb = index.vectors
        else:
            index = faiss.clone_index(self.index)
            index.add(emb)
            all_emb = np.concatenate([self.embeddings, emb])
        all_maps = None
        if maps is not None:
            all_maps = np.concatenate([np.asarray(self.maps, np.float16), np.asarray(maps, np.float16)])
        info = dict(self.info, n=len(self) + n)
        stats = None
        if self.image_stats is not None and image_stats is not None:
            stats = np.concatenate([self.image_stats, _stats(image_stats, n)])
        new = ArchiveIndex(
            index,
            all_emb,
            self.image_ids + list(image_ids),
            self.diagnoses + canonical_all(diagnoses),
            self.groups + list(groups),
            self.paths + list(paths),
            all_maps,
            info,
            self.content + (list(content) if content is not None else [""] * n),
            self.metadata + (list(metadata) if metadata is not None else [{} for _ in range(n)]),
            stats,
        )
        return new._with_current_uncertainty(self.uncertainty)

    def remove(self, image_ids: list[str]) -> ArchiveIndex:
        """A new index without these cases; the others keep their order. The search structure is
        refilled from the stored embeddings (an IVF index keeps its trained lists and projection)."""
        gone = set(image_ids)
        unknown = sorted(gone - set(self.image_ids))
        if unknown:
            raise ArtifactError(f"not in the archive: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
        keep = np.array([i for i, iid in enumerate(self.image_ids) if iid not in gone], dtype=np.int64)
        if len(keep) == 0:
            raise ArtifactError("removing every case would leave an empty archive")
        if isinstance(self.index, ondisk.OnDiskIVF):
            index = ondisk.keep_rows(self.index, keep)
            emb = index.vectors
        elif isinstance(self.index, faiss.IndexHNSW):  # a graph cannot drop nodes: build it again
            emb = self.embeddings[keep]
            index = build_faiss(emb, "hnsw")
        else:
            emb = self.embeddings[keep]
            index = faiss.clone_index(self.index)
            index.reset()
            index.add(emb)
        pick = lambda col: [col[i] for i in keep]  # noqa: E731
        new = ArchiveIndex(
            index,
            np.ascontiguousarray(emb),
            pick(self.image_ids),
            pick(self.diagnoses),
            pick(self.groups),
            pick(self.paths),
            None if self.maps is None else np.asarray(self.maps[keep], np.float16),
            dict(self.info, n=len(keep)),
            pick(self.content),
            pick(self.metadata),
            None if self.image_stats is None else self.image_stats[keep],
        )
        return new._with_current_uncertainty(self.uncertainty)

    def _with_current_uncertainty(self, old: Any) -> ArchiveIndex:
        """This index with ``old``'s novelty reference and calibrator computed again over its own cases."""
        if old is not None:
            from chaiderm.index.uncertainty import rebuilt

            self.uncertainty = rebuilt(self, old)
        return self

    def save(self, path: str | Path) -> Path:
        # image locations relative to the index folder: the index works from any working folder, and
        # after the index and its archive move together
        rel = _relative_to(self.paths, Path(path).resolve())
        with atomic_dir(path) as tmp:
            if isinstance(self.index, ondisk.OnDiskIVF):
                ondisk.store(self.index, tmp)
            else:
                faiss.write_index(self.index, str(tmp / "index.faiss"))
                np.save(tmp / "embeddings.npy", self.embeddings)
            if self.maps is not None:
                np.save(tmp / "maps.npy", np.asarray(self.maps, dtype=np.float16))
            cases = {
                "image_ids": self.image_ids,
                "diagnoses": self.diagnoses,
                "groups": self.groups,
                "paths": rel,
                "paths_relative_to": "index",
                "content": self.content,
                "metadata": self.metadata,
            }
            (tmp / "cases.json").write_text(json.dumps(cases))
            (tmp / "info.json").write_text(json.dumps(self.info, indent=2))
            if self.image_stats is not None:
                np.save(tmp / "image_stats.npy", np.asarray(self.image_stats, np.float32))
            if self.uncertainty is not None:
                (tmp / "uncertainty.json").write_text(json.dumps(self.uncertainty.to_dict()))
        if isinstance(self.index, ondisk.OnDiskIVF):
            self.index.folder = Path(path).absolute()  # where its files now are (their maps followed them)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> ArchiveIndex:
        path = Path(path)
        for name in ("cases.json", "info.json"):
            if not (path / name).exists():
                raise ArtifactError(f"{path}: not an index folder ({name} missing)")
        try:
            info = json.loads((path / "info.json").read_text())
            on_disk = info.get("index_type") == ondisk.KIND
            for name in ondisk.LAYOUT if on_disk else ("index.faiss", "embeddings.npy"):
                if not (path / name).exists():
                    raise ArtifactError(f"{path}: not an index folder ({name} missing)")
            cases = json.loads((path / "cases.json").read_text())
            if on_disk:
                index = ondisk.OnDiskIVF(path, **_ondisk_params(info.get("search", {}), search_only=True))
                emb = index.vectors
            else:
                index = faiss.read_index(str(path / "index.faiss"))
                emb = np.load(path / "embeddings.npy")
            maps = np.load(path / "maps.npy", mmap_mode="r" if mmap else None) if (path / "maps.npy").exists() else None
        except (RuntimeError, ValueError, OSError) as e:
            raise ArtifactError(f"{path}: index folder is corrupt ({e})") from None
        n = index.ntotal
        cols = [cases.get(k) for k in ("image_ids", "diagnoses", "groups", "paths")]
        if any(c is None or len(c) != n for c in cols) or len(emb) != n or (maps is not None and len(maps) != n):
            raise ArtifactError(f"{path}: index files disagree on the number of cases")
        ids, diagnoses, groups, paths = cols
        if cases.get("paths_relative_to") == "index":
            home = str(path.resolve())
            paths = [os.path.normpath(os.path.join(home, p)) for p in paths]  # an absolute p stays as it is
        else:  # indexes from before: paths as given when built (absolute, or relative to that folder)
            paths = [os.path.abspath(p) for p in paths]
        # diagnoses as the vocabulary reads them, whatever coding the index was built from
        content = cases.get("content") or [""] * n
        metadata = cases.get("metadata") or [{} for _ in range(n)]
        stats, uncertainty = _load_uncertainty(path, n)
        return cls(
            index, emb, ids, canonical_all(diagnoses), groups, paths, maps, info, content, metadata, stats, uncertainty
        )


def _stats(stats: np.ndarray | None, n: int) -> np.ndarray | None:
    if stats is None:
        return None
    arr = np.asarray(stats, np.float32)
    if arr.ndim != 2 or len(arr) != n:
        raise ValueError(f"image statistics of shape {arr.shape} for {n} cases")
    return arr


def _load_uncertainty(path: Path, n: int) -> tuple[np.ndarray | None, Any]:
    """The index's image statistics and uncertainty, or None for either where absent, of another version
    or not matching the cases: such an index answers with "novelty unknown" rather than refusing to load."""
    from chaiderm.index.uncertainty import FILE, STATS_FILE, Uncertainty

    stats = None
    if (path / STATS_FILE).exists():
        try:
            stats = np.load(path / STATS_FILE)
        except (OSError, ValueError):
            stats = None
        if stats is not None and (stats.ndim != 2 or len(stats) != n):
            stats = None
    uncertainty = None
    if (path / FILE).exists():
        try:
            uncertainty = Uncertainty.from_dict(json.loads((path / FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            uncertainty = None
    if uncertainty is not None and uncertainty.method == "mean+image" and stats is None:
        uncertainty = None
    return stats, uncertainty
