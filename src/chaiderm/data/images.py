"""Decode any dermoscopic image file into RGB uint8, or fail with the file's name."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chaiderm.errors import DataError

MAX_PIXELS = 50_000_000  # larger images are refused before their pixels are decoded


def _open(src: str | Path | bytes, name: str) -> Image.Image:
    if isinstance(src, bytes | bytearray):
        if len(src) == 0:
            raise DataError(name, "empty file", code="empty")
        fh: io.BytesIO | Path = io.BytesIO(src)
    else:
        fh = Path(src)
        if not fh.exists():
            raise DataError(name, "file not found", code="missing")
        if fh.stat().st_size == 0:
            raise DataError(name, "empty file", code="empty")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check is a warning below 2x its limit; ours is exact and explicit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except UnidentifiedImageError:
        raise DataError(name, "not an image file (format not recognised)", code="not_image") from None
    except Image.DecompressionBombError:
        raise DataError(name, f"image has more than {MAX_PIXELS:,} pixels; refused", code="too_large") from None
    except OSError as e:
        raise DataError(name, f"cannot read image ({e})", code="corrupt") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DataError(
            name, f"image is {w}x{h} = {w * h:,} pixels, over the {MAX_PIXELS:,} limit; refused", code="too_large"
        )
    if w == 0 or h == 0:
        raise DataError(name, "image has zero size", code="corrupt")
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale: stretch to 8 bit by its own range so nothing saturates
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        a = a.round().astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white: transparent pixels must not read as black lesion
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(src: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied.

    Raises
    ------
    DataError
        For a missing, empty, truncated, corrupt, non-image or oversized file; the message names it.
    """
    name = name or (str(src) if not isinstance(src, bytes | bytearray) else "<upload>")
    img = _open(src, name)
    try:
        img = ImageOps.exif_transpose(img)
        img.load()
        return _to_rgb(img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(name, f"corrupt or truncated image ({e})", code="corrupt") from None


def load_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask as an ``(H, W)`` bool array (any non-zero pixel is lesion)."""
    img = _open(path, str(path))
    try:
        img.load()
        a = np.asarray(img.convert("L"))
    except OSError as e:
        raise DataError(path, f"corrupt or truncated mask ({e})") from None
    return a > 127
