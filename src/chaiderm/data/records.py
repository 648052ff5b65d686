"""Dataset readers: the ISIC 2017 challenge layout, a generic folder + CSV, and a groups CSV.

A dataset is an :class:`ImageTable`: parallel lists of ids, image paths, diagnoses, optional
non-expert similarity groups and optional mask paths. Nothing here decodes pixels.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from chaiderm.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ISIC_SPLITS = {
    "train": ("Training",),
    "val": ("Validation",),
    "test": ("Test_v2", "Test"),
}


@dataclass
class ImageTable:
    """Labelled images. ``groups[i]`` is None where image i has no similarity annotation."""

    image_ids: list[str]
    paths: list[str]
    diagnoses: list[str]
    groups: list[str | None] = field(default_factory=list)
    mask_paths: list[str | None] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if not self.groups:
            self.groups = [None] * n
        if not self.mask_paths:
            self.mask_paths = [None] * n
        lens = {len(self.paths), len(self.diagnoses), len(self.groups), len(self.mask_paths)}
        if lens != {n}:
            raise ValueError("ImageTable columns differ in length")

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, idx: np.ndarray | list[int]) -> ImageTable:
        idx = [int(i) for i in idx]
        return ImageTable(
            [self.image_ids[i] for i in idx],
            [self.paths[i] for i in idx],
            [self.diagnoses[i] for i in idx],
            [self.groups[i] for i in idx],
            [self.mask_paths[i] for i in idx],
            self.source,
        )

    def is_positive(self, positive_class: str = "melanoma") -> np.ndarray:
        return np.array([d == positive_class for d in self.diagnoses], dtype=bool)

    @property
    def has_groups(self) -> bool:
        return any(g is not None for g in self.groups)

    @property
    def has_masks(self) -> bool:
        return all(m is not None for m in self.mask_paths) and len(self) > 0

    def fingerprint(self) -> str:
        """A short hash of the labelled rows, saved with every model to trace it to its data."""
        h = hashlib.sha256()
        for row in zip(self.image_ids, self.diagnoses, self.groups, strict=True):
            h.update(repr(row).encode())
        return h.hexdigest()[:16]


def _read_csv(path: Path, required: tuple[str, ...], delimiter: str | None = None) -> list[dict[str, str]]:
    if not path.exists():
        raise DataError(path, "CSV file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text CSV") from None
    if not text.strip():
        raise DataError(path, "CSV file is empty")
    if delimiter is None:
        first = text.splitlines()[0]
        delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {header}")
    rows = []
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        for c in required:
            if not row.get(c):
                raise DataError(path, f"line {lineno}: empty value in column '{c}'")
        rows.append(row)
    if not rows:
        raise DataError(path, "CSV has a header but no rows")
    return rows


def _find_image(folder: Path, image_id: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for cand in (folder / f"{image_id}{ext}", folder / f"{image_id}{ext.upper()}"):
            if cand.exists():
                return cand
    return None


def _find_mask(folder: Path | None, image_id: str) -> str | None:
    if folder is None or not folder.is_dir():
        return None
    for stem in (f"{image_id}_segmentation", f"{image_id}_mask", image_id):
        for ext in (".png", ".jpg", ".gif", ".bmp", ".tif"):
            cand = folder / f"{stem}{ext}"
            if cand.exists():
                return str(cand)
    return None


def _resolve_images(rows_ids: list[str], folder: Path, csv_path: Path) -> list[str]:
    paths, missing = [], []
    for iid in rows_ids:
        p = _find_image(folder, iid)
        if p is None:
            missing.append(iid)
        else:
            paths.append(str(p))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(csv_path, f"{len(missing)} id(s) have no image in {folder}: {shown}")
    return paths


def _check_unique(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    dup = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if dup:
        raise DataError(path, f"duplicate image id(s): {dup[:5]}")


def is_isic2017(root: str | Path) -> bool:
    root = Path(root)
    return any(root.glob("ISIC-2017_*_Part3_GroundTruth.csv"))


def read_isic2017(root: str | Path, split: str = "train") -> ImageTable:
    """Read one split (``train``, ``val`` or ``test``) of the ISIC 2017 challenge layout."""
    root = Path(root)
    if split not in ISIC_SPLITS:
        raise DataError(root, f"unknown ISIC 2017 split '{split}'; use one of {sorted(ISIC_SPLITS)}")
    for name in ISIC_SPLITS[split]:
        gt = root / f"ISIC-2017_{name}_Part3_GroundTruth.csv"
        if gt.exists():
            break
    else:
        raise DataError(root, f"no ISIC-2017_{ISIC_SPLITS[split][0]}_Part3_GroundTruth.csv for split '{split}'")
    img_dir = root / f"ISIC-2017_{name}_Data"
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder not found")
    rows = _read_csv(gt, ("image_id", "melanoma", "seborrheic_keratosis"))
    ids = [r["image_id"] for r in rows]
    _check_unique(ids, gt)
    diagnoses = []
    for lineno, r in enumerate(rows, start=2):
        try:
            mel, sk = float(r["melanoma"]), float(r["seborrheic_keratosis"])
        except ValueError:
            raise DataError(gt, f"line {lineno}: melanoma/seborrheic_keratosis must be numbers") from None
        diagnoses.append("melanoma" if mel >= 0.5 else "seborrheic_keratosis" if sk >= 0.5 else "nevus")
    paths = _resolve_images(ids, img_dir, gt)
    mask_dir = root / f"ISIC-2017_{name}_Part1_GroundTruth"
    masks = [_find_mask(mask_dir, i) for i in ids]
    return ImageTable(ids, paths, diagnoses, [None] * len(ids), masks, source=f"isic2017:{root}:{split}")


def read_folder(root: str | Path, labels: str | Path | None = None) -> ImageTable:
    """Read the generic layout: ``images/`` (or the folder itself), ``labels.csv`` with
    ``image_id,diagnosis[,group]``, and an optional ``masks/`` folder."""
    root = Path(root)
    csv_path = Path(labels) if labels else root / "labels.csv"
    if not csv_path.exists():
        raise DataError(root, "no labels.csv (image_id,diagnosis[,group]) and not an ISIC 2017 folder")
    rows = _read_csv(csv_path, ("image_id", "diagnosis"))
    ids = [r["image_id"] for r in rows]
    _check_unique(ids, csv_path)
    img_dir = root / "images" if (root / "images").is_dir() else root
    paths = _resolve_images(ids, img_dir, csv_path)
    groups = [r.get("group") or None for r in rows]
    masks = [_find_mask(root / "masks", i) for i in ids]
    return ImageTable(ids, paths, [r["diagnosis"] for r in rows], groups, masks, source=f"folder:{root}")


def read_groups(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """Read a groups CSV ``image_id,group[,disease]`` into ``{image_id: (group, disease)}``."""
    path = Path(path)
    rows = _read_csv(path, ("image_id", "group"))
    out: dict[str, tuple[str, str | None]] = {}
    for r in rows:
        if r["image_id"] in out:
            raise DataError(path, f"image id '{r['image_id']}' appears twice")
        out[r["image_id"]] = (r["group"], r.get("disease") or None)
    return out


def attach_groups(table: ImageTable, groups_csv: str | Path, *, strict: bool = False) -> ImageTable:
    """Join a groups CSV onto a table. Images absent from the CSV keep no group.

    A ``disease`` column, when present, must agree with the table's diagnosis.
    ``strict`` also refuses ids in the CSV that the table lacks.
    """
    groups = read_groups(groups_csv)
    index = {iid: i for i, iid in enumerate(table.image_ids)}
    unknown = [iid for iid in groups if iid not in index]
    if strict and unknown:
        raise DataError(groups_csv, f"{len(unknown)} id(s) not in the dataset, e.g. {unknown[:5]}")
    new_groups = list(table.groups)
    for iid, (g, disease) in groups.items():
        i = index.get(iid)
        if i is None:
            continue
        if disease is not None and disease != table.diagnoses[i]:
            raise DataError(
                groups_csv, f"image '{iid}': disease '{disease}' disagrees with its label '{table.diagnoses[i]}'"
            )
        new_groups[i] = g
    return replace(table, groups=new_groups)


def check_nested(table: ImageTable, where: str | Path | None = None) -> None:
    """Hierarchical logic needs every group under one disease; name the groups that are not."""
    parent: dict[str, set[str]] = {}
    for g, d in zip(table.groups, table.diagnoses, strict=True):
        if g is not None:
            parent.setdefault(g, set()).add(d)
    bad = {g: sorted(ds) for g, ds in parent.items() if len(ds) > 1}
    if bad:
        shown = "; ".join(f"'{g}' under {ds}" for g, ds in list(bad.items())[:5])
        raise DataError(
            where or table.source,
            f"{len(bad)} group(s) sit under more than one disease ({shown}); hierarchical logic needs "
            "groups nested in diseases (use joint logic for disease-blind groups)",
        )


def load_table(path: str | Path, split: str | None = None, groups: str | Path | None = None) -> ImageTable:
    """Auto-detect the layout of ``path`` (ISIC 2017 or generic) and read it."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "data folder not found")
    if is_isic2017(path):
        table = read_isic2017(path, split or "train")
    else:
        if split not in (None, "all"):
            # generic layout with a split column would be a natural extension; keep explicit for now
            sub = path / split
            if sub.is_dir():
                return load_table(sub, None, groups)
            raise DataError(path, f"split '{split}' asked for, but this is not an ISIC 2017 folder")
        table = read_folder(path)
    if groups is not None:
        table = attach_groups(table, groups)
    return table
