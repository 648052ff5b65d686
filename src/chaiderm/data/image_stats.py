"""A few colour and texture statistics of an image, the same for any size: what a dermoscopic photograph
looks like (skin and lesion colours, soft edges, no flat or clipped areas) in numbers an embedding trained
only on lesions may not keep. ``index.novelty`` compares a query's statistics with the archive's."""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 64  # statistics are taken on this downscale: cheap, and blind to the input's resolution
NAMES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "red_minus_green",
    "green_minus_blue",
    "saturation",
    "grey_fraction",
    "clipped_fraction",
    "edge_energy",
    "flat_fraction",
)


def image_statistics(images: np.ndarray) -> np.ndarray:
    """``(N, len(NAMES))`` float32 statistics of ``(N, H, W, 3)`` uint8 images (or one ``(H, W, 3)``)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"image statistics need (N, H, W, 3) RGB images, not shape {arr.shape}")
    out = np.empty((len(arr), len(NAMES)), np.float32)
    for n, img in enumerate(arr):
        small = np.asarray(Image.fromarray(np.ascontiguousarray(img, np.uint8)).resize((SIDE, SIDE)), np.float32) / 255
        r, g, b = small[..., 0], small[..., 1], small[..., 2]
        hi, lo = small.max(-1), small.min(-1)
        sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
        grey = small.mean(-1)
        gx, gy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
        edges = float(gx.mean() + gy.mean())
        flat = float(((gx[:-1] < 0.004) & (gy[:, :-1] < 0.004)).mean())
        out[n] = (
            r.mean(),
            g.mean(),
            b.mean(),
            r.std(),
            g.std(),
            b.std(),
            (r - g).mean(),
            (g - b).mean(),
            sat.mean(),
            (sat < 0.06).mean(),
            ((hi > 0.985) | (lo < 0.015)).mean(),
            edges,
            flat,
        )
    return out
