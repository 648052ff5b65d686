"""Batched, gradient-free embedding of prepared (uint8, square) images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from chaiderm.data.transforms import center_crop, to_tensor
from chaiderm.errors import DataError
from chaiderm.models.embedding import EmbeddingNet, check_views


def resolve_device(name: str) -> torch.device:
    """A torch device from its name, refused with a clear error when unknown or not present."""
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DataError(None, f"device: '{name}' is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(None, f"device: '{name}' asked for, but this torch sees no CUDA GPU")
    return dev


@torch.inference_mode()
def embed(
    model: EmbeddingNet,
    images: np.ndarray,
    image_size: int,
    *,
    batch_size: int | None = None,
    with_maps: bool = False,
    progress: Callable[[int], None] | None = None,
    views: str = "none",
    maps_dtype: type = np.float16,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed ``(N, S, S, 3)`` uint8 images (centre crop to ``image_size``).

    Returns float32 embeddings ``(N, D)`` and, with ``with_maps``, evidence maps ``(N, D, h, w)`` of
    ``maps_dtype`` (float16 by default: archives keep them) whose spatial mean equals the embeddings.
    Runs on the device the model is on. ``views`` (``models.embedding.VIEWS``) averages the embeddings of
    mirrored copies; each copy's maps are mirrored back before averaging, so the maps still sit on the
    original image and their spatial mean is still the embedding.
    """
    flips = check_views(views)
    device = next(model.parameters()).device
    # small batches are fastest on a CPU (measured on 2 cores); a GPU wants large ones
    batch_size = batch_size or (64 if device.type == "cuda" else 8)
    # switching modes walks every submodule (about 35 ms a query for 8 members): only when needed
    was_training = model.training
    if was_training:
        model.eval()
    embs: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = center_crop(images[start : start + batch_size], image_size)
            x = to_tensor(chunk, model.mean, model.std, colour=model.colour).to(device)
            g_sum = e_sum = None
            for dims in flips:
                xv = torch.flip(x, dims) if dims else x
                if with_maps:
                    g, e = model.evidence_maps(xv)
                    g = torch.flip(g, dims) if dims else g
                    g_sum = g if g_sum is None else g_sum + g
                else:
                    e = model(xv)
                e_sum = e if e_sum is None else e_sum + e
            if with_maps:
                maps.append((g_sum / len(flips)).float().cpu().numpy().astype(maps_dtype))
            embs.append((e_sum / len(flips)).float().cpu().numpy())
            if progress is not None:
                progress(len(chunk))
    finally:
        if was_training:
            model.train(True)
    dim = model.dim
    out = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(out, dtype=np.float32), (np.concatenate(maps) if with_maps and maps else None)
