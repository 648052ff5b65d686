"""Non-expert similarity groups from ENHANCE (Raumanns et al.): crowd workers' and students' ratings
of asymmetry, border and colour of ISIC 2017 training lesions.

Each source file rates on its own scale, so ratings are first averaged over a file's annotators, then
standardised within that (file, feature) (z-scores), then averaged over sources per image and feature.
Images are clustered on these three numbers: within each disease for hierarchical groups, ignoring
disease for the disease-blind (joint) groups.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chaiderm.errors import DataError

FEATURES = ("asymmetry", "border", "color")
# column-name stems (English and the Dutch of the student files) -> feature; unknown stems are ignored
STEMS = {
    "asymmetry": "asymmetry", "asymmetrie": "asymmetry", "symmetrie": "asymmetry", "symetrie": "asymmetry",
    "border": "border", "border1": "border", "border2": "border", "grens": "border", "rand": "border",
    "begrenzing": "border",
    "color": "color", "colour": "color", "kleur": "color", "aantalkleuren": "color",
}  # fmt: skip
PAPER_GROUPS = {"melanoma": 20, "seborrheic_keratosis": 12, "nevus": 15}
# half the paper's numbers: won 5-fold cross-validation on the training split in all five folds, lost on a
# second and a third split; over the fifteen folds it fell short of the rule fixed beforehand, so the
# paper's numbers are the default (research/cross_validation/cross_validation.md)
HALF_GROUPS = {"melanoma": 10, "seborrheic_keratosis": 6, "nevus": 8}
PAPER_BLIND_GROUPS = 37


@dataclass
class Ratings:
    """Standardised non-expert ratings: ``values[image_id][feature]`` = mean z-score over sources."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # source name -> images rated

    def matrix(self, ids: list[str], features: tuple[str, ...] = FEATURES) -> np.ndarray:
        """``(n, F)`` features; a feature no source rated for an image is imputed as 0 (the mean)."""
        return np.array([[self.values.get(i, {}).get(f, 0.0) for f in features] for i in ids], dtype=np.float64)


def _stem(column: str) -> str | None:
    m = re.match(r"[A-Za-z/]+", column.strip())
    return STEMS.get(m.group(0).lower()) if m else None


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    delim = ";" if first.count(";") > first.count(",") else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delim))
    if not rows or not rows[0] or rows[0][0].strip().upper() != "ID":
        raise DataError(path, "expected a header starting with 'ID'")
    return [h.strip() for h in rows[0]], rows[1:]


def _file_scores(path: Path, header: list[str], rows: list[list[str]], feature_of) -> dict[str, dict[str, float]]:
    """Per image and feature, the mean over this file's annotator columns (non-numbers skipped)."""
    cols: dict[str, list[int]] = {}
    for j, h in enumerate(header[1:], start=1):
        f = feature_of(h)
        if f is not None:
            cols.setdefault(f, []).append(j)
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if not r or not r[0].strip():
            continue
        iid = r[0].strip()
        for f, js in cols.items():
            vals = []
            for j in js:
                try:
                    vals.append(float(r[j].replace(",", ".")))
                except (IndexError, ValueError):
                    continue
            if vals:
                out.setdefault(iid, {})[f] = float(np.mean(vals))
    return out


