"""Refining a search as a clinician does: by region (the embedding pooled over the map cells under one or
more boxes drawn on the query) and by example (Rocchio: the query moved toward the neighbours marked
similar and away from those marked not similar). Pure functions over arrays; the Predictor applies them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chaiderm.errors import DataError

MAX_REGIONS = 8
MAX_EXAMPLES = 40
# Rocchio weights, chosen on the ISIC 2017 training split (research/refine/refine.py, `tune`), never on validation,
# among weights that leave the query its own weight (beta <= MAX_SIMILAR)
ROCCHIO_SIMILAR = 0.5
ROCCHIO_NOT_SIMILAR = 0.5
# The query keeps at least the weight of the cases marked similar (1 - beta >= beta): a clinician's mark
# steers the search, it does not replace the query (with beta = 1 one mark made the query that case).
MAX_SIMILAR = 0.5
# and moves at most this share of its distance to the nearest marked case, so that no mark, nor the push
# away from the others, can put the query on a marked case and let that case's neighbours answer for it
MAX_MOVE = 0.5


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
    """q' = (1 - beta) q + beta mean(similar) - gamma (mean(not similar) - q): a move toward the similar
    cases and away from the others, in units of their distance from the query (scale-free, so the same
    weights suit any embedding). ``beta`` <= ``MAX_SIMILAR`` keeps the query at least as heavy as the
    marks, and the move is cut to ``MAX_MOVE`` of the query's distance to its nearest marked case: the
    refined query stays at least half as far from every marked case as the query was."""
    if not 0.0 <= beta <= MAX_SIMILAR:
        raise ValueError(f"beta must lie in [0, {MAX_SIMILAR}] (the query keeps its own weight), not {beta}")
    if gamma < 0.0:
        raise ValueError(f"gamma must be at least 0, not {gamma}")
    q = np.asarray(query, np.float32)
    sim = np.asarray(similar, np.float32).reshape(-1, q.shape[-1])
    dis = np.asarray(not_similar, np.float32).reshape(-1, q.shape[-1])
    move = np.zeros_like(q)
    if len(sim):
        move += beta * (sim.mean(axis=0) - q)
    if len(dis):
        move -= gamma * (dis.mean(axis=0) - q)
    marks = np.concatenate([sim, dis])
    if len(marks):
        limit = MAX_MOVE * float(np.linalg.norm(marks - q, axis=1).min())
        length = float(np.linalg.norm(move))
        if length > limit:
            move *= limit / length
    return q + move
