"""Render evidence maps over images: a perceptual colour map, alpha-blended, PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from chaiderm.evidence.maps import normalise, upsample

# a compact "inferno"-like ramp (black -> purple -> orange -> yellow), no plotting library needed
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colourise(unit_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours."""
    x = np.clip(unit_map, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    t = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[hi] * t).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colourised, upsampled, range-normalised map over an ``(H, W, 3)`` uint8 image."""
    m = normalise(upsample(amap, image.shape[:2]))
    heat = colourise(m).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)


def to_png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(image: np.ndarray, side: int = 224) -> np.ndarray:
    img = Image.fromarray(image)
    img.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(img)


def render_heatmap(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The colourised map alone, upsampled to ``size``: a page overlays it with its own opacity."""
    return colourise(normalise(upsample(amap, size)))
