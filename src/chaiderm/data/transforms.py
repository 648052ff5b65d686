"""Turn decoded images into network input. Images are decoded and resized once (``prepare``),
kept as uint8, and augmented on the fly with cheap tensor ops (crops, flips, 90-degree turns:
dermoscopy has no canonical orientation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from chaiderm.config import check_setting, choices
from chaiderm.data.images import load_image
from chaiderm.errors import DataError


def resize_square(img: np.ndarray, load_size: int) -> np.ndarray:
    """Resize so the shorter side is ``load_size`` and centre-crop to a square; any input size."""
    h, w = img.shape[:2]
    s = load_size / min(h, w)
    nh, nw = max(load_size, round(h * s)), max(load_size, round(w * s))
    pil = Image.fromarray(img)
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0)
    top, left = (nh - load_size) // 2, (nw - load_size) // 2
    return np.asarray(pil.crop((left, top, left + load_size, top + load_size)))


def prepare(
    paths: Sequence[str],
    load_size: int,
    *,
    skip_bad: bool = False,
    progress: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode and resize images into one ``(N, S, S, 3)`` uint8 array.

    Returns the array, the positions that loaded, and error messages for those skipped
    (only when ``skip_bad``; otherwise the first bad file raises :class:`DataError`).
    """
    out = np.empty((len(paths), load_size, load_size, 3), np.uint8)
    ok: list[int] = []
    errors: list[str] = []
    for i, p in enumerate(paths):
        try:
            out[len(ok)] = resize_square(load_image(p, fit=load_size), load_size)
            ok.append(i)
        except DataError as e:
            if not skip_bad:
                raise
            errors.append(str(e))
        if progress is not None:
            progress()
    return out[: len(ok)], ok, errors


def mask_as_seen(path: str, load_size: int, image_size: int) -> np.ndarray:
    """A lesion mask on the crop the network sees (square resize, then centre crop), as bool."""
    from chaiderm.data.images import load_mask

    sq = resize_square(load_mask(path).astype(np.uint8) * 255, load_size)
    return center_crop(sq[None, :, :, None], image_size)[0, :, :, 0] > 127


COLOURS = choices("colour")  # colour normalisations a model may apply to every input
SOG_P = 6  # Minkowski norm of Shades of Gray (Finlayson & Trezzi 2004), the usual choice for dermoscopy


def shades_of_gray(x: torch.Tensor, p: int = SOG_P) -> torch.Tensor:
    """Colour constancy on float NCHW images in [0, 1]: each channel is scaled so that the image's
    illuminant estimate (the channel's Minkowski p-mean) becomes grey, keeping the mean brightness.
    Dermoscopes and cameras differ in white balance; a lesion's colour is diagnostic, the lamp's is not."""
    illum = x.clamp_min(0).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p).clamp_min(1e-4)
    return (x * (illum.mean(dim=1, keepdim=True) / illum)).clamp_(0.0, 1.0)


def colour_jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength] per image
    (float NCHW in [0, 1]); drawn from ``rng`` so a training run is repeatable."""
    n = x.shape[0]
    f = torch.from_numpy(rng.uniform(1.0 - strength, 1.0 + strength, (3, n, 1, 1, 1)).astype(np.float32))
    x = x * f[0]
    level = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).mean(dim=(2, 3), keepdim=True)
    x = (x - level) * f[1] + level
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = grey + (x - grey) * f[2]
    return x.clamp_(0.0, 1.0)


def to_tensor(
    batch: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    colour: str = "none",
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """uint8 NHWC -> float NCHW, scaled as the backbone's weights expect, channels_last.

    ``colour`` normalises each image first (:data:`COLOURS`); ``jitter`` > 0 (training only, needs
    ``rng``) then perturbs brightness, contrast and saturation, so the network still sees colour
    variation after the normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    if check_setting("colour", colour) == "shades_of_gray":
        x = shades_of_gray(x)
    if jitter > 0:
        if rng is None:
            raise ValueError("colour jitter needs an rng")
        x = colour_jitter(x, jitter, rng)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def center_crop(batch: np.ndarray, size: int) -> np.ndarray:
    h, w = batch.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return batch[:, top : top + size, left : left + size]


def augment(batch: np.ndarray, size: int, rng: np.random.Generator, zoom: float = 1.0) -> np.ndarray:
    """Random crop, flips and 90-degree turns, per image.

    Crops span 0.8-1 of the side but never fewer pixels than the network's input; ``zoom`` > 1 allows crops
    down to ``size / zoom`` pixels, enlarged to ``size``: a lesion seen closer, as another clinic's framing or
    dermoscope would show it.
    """
    check_setting("zoom", zoom)
    n, h, w = batch.shape[:3]
    out = np.empty((n, size, size, 3), np.uint8)
    smallest = max(size, int(0.8 * min(h, w))) if zoom == 1.0 else int(size / zoom)
    for i in range(n):
        side = int(rng.integers(min(smallest, min(h, w)), min(h, w) + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = batch[i, top : top + side, left : left + side]
        if side != size:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, int(rng.integers(4)))
        out[i] = crop
    return out