def _standardise_into(acc: dict[str, dict[str, list[float]]], scores: dict[str, dict[str, float]]) -> None:
    for f in FEATURES:
        ids = [i for i in scores if f in scores[i]]
        if len(ids) < 2:
            continue
        v = np.array([scores[i][f] for i in ids])
        sd = v.std()
        z = (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
        for i, zi in zip(ids, z, strict=True):
            acc.setdefault(i, {}).setdefault(f, []).append(float(zi))


def read_enhance(root: str | Path) -> Ratings:
    """Read ``crowd/{asymmetry,border,color}.csv`` and ``student/<year>/group*.csv`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "ENHANCE folder not found")
    acc: dict[str, dict[str, list[float]]] = {}
    sources: dict[str, int] = {}
    for f in FEATURES:
        path = root / "crowd" / f"{f}.csv"
        if path.exists():
            header, rows = _read_rows(path)
            scores = _file_scores(path, header, rows, lambda h, f=f: f if h.lower() != "id" else None)
            _standardise_into(acc, scores)
            sources[f"crowd/{f}"] = len(scores)
    for path in sorted((root / "student").glob("*/group*.csv")):
        header, rows = _read_rows(path)
        scores = _file_scores(path, header, rows, _stem)
        _standardise_into(acc, scores)
        sources[str(path.relative_to(root))] = len(scores)
    if not acc:
        raise DataError(root, "no ENHANCE ratings found (expected crowd/*.csv or student/<year>/group*.csv)")
    values = {i: {f: float(np.mean(z)) for f, z in feats.items()} for i, feats in acc.items()}
    return Ratings(values, sources)


def cluster(x: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    n_groups = max(1, min(n_groups, len(x)))
    return KMeans(n_clusters=n_groups, n_init=10, random_state=seed).fit_predict(x)


def enhance_groups(
    ratings: Ratings,
    image_ids: list[str],
    diagnoses: list[str],
    *,
    n_finetune: int = 1000,
    groups_per_disease: dict[str, int] | None = None,
    n_blind: int = PAPER_BLIND_GROUPS,
    seed: int = 0,
    features: tuple[str, ...] = FEATURES,
) -> dict[str, list[tuple[str, str, str]]]:
    """Group the rated images of a dataset; split them into fine-tuning and held-out (REL) images.

    Returns ``{"finetune": rows, "heldout": rows, "blind_finetune": rows, "blind_heldout": rows}`` with
    rows ``(image_id, group, disease)``. The split is drawn once, stratified by disease, and both
    groupings use the same split, so held-out images never feed any group-based training.
    """
    per = groups_per_disease or PAPER_GROUPS
    rated = [(i, d) for i, d in zip(image_ids, diagnoses, strict=True) if i in ratings.values]
    if not rated:
        raise DataError(None, "no image of the dataset has ENHANCE ratings")
    rng = np.random.default_rng(seed)
    ids = np.array([i for i, _ in rated])
    dis = np.array([d for _, d in rated])
    finetune = np.zeros(len(ids), bool)
    n_finetune = min(n_finetune, len(ids))
    diseases = np.unique(dis)
    sizes = np.array([(dis == d).sum() for d in diseases])
    share = sizes * n_finetune / len(ids)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take))[: n_finetune - take.sum()]] += 1  # largest remainders: exactly n
    for d, t in zip(diseases, take, strict=True):
        finetune[rng.choice(np.flatnonzero(dis == d), t, replace=False)] = True
    x = ratings.matrix(list(ids), features)
    hier = np.empty(len(ids), dtype=object)
    for d in np.unique(dis):
        where = np.flatnonzero(dis == d)
        labels = cluster(x[where], per.get(str(d), 10), seed)
        hier[where] = [f"{d}/g{int(k):02d}" for k in labels]
    blind = np.array([f"blind/g{int(k):02d}" for k in cluster(x, n_blind, seed)], dtype=object)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for name, groups in (("", hier), ("blind_", blind)):
        for part, mask in (("finetune", finetune), ("heldout", ~finetune)):
            out[name + part] = [
                (str(i), str(g), str(d)) for i, g, d in zip(ids[mask], groups[mask], dis[mask], strict=True)
            ]
    return out


GROUP_FILES = {
    "finetune": "groups.csv",
    "heldout": "groups_heldout.csv",
    "blind_finetune": "groups_blind.csv",
    "blind_heldout": "groups_blind_heldout.csv",
}


def write_group_files(parts: dict[str, list[tuple[str, str, str]]], out: str | Path, info: dict | None = None) -> None:
    """Write the four CSVs (hierarchical ones with a disease column, disease-blind ones without), then
    ``groups_info.json`` (``info`` plus the row counts): written last, it marks a complete set."""
    from chaiderm._io import write_json, write_text

    out = Path(out)
    for key, name in GROUP_FILES.items():
        blind = key.startswith("blind")
        header = "image_id,group" if blind else "image_id,group,disease"
        lines = [f"{i},{g}" if blind else f"{i},{g},{d}" for i, g, d in parts[key]]
        write_text(out / name, "\n".join([header, *lines]) + "\n")
    write_json(out / "groups_info.json", {**(info or {}), "counts": {k: len(v) for k, v in parts.items()}})
