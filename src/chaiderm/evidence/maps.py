"""Query/result activation maps (paper Eq. 2-3).

QAM:  A_q(i, j) = sum_z g_z(x_q, i, j) * (f_z(x_q) - f_z(x_r))^2
RAM:  A_r(i, j) = sum_z g_z(x_r, i, j) * (f_z(x_q) - f_z(x_r))^2
with f_z(x) the spatial mean of g_z(x, ., .) (Eq. 3).

Arrays in, arrays out; the sums run in torch. numpy's einsum hands them to OpenBLAS, whose threads then
spin for ~0.1 s on the same two cores the next query's forward pass needs: measured, a 5-member
ensemble's query took 121 ms that way against 54 ms with these sums in torch's own thread pool.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def activation_map_pair(g_q: np.ndarray, g_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QAM and RAM for one pair of ``(D, h, w)`` maps; f is computed from the maps (Eq. 3)."""
    qam, ram = activation_map_pairs(g_q, g_r[None])
    return qam[0], ram[0]


def activation_map_pairs(
    g_q: np.ndarray, g_rs: np.ndarray, f_q: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One query ``(D, h, w)`` against results ``(R, D, h', w')``: QAMs ``(R, h, w)``, RAMs ``(R, h', w')``.

    ``f_q``: the query embedding that was searched with, where it is not the mean of ``g_q`` (a search by
    region pools only the cells under the region, and passes ``g_q`` zeroed elsewhere; a refined query
    has moved). Default: Eq. 3."""
    gq, gr = _t(g_q), _t(g_rs)
    fq = gq.mean(dim=(1, 2)) if f_q is None else _t(f_q)  # Eq. 3
    with torch.inference_mode():
        w = (fq[None, :] - gr.mean(dim=(2, 3))) ** 2  # (R, D): per-dimension share of the squared distance
        qam = torch.einsum("rz,zij->rij", w, gq)
        ram = torch.einsum("rz,rzij->rij", w, gr)
    return qam.numpy(), ram.numpy()


def upsample(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an ``(h, w)`` map to ``(H, W)`` = ``size``."""
    img = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def normalise(amap: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the map's own range (a flat map becomes all zeros)."""
    lo, hi = float(amap.min()), float(amap.max())
    return np.zeros_like(amap) if hi <= lo else (amap - lo) / (hi - lo)


def similarity_maps(g_q: np.ndarray, g_rs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact spatial decomposition of the GAP dot-product similarity (Stylianou et al., WACV 2019).

    With f(x) = mean over positions of g(x), f_q . f_r = sum_ij S_q(i, j) where
    S_q(i, j) = sum_z g_z(x_q, i, j) f_z(x_r) / (h w); likewise S_r for the result. Returns
    ``(S_q (R, h, w), S_r (R, h', w'))`` for one query ``(D, h, w)`` against results ``(R, D, h', w')``.
    """
    gq, gr = _t(g_q), _t(g_rs)
    with torch.inference_mode():
        f_q, f_r = gq.mean(dim=(1, 2)), gr.mean(dim=(2, 3))
        s_q = torch.einsum("rz,zij->rij", f_r, gq) / (gq.shape[1] * gq.shape[2])
        s_r = torch.einsum("z,rzij->rij", f_q, gr) / (gr.shape[2] * gr.shape[3])
    return s_q.numpy(), s_r.numpy()
