"""Retrieval evaluation of one embedding: queries against an archive, Table-1 style numbers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from chaiderm.data.records import ImageTable
from chaiderm.data.transforms import mask_as_seen, prepare
from chaiderm.evaluation.metrics import (
    calculate_auc_at_k,
    calculate_jaccard,
    calculate_mass_in_mask,
    calculate_rel_at_k,
)
from chaiderm.evidence.maps import activation_map_pairs
from chaiderm.index.faiss_index import exact_search
from chaiderm.losses.logic import encode_labels
from chaiderm.models.embedding import EmbeddingNet
from chaiderm.models.inference import embed

KS = (3, 5, 10, 20, 40)


def evaluate_retrieval(
    model: EmbeddingNet,
    image_size: int,
    load_size: int,
    archive: ImageTable,
    queries: ImageTable,
    *,
    ks: Sequence[int] = KS,
    positive_class: str = "melanoma",
    localisation: bool = True,
    group_by: str | None = "lesion_id",
    decoded: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """AUC@k, REL@k (where queries have groups) and, where queries have masks, the mean Jaccard and
    mass-in-mask of each query's QAM against its nearest archive result.

    ``group_by`` (``lesion_id`` or ``patient_id``, where the data has them): an archive case of the query's
    own lesion or patient never counts as its neighbour; another photograph of the same lesion would
    otherwise answer for it.

    ``decoded``: the archive's and the queries' images as ``data.transforms.prepare`` gives them at
    ``load_size``, for a caller that evaluates several embeddings on the same images."""
    ks = [k for k in ks if k <= len(archive)]
    if decoded is not None:
        a_img, q_img = decoded
    else:
        a_img, _, _ = prepare(archive.paths, load_size)
        q_img, _, _ = prepare(queries.paths, load_size)
    want_maps = localisation and queries.has_masks
    a_emb, a_maps = embed(model, a_img, image_size, with_maps=want_maps)
    q_emb, q_maps = embed(model, q_img, image_size, with_maps=want_maps)
    a_key = [m.get(group_by, "") for m in archive.metadata] if group_by else []
    q_key = [m.get(group_by, "") for m in queries.metadata] if group_by else []
    grouped = any(a_key) and any(q_key)
    extra = max(Counter(k for k in a_key if k).values(), default=0) if grouped else 0
    _, idx = exact_search(a_emb, q_emb, min(max(ks) + extra, len(archive)))
    if grouped:
        idx = np.array(
            [[j for j in row if not q_key[r] or a_key[j] != q_key[r]][: max(ks)] for r, row in enumerate(idx)]
        )
    out: dict = {"n_archive": len(archive), "n_queries": len(queries), "grouped_by": group_by if grouped else None}
    y = queries.is_positive(positive_class)
    if 0 < y.sum() < len(y):
        out["auc"] = {str(k): v for k, v in calculate_auc_at_k(archive.is_positive(positive_class)[idx], y, ks).items()}
    codes, _ = encode_labels(list(archive.groups) + list(queries.groups))
    a_g, q_g = codes[: len(archive)], codes[len(archive) :]
    if (q_g >= 0).any():
        out["rel"] = {str(k): v for k, v in calculate_rel_at_k(q_g, a_g[idx], ks).items()}
    if want_maps:
        jac, mass = [], []
        for qi in range(len(queries)):
            qam, _ = activation_map_pairs(q_maps[qi], a_maps[idx[qi, :1]])
            # the network saw the centre crop of the square-resized image: compare the mask on that crop
            m = mask_as_seen(queries.mask_paths[qi], load_size, image_size)
            jac.append(calculate_jaccard(qam[0], m))
            mass.append(calculate_mass_in_mask(qam[0], m))
        out["jaccard"] = float(np.mean(jac))
        out["mass_in_mask"] = float(np.mean(mass))
    return out
