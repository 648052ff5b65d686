"""An archive index on disk: the FAISS index plus the row -> case map (ids, diagnoses, groups,
image locations) and, optionally, every case's evidence maps (float16, memory-mapped) so a query
computes its QAM/RAM pairs without re-running the network on its neighbours.

Folder layout (written atomically: a killed ``index`` command leaves the old folder intact)::

    index.faiss  cases.json  embeddings.npy  [maps.npy]  info.json
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from chaiderm._io import atomic_dir
from chaiderm.data.diagnoses import VOCABULARY, canonical, canonical_all
from chaiderm.errors import ArtifactError
from chaiderm.index.faiss_index import build_faiss, set_search_params


@dataclass
class ArchiveIndex:
    index: faiss.Index
    embeddings: np.ndarray
    image_ids: list[str]
    diagnoses: list[str]
    groups: list[str | None]
    paths: list[str]
    maps: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

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
        **index_params: Any,
    ) -> ArchiveIndex:
        n = len(embeddings)
        if not (len(image_ids) == len(diagnoses) == len(groups) == len(paths) == n):
            raise ValueError("archive columns differ in length from the embeddings")
        if maps is not None and len(maps) != n:
            raise ValueError("maps and embeddings differ in length")
        if n == 0:
            raise ArtifactError("cannot index an empty archive")
        index = build_faiss(embeddings, kind, **index_params)
        meta = dict(info or {})
        meta.update(index_type=kind, n=n, dim=int(embeddings.shape[1]), vocabulary=VOCABULARY)
        return cls(
            index,
            np.ascontiguousarray(embeddings, np.float32),
            list(image_ids),
            canonical_all(diagnoses),
            list(groups),
            list(paths),
            maps,
            meta,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def set_search_params(self, **kw: Any) -> None:
        set_search_params(self.index, **kw)

    def positive(self, positive_class: str = "melanoma") -> np.ndarray:
        pos = canonical(positive_class)
        return np.array([d == pos for d in self.diagnoses], dtype=bool)

    def row_of(self, image_id: str) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {iid: i for i, iid in enumerate(self.image_ids)}
        return self._rows.get(image_id)

    def save(self, path: str | Path) -> Path:
        # image locations relative to the index folder: the index works from any working folder, and
        # after the index and its archive move together
        home = Path(path).resolve()
        rel = [os.path.relpath(Path(p).resolve(), home) for p in self.paths]
        with atomic_dir(path) as tmp:
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
            }
            (tmp / "cases.json").write_text(json.dumps(cases))
            (tmp / "info.json").write_text(json.dumps(self.info, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> ArchiveIndex:
        path = Path(path)
        for name in ("index.faiss", "cases.json", "embeddings.npy", "info.json"):
            if not (path / name).exists():
                raise ArtifactError(f"{path}: not an index folder ({name} missing)")
        try:
            index = faiss.read_index(str(path / "index.faiss"))
            cases = json.loads((path / "cases.json").read_text())
            info = json.loads((path / "info.json").read_text())
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
            home = path.resolve()
            paths = [str(p) if Path(p).is_absolute() else str(home / p) for p in paths]
        else:  # indexes from before: paths as given when built (absolute, or relative to that folder)
            paths = [str(Path(p).resolve()) for p in paths]
        # diagnoses as the vocabulary reads them, whatever coding the index was built from
        return cls(index, emb, ids, canonical_all(diagnoses), groups, paths, maps=maps, info=info)
