"""Exact and near-duplicate images within and across sets: the leakage a benchmark must not carry.

Exact duplicates share their file's SHA-256. Near duplicates (a re-encoded, re-scaled or re-cropped copy of
the same photograph) are pairs whose ImageNet EfficientNet-Lite0 embeddings (global average pooling of the
final map, L2-normalised) lie within ``threshold`` squared distance. The default threshold is set on the
ISIC 2017 training split, made copies against distinct images (``research/duplicates/duplicate_threshold.py``).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chaiderm._io import file_digest, write_text
from chaiderm.data.records import ImageTable
from chaiderm.index.faiss_index import exact_search

# On ISIC 2017 training images, 0.9% of images have a distinct nearest image within 0.14 (some are real
# duplicates); it catches 98% of JPEG re-encodes, 63% of 90% re-crops and 2% of half-size round trips, which
# move ImageNet features as far as another lesion does (research/duplicates/duplicate_threshold.json)
DEFAULT_THRESHOLD = 0.14
FEATURE_SIZE = 224


@dataclass(frozen=True)
class Pair:
    a: str  # "<set>:<image id>"
    b: str
    kind: str  # "identical file" or "near duplicate"
    distance: float


def image_features(table: ImageTable, *, skip_bad: bool = False, progress=None) -> tuple[np.ndarray, ImageTable]:
    """L2-normalised ImageNet Lite0 GAP features of every image (the rows that loaded)."""
    from chaiderm.config import ModelConfig
    from chaiderm.data.transforms import prepare
    from chaiderm.models.embedding import build_model
    from chaiderm.models.inference import embed

    model = build_model(ModelConfig(head="none", image_size=FEATURE_SIZE, load_size=256)).eval()
    images, ok, _ = prepare(table.paths, 256, skip_bad=skip_bad, progress=progress)
    feats = embed(model, images, FEATURE_SIZE)[0]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    return feats.astype(np.float32), table.subset(ok)


def find_duplicates(
    sets: list[tuple[str, ImageTable, np.ndarray]], threshold: float = DEFAULT_THRESHOLD, k: int = 5
) -> list[Pair]:
    """Pairs within each set and between every two sets; ``sets`` holds (name, table, features)."""
    pairs: dict[tuple[str, str], Pair] = {}
    for a, b, kind, d in itertools.chain(_identical_files(sets), _near_duplicates(sets, threshold, k)):
        key = (min(a, b), max(a, b))
        # a pair that is both keeps "identical file": the stronger finding
        if key not in pairs or kind == "identical file":
            pairs[key] = Pair(key[0], key[1], kind, d)
    return sorted(pairs.values(), key=lambda p: (p.kind != "identical file", p.distance, p.a, p.b))


def _identical_files(sets: list[tuple[str, ImageTable, np.ndarray]]) -> Iterator[tuple[str, str, str, float]]:
    """Every two images, in any set, whose files have the same SHA-256."""
    digests: dict[str, list[str]] = {}
    for name, table, _ in sets:
        for iid, path in zip(table.image_ids, table.paths, strict=True):
            digests.setdefault(file_digest(path), []).append(f"{name}:{iid}")
    for ids in digests.values():
        for a, b in itertools.combinations(ids, 2):
            yield a, b, "identical file", 0.0


def _near_duplicates(
    sets: list[tuple[str, ImageTable, np.ndarray]], threshold: float, k: int
) -> Iterator[tuple[str, str, str, float]]:
    """Each image's ``k`` nearest images in its own set and every later set, kept when within ``threshold``."""
    for i, (name_a, ta, fa) in enumerate(sets):
        for name_b, tb, fb in sets[i:]:
            same = name_a == name_b
            dist, idx = exact_search(fb, fa, min(k + int(same), len(fb)))
            for r, (drow, irow) in enumerate(zip(dist, idx, strict=True)):
                for d, j in zip(drow, irow, strict=True):
                    if d <= threshold and not (same and j == r):
                        yield f"{name_a}:{ta.image_ids[r]}", f"{name_b}:{tb.image_ids[j]}", "near duplicate", float(d)


def write_report(out: str | Path, pairs: list[Pair], paths: dict[str, str], *, side: int = 128) -> None:
    """``pairs.csv`` and ``index.html`` with both images of every pair as thumbnails (ids escaped)."""
    from PIL import Image

    from chaiderm.data.images import load_image

    out = Path(out)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_a", "image_b", "kind", "distance"])
    for p in pairs:
        w.writerow([p.a, p.b, p.kind, f"{p.distance:.5f}"])
    write_text(out / "pairs.csv", buf.getvalue())
    names: dict[str, str] = {}
    for p in pairs:
        for key in (p.a, p.b):
            if key not in names:
                names[key] = f"{len(names):06d}.png"
                img = Image.fromarray(load_image(paths[key]))
                img.thumbnail((side, side))
                img.save(out / "thumbs" / names[key])
    e = html.escape
    rows = "".join(
        f"<tr><td><img src='thumbs/{names[p.a]}' alt=''><br>{e(p.a)}</td><td><img src='thumbs/{names[p.b]}' alt=''>"
        f"<br>{e(p.b)}</td><td>{e(p.kind)}</td><td>{p.distance:.4f}</td></tr>"
        for p in pairs
    )
    csp = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    write_text(
        out / "index.html",
        f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
        f'content="{csp}"><title>chaiderm duplicates</title><style>td{{padding:4px;font-size:.8rem;'
        f"vertical-align:top}}</style></head><body><h1>{len(pairs)} duplicate pair(s)</h1>"
        f"<table><tr><th>image</th><th>image</th><th>kind</th><th>distance</th></tr>{rows}</table></body></html>",
    )
