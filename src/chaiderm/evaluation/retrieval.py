"""Retrieval evaluation of one embedding: queries against an archive, Table-1 style numbers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from chaiderm.data.records import ImageTable
from chaiderm.data.transforms import mask_as_seen, prepare
from chaiderm.evaluation.metrics import (
    calculate_auc_at_k,
    calculate_jaccard,
    calculate_mass_in_mask,
    calculate_rel_at_k,
    centred_gaussian,
)
from chaiderm.evidence.maps import activation_map_pairs, similarity_maps
from chaiderm.index.faiss_index import exact_search
from chaiderm.losses.logic import encode_labels
from chaiderm.models.embedding import EmbeddingNet
from chaiderm.models.inference import embed

KS = (3, 5, 10, 20, 40)


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (distances, rows)
KeyPair = tuple[Sequence[str], Sequence[str]]  # one key per query, one per archive case ("": none)


def nearest_excluding(
    search: Search, queries: np.ndarray, n_archive: int, kmax: int, exclude: Sequence[KeyPair] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kmax`` archive rows nearest to each query embedding and their squared distances, never an
    archive case that shares a key with its query: ``exclude`` pairs (query keys, archive keys), e.g. the
    image ids (a query never answers itself) and ``lesion_id`` (nor another photograph of its lesion).
    ``search`` is an index's (``ChaiIndex.search``) or :func:`exact_search` over embeddings in memory.
    Every evaluation of this package (``evaluate``, ``reproduce``, :func:`evaluate_retrieval`) finds its
    neighbours here."""
    extra = sum(max(Counter(k for k in archive if k).values(), default=0) for _, archive in exclude)
    dist, rows = search(queries, min(n_archive, kmax + extra))
    out, out_d = [], []
    for qi, row in enumerate(rows):
        keep = [c for c, j in enumerate(row) if j >= 0 and not any(q[qi] and a[j] == q[qi] for q, a in exclude)]
        out.append(row[keep[:kmax]])
        out_d.append(dist[qi][keep[:kmax]])
    if min((len(r) for r in out), default=kmax) < kmax:
        raise ValueError(f"the archive has fewer than {kmax} cases left to vote after excluding queries' own")
    return np.asarray(out), np.asarray(out_d)


def in_memory(archive: np.ndarray) -> Search:
    """Exact search over archive embeddings held in memory, as :func:`nearest_excluding` takes it."""
    return lambda queries, k: exact_search(archive, queries, k)


def localisation_scores(
    query_maps: np.ndarray,
    archive_maps: np.ndarray,
    nearest: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    references: bool = False,
) -> dict[str, np.ndarray]:
    """Per query, how well its evidence map locates its lesion (the paper's Table 1): the Jaccard at the
    0.5 threshold (``ja``) and the share of map mass inside the mask (``mass_in_mask``) of its QAM against
    its nearest archive case (``nearest[q]``, a row of ``archive_maps``). ``masks``: each query's lesion on
    the crop the network saw. ``references`` adds the same two for the similarity map
    (``*_similarity_map``) and for a centred Gaussian (``*_gaussian``), the maps a QAM must beat."""
    keys = ["ja", "mass_in_mask"]
    if references:
        keys += ["ja_similarity_map", "mass_in_mask_similarity_map", "ja_gaussian", "mass_in_mask_gaussian"]
    out: dict[str, list[float]] = {k: [] for k in keys}
    for q, m in enumerate(masks):
        near = archive_maps[nearest[q : q + 1]]
        qam, _ = activation_map_pairs(query_maps[q], near)
        out["ja"].append(calculate_jaccard(qam[0], m))
        out["mass_in_mask"].append(calculate_mass_in_mask(qam[0], m))
        if references:
            sim, _ = similarity_maps(query_maps[q], near)
            gauss = centred_gaussian(m.shape)
            out["ja_similarity_map"].append(calculate_jaccard(sim[0], m))
            out["mass_in_mask_similarity_map"].append(calculate_mass_in_mask(np.clip(sim[0], 0, None), m))
            out["ja_gaussian"].append(calculate_jaccard(gauss, m))
            out["mass_in_mask_gaussian"].append(calculate_mass_in_mask(gauss, m))
    return {k: np.asarray(v) for k, v in out.items()}


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
    idx, _ = nearest_excluding(in_memory(a_emb), q_emb, len(archive), max(ks), [(q_key, a_key)] if grouped else [])
    out: dict = {"n_archive": len(archive), "n_queries": len(queries), "grouped_by": group_by if grouped else None}
    y = queries.is_positive(positive_class)
    if 0 < y.sum() < len(y):
        out["auc"] = {str(k): v for k, v in calculate_auc_at_k(archive.is_positive(positive_class)[idx], y, ks).items()}
    codes, _ = encode_labels(list(archive.groups) + list(queries.groups))
    a_g, q_g = codes[: len(archive)], codes[len(archive) :]
    if (q_g >= 0).any():
        out["rel"] = {str(k): v for k, v in calculate_rel_at_k(q_g, a_g[idx], ks).items()}
    if want_maps:
        # the network saw the centre crop of the square-resized image: compare the mask on that crop
        masks = [mask_as_seen(p, load_size, image_size) for p in queries.mask_paths]
        loc = localisation_scores(q_maps, a_maps, idx[:, 0], masks)
        out["jaccard"] = float(np.mean(loc["ja"]))
        out["mass_in_mask"] = float(np.mean(loc["mass_in_mask"]))
    return out
