"""A computed stand-in for non-expert similarity groups, for users without annotations.

PROXY, not human judgement: simple appearance descriptors computed from the image alone (no CNN) -
lesion size, colour and colour spread, border sharpness and texture - clustered like the ENHANCE ratings.
The lesion is taken as the pixels darker than Otsu's threshold on the grey image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chaiderm.data.enhance import PAPER_BLIND_GROUPS, PAPER_GROUPS, cluster
from chaiderm.data.images import load_image
from chaiderm.data.transforms import resize_square

DESCRIPTORS = ("size", "lightness", "redness", "yellowness", "colour_spread", "border_sharpness", "texture")


def _otsu(grey: np.ndarray) -> float:
    hist, edges = np.histogram(grey, bins=64, range=(0, 255))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    between = (mt * w0 - m0) ** 2 / np.clip(w0 * (1 - w0), 1e-9, None)
    return float(centres[int(np.argmax(between))])


def describe(image: np.ndarray, side: int = 128) -> np.ndarray:
    """The descriptor vector of one RGB image (see ``DESCRIPTORS``)."""
    img = resize_square(image, side).astype(np.float32)
    grey = img.mean(-1)
    lesion = grey < _otsu(grey)
    if lesion.sum() < 0.01 * lesion.size:
        lesion = grey <= np.percentile(grey, 20)
    pix = img[lesion]
    r, g, b = pix[:, 0], pix[:, 1], pix[:, 2]
    gy, gx = np.gradient(grey)
    grad = np.hypot(gx, gy)
    edge = lesion ^ np.roll(lesion, 1, 0) | lesion ^ np.roll(lesion, 1, 1)
    return np.array([
        lesion.mean(),
        pix.mean() / 255,
        (r - g).mean() / 255,
        ((r + g) / 2 - b).mean() / 255,
        pix.std(0).mean() / 255,
        grad[edge].mean() / 255 if edge.any() else 0.0,
        grad[lesion].mean() / 255,
    ], dtype=np.float64)  # fmt: skip


def proxy_groups(
    paths: Sequence[str],
    image_ids: Sequence[str],
    diagnoses: Sequence[str],
    *,
    n_finetune: int = 1000,
    groups_per_disease: dict[str, int] | None = None,
    n_blind: int = PAPER_BLIND_GROUPS,
    seed: int = 0,
) -> dict[str, list[tuple[str, str, str]]]:
    """Same output as :func:`chaiderm.data.enhance.enhance_groups`, group names prefixed ``proxy``."""
    from chaiderm.data.enhance import Ratings, enhance_groups

    x = np.stack([describe(load_image(p)) for p in paths])
    z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    # reuse the ENHANCE grouping (split, clustering) on the descriptors in place of the ratings
    ratings = Ratings({i: dict(zip(DESCRIPTORS, row, strict=True)) for i, row in zip(image_ids, z, strict=True)})
    parts = enhance_groups(
        ratings,
        list(image_ids),
        list(diagnoses),
        n_finetune=n_finetune,
        groups_per_disease=groups_per_disease or PAPER_GROUPS,
        n_blind=n_blind,
        seed=seed,
        features=DESCRIPTORS,
    )
    return {
        k: [(i, g.replace("/g", "/proxy", 1) if not g.startswith("blind") else "proxy-" + g, d) for i, g, d in v]
        for k, v in parts.items()
    }


__all__ = ["DESCRIPTORS", "cluster", "describe", "proxy_groups"]
