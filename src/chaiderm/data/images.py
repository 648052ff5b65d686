"""Decode any dermoscopic image file into RGB uint8, or fail with the file's name."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chaiderm.data.dicom import is_dicom, read_dicom
from chaiderm.errors import DataError

MAX_PIXELS = 50_000_000  # larger images are refused before their pixels are decoded
MAX_SIDE = 20_000
MIN_SIDE = 8
# a 1 x 20,000 strip squared to the network's input would be upsampled to 20,000 x 20,000 (1.2 GB):
# refuse thin images outright; real dermoscopy and clinical photos are within 1:3
MAX_ASPECT = 8.0
# what is decoded at all: Pillow opens dozens of formats (EPS would run Ghostscript); none but these.
# MPO is how many cameras' JPEGs identify themselves.
FILE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "DICOM")  # DICOM: data.dicom, not Pillow
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG")


def _open(src: str | Path | bytes, name: str, formats: tuple[str, ...] = FILE_FORMATS) -> Image.Image:
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
            Image.init()  # registers every plugin once, so MPO, TIFF and WEBP are found by name
            img = Image.open(fh, formats=[f for f in formats if f in Image.OPEN])
    except UnidentifiedImageError:
        kinds = ", ".join(f for f in formats if f != "MPO")
        raise DataError(name, f"not an image file of an accepted format ({kinds})", code="not_image") from None
    except Image.DecompressionBombError:
        raise DataError(name, f"image has more than {MAX_PIXELS:,} pixels; refused", code="too_large") from None
    except OSError as e:
        raise DataError(name, f"cannot read image ({e})", code="corrupt") from None
    _check_size(img.size, name)
    return img


def _check_size(size: tuple[int, int], name: str) -> None:
    """Refuse, by name, a picture too large, empty, too small or too thin to be a lesion photograph."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise DataError(
            name, f"image is {w}x{h} = {w * h:,} pixels, over the {MAX_PIXELS:,} limit; refused", code="too_large"
        )
    if w == 0 or h == 0:
        raise DataError(name, "image has zero size", code="corrupt")
    if max(w, h) > MAX_SIDE:
        raise DataError(name, f"image is {w}x{h}, a side over {MAX_SIDE:,} pixels; refused", code="too_large")
    if min(w, h) < MIN_SIDE:
        raise DataError(name, f"image is {w}x{h}, a side under {MIN_SIDE} pixels; refused", code="bad_shape")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise DataError(
            name, f"image is {w}x{h}, thinner than 1:{MAX_ASPECT:g}; not a lesion photograph", code="bad_shape"
        )


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


def _shrink(img: Image.Image, fit: int) -> Image.Image:
    """Reduce by a whole factor while the shorter side stays >= ``fit`` (decoding JPEGs at reduced
    scale already): a 49-megapixel upload costs a few megabytes after this, not hundreds."""
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (fit, fit))  # the JPEG decoder's own 1/2, 1/4, 1/8 scaling; keeps sides >= fit
    img.load()
    factor = min(img.size) // fit
    if factor >= 2:
        if img.mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "I", "F"):
            img = img.convert("RGBA" if "transparency" in img.info or "A" in img.mode else "RGB")
        orientation = img.getexif().get(0x0112)
        img = img.reduce(factor)
        if orientation:  # reduce() keeps no EXIF; exif_transpose needs the orientation tag back
            exif = img.getexif()
            exif[0x0112] = orientation
            img.info["exif"] = exif.tobytes()
    return img


def load_image(
    src: str | Path | bytes,
    name: str | None = None,
    *,
    fit: int | None = None,
    formats: tuple[str, ...] = FILE_FORMATS,
) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied.

    ``fit`` lets the decoder shrink the image while its shorter side stays at least ``fit`` (for
    callers that resize to that size anyway); ``formats`` lists the Pillow formats accepted.

    Raises
    ------
    DataError
        For a missing, empty, truncated, corrupt, non-image, oversized or strip-shaped file, or one of
        another format; the message names it.
    """
    name = name or (str(src) if not isinstance(src, bytes | bytearray) else "<upload>")
    if "DICOM" in formats and is_dicom(src):
        return _dicom(src, name, fit)
    img = _open(src, name, formats)
    try:
        if fit is not None:
            img = _shrink(img, fit)
        img = ImageOps.exif_transpose(img)
        img.load()
        return _to_rgb(img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(name, f"corrupt or truncated image ({e})", code="corrupt") from None


def _dicom(src: str | Path | bytes, name: str, fit: int | None) -> np.ndarray:
    a = read_dicom(src, name, max_pixels=MAX_PIXELS)
    h, w = a.shape[:2]
    if max(w, h) > MAX_SIDE or min(w, h) < MIN_SIDE or max(w, h) / min(w, h) > MAX_ASPECT:
        raise DataError(name, f"image is {w}x{h}: outside the accepted sides and aspect", code="bad_shape")
    if fit is not None and min(h, w) // fit >= 2:
        a = np.asarray(Image.fromarray(a).reduce(min(h, w) // fit))
    return a


def load_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask as an ``(H, W)`` bool array (any non-zero pixel is lesion)."""
    img = _open(path, str(path))
    try:
        img.load()
        a = np.asarray(img.convert("L"))
    except OSError as e:
        raise DataError(path, f"corrupt or truncated mask ({e})") from None
    return a > 127
