"""Refining a search as a clinician does: by region (the embedding pooled over the map cells under one or
more boxes drawn on the query) and by example (Rocchio: the query moved toward the neighbours marked
similar and away from those marked not similar). Pure functions over arrays; the Predictor applies them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chaiderm.errors import DataError

MAX_REGIONS = 8
MAX_EXAMPLES = 40
# Rocchio weights, chosen on the ISIC 2017 training split (bench/refine.py, `tune`), never on validation
ROCCHIO_SIMILAR = 1.0
ROCCHIO_NOT_SIMILAR = 0.5


@dataclass(frozen=True)
class Region:
    """A box in pixels of the query image as served (the square the network sees before its centre crop)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"


def _bad(message: str) -> DataError:
    return DataError(None, message, code="bad_region")


def parse_regions(text: str | None, side: int | None = None) -> list[Region]:
    """``"x0,y0,x1,y1[;x0,y0,x1,y1...]"`` -> boxes, each checked against a ``side`` x ``side`` image."""
    if text is None or not text.strip():
        return []
    boxes = [b for b in text.replace(" ", "").split(";") if b]
    if not boxes:  # only separators: a typo, not a request for the whole image
        raise _bad(f"region '{text.strip()}': give x0,y0,x1,y1 as four numbers (pixels)")
    if len(boxes) > MAX_REGIONS:
        raise _bad(f"region: at most {MAX_REGIONS} boxes, not {len(boxes)}")
    out = []
    for b in boxes:
        parts = b.split(",")
        try:
            # inf and nan parse as floats; int() then raises OverflowError or ValueError
            x0, y0, x1, y1 = (int(round(float(p))) for p in parts)
        except (ValueError, OverflowError):
            raise _bad(f"region '{b}': give x0,y0,x1,y1 as four numbers (pixels)") from None
        if len(parts) != 4:
            raise _bad(f"region '{b}': give x0,y0,x1,y1 as four numbers (pixels)")
        if not (x0 < x1 and y0 < y1):
            raise _bad(f"region '{b}': x0 < x1 and y0 < y1 are needed")
        if side is not None and (x0 < 0 or y0 < 0 or x1 > side or y1 > side):
            raise _bad(f"region '{b}' lies outside the {side}x{side} query image")
        out.append(Region(x0, y0, x1, y1))
    return out


def from_original(regions: list[Region], shape: tuple[int, int], load_size: int) -> list[Region]:
    """Boxes in pixels of an original image of ``shape`` (h, w) -> pixels of its square (``resize_square``:
    shorter side to ``load_size``, centre crop)."""
    h, w = shape
    s = load_size / min(h, w)
    nh, nw = max(load_size, round(h * s)), max(load_size, round(w * s))
    top, left = (nh - load_size) // 2, (nw - load_size) // 2
    out = []
    for r in regions:
        if r.x0 < 0 or r.y0 < 0 or r.x1 > w or r.y1 > h:
            raise _bad(f"region {r} lies outside the {w}x{h} image")
        box = Region(
            max(0, round(r.x0 * s) - left),
            max(0, round(r.y0 * s) - top),
            min(load_size, round(r.x1 * s) - left),
            min(load_size, round(r.y1 * s) - top),
        )
        if box.x0 >= box.x1 or box.y0 >= box.y1:
            raise _bad(f"region {r} falls outside the square the network sees (the image is centre-cropped)")
        out.append(box)
    return out


def region_cells(regions: list[Region], load_size: int, image_size: int, map_shape: tuple[int, int]) -> np.ndarray:
    """The map cells whose centres lie inside any box: ``(h, w)`` bool. The network sees the centre
    ``image_size`` crop of the ``load_size`` square, and a cell covers ``image_size / w`` of it."""
    h, w = map_shape
    off = (load_size - image_size) / 2
    cy = off + (np.arange(h) + 0.5) * image_size / h
    cx = off + (np.arange(w) + 0.5) * image_size / w
    cells = np.zeros((h, w), bool)
    for r in regions:
        cells |= ((cy >= r.y0) & (cy < r.y1))[:, None] & ((cx >= r.x0) & (cx < r.x1))[None, :]
    if regions and not cells.any():
        cell = image_size / w
        raise _bad(
            f"region {';'.join(map(str, regions))} covers no map cell: each cell is {cell:.0f} px of the "
            f"{load_size} px query image; draw a box at least that large over the part that matters"
        )
    return cells


def rocchio(
    query: np.ndarray,
    similar: np.ndarray,
    not_similar: np.ndarray,
    beta: float = ROCCHIO_SIMILAR,
    gamma: float = ROCCHIO_NOT_SIMILAR,
) -> np.ndarray:
    """q' = q + beta (mean of similar - q) - gamma (mean of not similar - q): a move toward the similar
    cases and away from the others, in units of their distance from the query (scale-free, so the same
    weights suit any embedding)."""
    q = np.asarray(query, np.float32)
    out = q.copy()
    if len(similar):
        out += beta * (np.asarray(similar, np.float32).mean(axis=0) - q)
    if len(not_similar):
        out -= gamma * (np.asarray(not_similar, np.float32).mean(axis=0) - q)
    return out
