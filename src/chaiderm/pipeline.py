"""Predictor = trained model + archive index + evidence. The layer the CLI and web app talk to."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chaiderm._io import file_digest
from chaiderm.config import RunConfig
from chaiderm.data.diagnoses import require_class
from chaiderm.data.image_stats import image_statistics
from chaiderm.data.images import load_image
from chaiderm.data.records import ImageTable
from chaiderm.data.transforms import prepare, resize_square
from chaiderm.errors import ArtifactError, DataError
from chaiderm.evaluation.conformal import DEFAULT_LEVEL, check_level
from chaiderm.evidence.maps import activation_map_pairs
from chaiderm.evidence.render import render_heatmap, to_png_bytes
from chaiderm.index import novelty as nv
from chaiderm.index import uncertainty as unc
from chaiderm.index.archive import ArchiveIndex
from chaiderm.index.filters import parse_where
from chaiderm.index.knn import check_vote, class_distribution, vote_weights
from chaiderm.index.refine import MAX_EXAMPLES, Region, region_cells, rocchio
from chaiderm.interfaces import Neighbor, Prediction
from chaiderm.models.embedding import WEIGHTS, EmbeddingNet, check_views, load_model
from chaiderm.models.inference import embed
from chaiderm.storage import FeedbackStore, read_feedback_triplets

__all__ = [
    "FeedbackStore",
    "Predictor",
    "QueryResult",
    "add_to_index",
    "build_index",
    "calibrate_sets",
    "load_image",
    "query_cost_warning",
    "read_feedback_triplets",
    "render_heatmap",
    "to_png_bytes",
    "weights_digest",
]


# What a query with 10 evidence pairs may cost on 2 cores; the recipe's member count is sized to it
QUERY_BUDGET_MS = 150.0


def query_cost_warning(query_ms: float, model: torch.nn.Module, run_dir: str | Path) -> str | None:
    """One line for an operator whose machine answers slower than :data:`QUERY_BUDGET_MS`, saying what would
    answer faster; None within the budget."""
    if query_ms <= QUERY_BUDGET_MS:
        return None
    head = f"a query takes {query_ms:.0f} ms here, above the {QUERY_BUDGET_MS:.0f} ms it is meant to take"
    members = getattr(model, "members", None)
    if members is not None and len(members) > 2:
        # a recipe's members stay in RUN/members/: fewer of them make a faster model without training
        kept = Path(run_dir) / "members"
        found = sorted(p for p in kept.iterdir() if p.is_dir()) if kept.is_dir() else []
        runs = f"{found[0]} {found[1]} ..." if len(found) > 1 else "RUN RUN ..."
        return (
            f"{head}: this model has {len(members)} members; an ensemble of fewer answers faster at some "
            f"accuracy (`chaiderm ensemble {runs} --out NEW_RUN`, then `chaiderm index --model NEW_RUN`; "
            "research/recipe_rounds/where_it_stands.md has what three and five members reach)"
        )
    return f"{head} (this machine is slower, or busy with other work)"


def weights_digest(run_dir: str | Path) -> str:
    return file_digest(Path(run_dir) / WEIGHTS, 16)


def embed_archive(
    model: EmbeddingNet,
    cfg: RunConfig,
    table: ImageTable,
    *,
    store_maps: bool = True,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    digests: list[str] | None = None,
    stats_out: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, ImageTable, list[str], list[str]]:
    """Embed archive images with the model's views: ``(embeddings, maps, the rows that loaded, their
    content digests, messages for skipped files)``. Shared by a new index and by adding to one;
    ``digests`` (one per row of ``table``) are used instead of hashing the files again. ``stats_out``, a
    list, receives the loaded images' statistics (``data.image_stats``), taken while they are decoded."""
    check_views(cfg.model.views)  # before any image is decoded
    images, ok, errors = prepare(
        table.paths, cfg.model.load_size, skip_bad=skip_bad, progress=(lambda: progress(0)) if progress else None
    )
    table = table.subset(ok)
    if stats_out is not None:
        stats_out.append(image_statistics(images))
    emb, maps = embed(
        model, images, cfg.model.image_size, with_maps=store_maps, progress=progress, views=cfg.model.views
    )
    content = [digests[i] for i in ok] if digests is not None else [file_digest(p) for p in table.paths]
    return emb, maps, table, content, errors


def build_index(
    model: EmbeddingNet,
    cfg: RunConfig,
    table: ImageTable,
    *,
    model_dir: str | Path,
    kind: str = "flat",
    store_maps: bool = True,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    ray_shards: str | Path | None = None,
    novelty_method: str = nv.DEFAULT_METHOD,
    novelty_threshold: float | None = None,
    **index_params,
) -> tuple[ArchiveIndex, list[str]]:
    """Embed every archive image and index it; returns the index and messages for skipped files.
    ``ray`` (a cluster address, or ``local``) embeds on a Ray cluster instead of in this process.
    The index gets its novelty reference and calibrator (``index.uncertainty``); embedded with ``ray`` it
    keeps no image statistics, and its novelty is then the embedding distance alone. ``novelty_threshold``
    None: set on the archive's cases the model held out of training (``cfg.data.holdout``), if it has
    enough of them, else the 95th percentile (``index.uncertainty.build``)."""
    nv.check_method(novelty_method)
    if novelty_threshold is not None:
        nv.check_threshold(novelty_threshold)
    stats: list[np.ndarray] = []
    check_views(cfg.model.views)
    # an archive without the model's positive class would vote 0 for every query: refuse it up front
    positive = require_class(cfg.train.positive_class, table.diagnoses, table.source or "archive")
    if ray is not None:
        from chaiderm.index.ray_embed import embed_archive_ray

        emb, maps, table, content, errors = embed_archive_ray(
            model_dir,
            cfg,
            table,
            address=ray,
            shard_dir=ray_shards,
            workers=ray_workers,
            store_maps=store_maps,
            skip_bad=skip_bad,
            progress=progress,
        )
    else:
        emb, maps, table, content, errors = embed_archive(
            model, cfg, table, store_maps=store_maps, skip_bad=skip_bad, progress=progress, stats_out=stats
        )
    info = {
        "model_dir": str(Path(model_dir).resolve()),
        "model_digest": weights_digest(model_dir),
        "image_size": cfg.model.image_size,
        "load_size": cfg.model.load_size,
        "views": cfg.model.views,
        "source": table.source,
        "data_fingerprint": table.fingerprint(),
        "synthetic": table.synthetic,
        "positive_class": positive,
        "skipped": len(errors),
        "sources": [table.source],
    }
    index = ArchiveIndex.build(
        emb,
        image_ids=table.image_ids,
        diagnoses=table.diagnoses,
        groups=table.groups,
        paths=table.paths,
        maps=maps,
        kind=kind,
        info=info,
        content=content,
        metadata=table.metadata,
        image_stats=stats[0] if stats else None,
        **index_params,
    )
    held = set(cfg.data.holdout)
    index.uncertainty = unc.build(
        index,
        vote=cfg.model.vote,
        method=novelty_method,
        threshold=novelty_threshold,
        held_out=np.array([i for i, image_id in enumerate(index.image_ids) if image_id in held], np.int64),
    )
    return index, errors


def add_to_index(
    index: ArchiveIndex,
    model: EmbeddingNet,
    cfg: RunConfig,
    table: ImageTable,
    *,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[ArchiveIndex, list[str]]:
    """Embed only the cases the archive lacks and append them; returns the new index and messages.

    A case whose id is already there, whose image file has the same content as an archive case (or an
    earlier row of ``table``), or whose image is the same as the model sees it (:func:`near_copies`, however
    it was encoded), is skipped and named with the case it repeats, never added twice."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    cfg.model.views = str(index.info.get("views", "none"))  # new cases are embedded as the archive was
    messages: list[str] = []
    have_ids = set(index.image_ids)
    by_id = [i for i, iid in enumerate(table.image_ids) if iid in have_ids]
    if by_id:
        shown = ", ".join(table.image_ids[i] for i in by_id[:5])
        messages.append(f"{len(by_id)} case(s) already in the archive by id, skipped: {shown}")
    messages += _fill_digests(index)
    fresh, fresh_digests, same = _new_rows(index, table, have_ids)
    if same:
        messages.append(
            f"{len(same)} image file(s) identical to an archive case or an earlier new one, skipped: "
            + ", ".join(same[:5])
        )
    if not fresh:
        return index, messages
    stats: list[np.ndarray] = []
    emb, maps, rows, content, errors = embed_archive(
        model,
        cfg,
        table.subset(fresh),
        store_maps=index.maps is not None,
        skip_bad=skip_bad,
        progress=progress,
        digests=fresh_digests,
        stats_out=stats,
    )
    new_stats = stats[0] if stats else None
    messages += [f"skipped unreadable: {e}" for e in errors]
    emb, maps, rows, content, new_stats = _without_near_copies(index, emb, maps, rows, content, new_stats, messages)
    if not len(rows):
        return index, messages
    new = index.add(
        emb,
        image_ids=rows.image_ids,
        diagnoses=rows.diagnoses,
        groups=rows.groups,
        paths=rows.paths,
        maps=maps,
        content=content,
        metadata=rows.metadata,
        image_stats=new_stats,
    )
    new.info["sources"] = [*index.info.get("sources", [index.info.get("source", "")]), rows.source]
    new.info["synthetic"] = bool(index.info.get("synthetic", False)) and rows.synthetic
    return new, messages


def _fill_digests(index: ArchiveIndex) -> list[str]:
    """Content digests of archive cases from indexes built before digests were recorded, computed once
    (saved with the index); returns the note to show."""
    missing = [i for i, c in enumerate(index.content) if not c]
    for i in missing:
        with contextlib.suppress(OSError):
            index.content[i] = file_digest(index.paths[i])
    return [f"computed content digests of {len(missing)} archive case(s) built without them"] if missing else []


def _new_rows(index: ArchiveIndex, table: ImageTable, have_ids: set[str]) -> tuple[list[int], list[str], list[str]]:
    """Rows of ``table`` to embed (not in the archive by id, no file identical to an archive case or an earlier
    row), their digests, and the skipped identical files named with the case each repeats."""
    seen = {c: iid for c, iid in zip(index.content, index.image_ids, strict=True) if c}
    fresh, digests, same = [], [], []
    for i, (iid, path) in enumerate(zip(table.image_ids, table.paths, strict=True)):
        if iid in have_ids:
            continue
        try:
            digest = file_digest(path)
        except OSError:
            digest = ""  # unreadable: embedding refuses it (or skips it with --skip-bad) with its name
        if digest and digest in seen:
            same.append(f"{iid} (= {seen[digest]})")
            continue
        seen.setdefault(digest, iid)
        fresh.append(i)
        digests.append(digest)
    return fresh, digests, same


def _without_near_copies(index, emb, maps, rows, content, stats, messages: list[str]):
    """The new cases less those the model sees as copies of a case (:func:`near_copies`), named in ``messages``."""
    copies = near_copies(index, emb, rows.image_ids)
    if not copies:
        return emb, maps, rows, content, stats
    keep = [i for i, iid in enumerate(rows.image_ids) if iid not in copies]
    shown = ", ".join(f"{iid} (= {of})" for iid, of in list(copies.items())[:5])
    messages.append(
        f"{len(copies)} image(s) the same as another case as the model sees them (re-encoded or resized "
        f"copies), skipped: {shown}" + (" ..." if len(copies) > 5 else "")
    )
    return (
        emb[keep],
        None if maps is None else maps[keep],
        rows.subset(keep),
        [content[i] for i in keep],
        None if stats is None else stats[keep],
    )


def calibrate_sets(
    index: ArchiveIndex,
    model: EmbeddingNet,
    cfg: RunConfig,
    table: ImageTable,
    *,
    k: int = 10,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Calibrate ``index``'s conformal prediction sets on labelled held-out images (``evaluation.conformal``):
    each is voted on (``k`` neighbours, the model's vote) and its nonconformity kept. The images must never
    have been used to train or choose anything, or the sets' coverage is not guaranteed. Returns notes."""
    from chaiderm.evaluation.conformal import Conformal, nonconformity

    if index.uncertainty is None:
        return ["the archive is too small for a novelty reference: no prediction sets"]
    predictor = Predictor(model, cfg, index)
    classes = predictor.classes
    shares, truth, skipped, flagged = [], [], 0, 0
    for start in range(0, len(table), 64):
        part = table.subset(list(range(start, min(start + 64, len(table)))))
        images = [load_image(p, fit=cfg.model.load_size) for p in part.paths]
        for res, d in zip(predictor.predict_many(images, k=k, image_ids=part.image_ids), part.diagnoses, strict=True):
            flagged += bool(res.prediction.uncertainty.get("unlike_archive"))
            if d not in classes:
                skipped += 1
                continue
            shares.append([res.prediction.class_probabilities[c] for c in classes])
            truth.append(classes.index(d))
        if progress is not None:
            progress(len(part))
    if not truth:
        raise DataError(None, f"{table.source}: none of its diagnoses is in the archive: no prediction sets")
    scores = nonconformity(np.array(shares), np.array(truth))
    fitted = Conformal.fit(scores, fitted_on=f"{len(scores)} labelled held-out cases of {table.source} (k={k})")
    observed = (round(flagged / len(table), 4), f"{flagged} of {len(table)} held-out cases of {table.source}")
    index.uncertainty = unc.with_conformal(index.uncertainty, fitted, len(index), observed)
    notes = [
        f"prediction sets calibrated on {len(scores)} held-out case(s)",
        f"the novelty threshold flags {observed[1]} ({observed[0]:.1%}); answers state a false-alarm rate of "
        f"{index.uncertainty.stated_rate():.1%}",
    ]
    if skipped:
        notes.append(f"{skipped} held-out case(s) with a diagnosis the archive lacks left out of the calibration")
    return notes


# A new case is a copy of another when its squared embedding distance to it is under this fraction of the
# archive's typical nearest-neighbour distance (the median over archive cases of the distance to their
# nearest other case): a fraction, because raw embeddings have no fixed scale. On the synthetic set with the
# tiny model, untrained (two seeds) and trained (research/duplicates/archive_near_duplicates.json), distinct
# images' nearest neighbours lie at 0.22 or more of that median, the server's own re-encoding of an upload at
# 0; at 0.1 no distinct image is caught, and 87-95% of JPEG quality-95 copies, 33-63% of quality-75 and
# 47-60% of 2x upscaled copies are.
NEAR_DUPLICATE = 0.1
SCALE_SAMPLE = 256  # archive cases whose nearest neighbours set the scale (spread evenly over the archive)


def near_copies(index: ArchiveIndex, emb: np.ndarray, ids: list[str]) -> dict[str, str]:
    """New case id -> the archive case (or earlier new case) it repeats, for the new cases ``ids`` with
    embeddings ``emb`` that lie within :data:`NEAR_DUPLICATE` of one."""
    if not len(emb):
        return {}
    limit = NEAR_DUPLICATE * _neighbour_scale(index)
    d, rows = index.search(emb, 1)
    copies = {
        iid: index.image_ids[r] for iid, dd, r in zip(ids, d[:, 0], rows[:, 0], strict=True) if r >= 0 and dd <= limit
    }
    kept: list[int] = []
    for i, iid in enumerate(ids):  # within the batch: the first of several copies is kept
        if iid in copies:
            continue
        if kept:
            gap = ((emb[kept] - emb[i]) ** 2).sum(1)
            j = int(gap.argmin())
            if gap[j] <= limit:
                copies[iid] = ids[kept[j]]
                continue
        kept.append(i)
    return copies


def _neighbour_scale(index: ArchiveIndex) -> float:
    """The median squared distance from an archive case to its nearest other case (0 for one case)."""
    if len(index) < 2:
        return 0.0
    sample = np.unique(np.linspace(0, len(index) - 1, min(SCALE_SAMPLE, len(index))).astype(np.int64))
    d, rows = index.search(np.asarray(index.embeddings[sample], np.float32), 2)
    own = rows == sample[:, None]
    other = np.where(own[:, :1], d[:, 1], d[:, 0])  # itself first unless an exact copy tied with it
    return float(np.median(other))


@dataclass
class QueryResult:
    prediction: Prediction
    image: np.ndarray  # the query as the network saw it (square, load_size)
    qams: np.ndarray  # (k, h, w)
    rams: np.ndarray  # (k, h, w)
    embedding: np.ndarray
    maps: np.ndarray  # the query's own evidence maps (D, h, w)
    # the query's novelty percentile (index.novelty) and the diagnoses of its prediction set at the predictor's
    # level, from ``prediction.uncertainty`` where not given; None from an index without them
    novelty: float | None = None
    prediction_set: list[str] | None = None

    def __post_init__(self) -> None:
        u = self.prediction.uncertainty or {}
        if self.novelty is None:
            self.novelty = u.get("novelty_percentile")
        if self.prediction_set is None:
            self.prediction_set = u.get("prediction_set")


class Predictor:
    """Loads once, answers many queries: ``predict`` -> :class:`QueryResult`.

    Every answer carries ``prediction.uncertainty`` (``index.uncertainty``): the query's novelty, whether it
    is unlike the archive (above ``novelty_threshold``, default the index's), calibrated probabilities and
    the prediction set at ``level``."""

    def __init__(
        self,
        model: EmbeddingNet,
        cfg: RunConfig,
        index: ArchiveIndex,
        *,
        level: float = DEFAULT_LEVEL,
        novelty_threshold: float | None = None,
    ):
        self.model = model.eval()
        self.cfg = cfg
        self.level = check_level(level)
        self.novelty_threshold = None if novelty_threshold is None else nv.check_threshold(novelty_threshold)
        self.vote = check_vote(cfg.model.vote)  # how the neighbours vote: the model's setting
        self.set_index(index)

    def set_index(self, index: ArchiveIndex) -> None:
        """Answer from ``index`` from now on (an archive that grew or shrank on disk)."""
        # every diagnosis of the archive, most frequent first: the classes a vote can speak about
        counts = Counter(index.diagnoses)
        positive = require_class(self.cfg.train.positive_class, index.diagnoses, "archive index")
        self.index = index
        self.counts = counts
        self.classes = sorted(counts, key=lambda d: (-counts[d], d))
        self.positive_class = positive
        # queries are embedded as the archive was (indexes from before the setting: single views)
        self.views = str(index.info.get("views", "none"))
        self._typical: float | None = None
        # novelty, calibration and prediction sets: the index's own (None for an index from before them)
        self.uncertainty = index.uncertainty
        self._archive_stats: np.ndarray | None = None

    def typical_distance(self, k: int = 10, sample: int = 200) -> float | None:
        """The median distance from an archive case to its k-th nearest other case (over ``sample`` cases
        drawn with a fixed seed): the yardstick the viewer sets each neighbour's distance against, so that
        "d = 0.33" reads as closer or further than usual for this archive. None for a tiny archive."""
        if self._typical is None and len(self.index) > k:
            index = self.index
            rows = np.sort(np.random.default_rng(0).permutation(len(index))[:sample])
            dist, _ = index.search(np.asarray(index.embeddings[rows], np.float32), k + 1)
            self._typical = float(np.median(dist[:, k]))  # column 0 is the case itself
        return self._typical

    @classmethod
    def load(cls, model_dir: str | Path, index_dir: str | Path) -> Predictor:
        model, cfg = load_model(model_dir, fold=True)
        index = ArchiveIndex.load(index_dir)
        want = index.info.get("model_digest")
        if want and want != weights_digest(model_dir):
            raise ArtifactError(
                f"{index_dir}: index was built with another model ({index.info.get('model_dir')}); rebuild it "
                f"with `chaiderm index --model {model_dir}`"
            )
        return cls(model, cfg, index)

    def square(self, image: np.ndarray) -> np.ndarray:
        """The image as the network sees it before cropping: square, ``load_size`` on a side."""
        return resize_square(image, self.cfg.model.load_size)

    def embed_square(self, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evidence maps (float32) and embeddings of squared images, with the index's views."""
        e, g = embed(
            self.model, squares, self.cfg.model.image_size, with_maps=True, views=self.views, maps_dtype=np.float32
        )
        return g, e

    def result_maps(self, rows: np.ndarray) -> np.ndarray:
        """Evidence maps of archive rows: stored ones if the index kept them, else recomputed."""
        if self.index.maps is not None:
            # torch widens float16 several times faster than numpy (7 against 2 ms for 10 rows of 8 members)
            return torch.from_numpy(np.asarray(self.index.maps[rows])).float().numpy()
        squares = np.stack([self.square(load_image(self.index.paths[r])) for r in rows])
        return self.embed_square(squares)[0]

    def predict(
        self,
        image: np.ndarray,
        *,
        k: int = 10,
        image_id: str = "query",
        evidence: bool = True,
        exclude_id: str | None = None,
        where: str | None = None,
        regions: list[Region] | None = None,
        similar: list[str] | None = None,
        not_similar: list[str] | None = None,
    ) -> QueryResult:
        """Classify one decoded RGB image by kNN vote, with its neighbours and QAM/RAM pairs.

        ``where`` (``index.filters``) restricts the archive: the k nearest among the cases that pass.
        ``regions`` (boxes in pixels of the square query image, ``index.refine``) search with the embedding
        pooled over the map cells under them; ``similar`` / ``not_similar`` (archive ids) move the query
        embedding toward / away from those cases (Rocchio). Maps follow both."""
        if k < 1:
            raise ValueError("k must be at least 1")
        excluded = self._same_case(exclude_id)
        rows, classes = self._candidates(where, excluded)
        square = self.square(image)
        g, e = self.embed_square(square[None])
        g_q, f_q = g[0], e[0]
        if regions:
            cells = region_cells(regions, self.cfg.model.load_size, self.cfg.model.image_size, g_q.shape[1:])
            f_q = g_q[:, cells].mean(axis=1)
            g_q = g_q * cells  # the maps show only what the search used
        if similar or not_similar:
            f_q = rocchio(f_q, self._embeddings_of(similar or []), self._embeddings_of(not_similar or []))
        pred, idx = self._vote(f_q[None], k, [image_id], rows, classes, excluded, image_statistics(square))[0]
        if evidence and len(idx):
            qams, rams = activation_map_pairs(g_q, self.result_maps(idx), f_q=f_q)
        else:
            qams = rams = np.zeros((0, 1, 1), np.float32)
        return QueryResult(pred, square, qams, rams, f_q, g_q)

    def predict_many(
        self,
        images: Sequence[np.ndarray],
        *,
        k: int = 10,
        image_ids: Sequence[str] | None = None,
        evidence: bool = False,
        where: str | None = None,
    ) -> list[QueryResult]:
        """Classify many decoded RGB images: embedded in batches (``models.inference.embed``, as ``evaluate``
        embeds), searched at once, each voted as :meth:`predict` votes. Evidence maps (QAM/RAM pairs and the
        query's own maps) only with ``evidence``; without, the results' map arrays are empty."""
        if k < 1:
            raise ValueError("k must be at least 1")
        ids = list(image_ids) if image_ids is not None else [f"query_{i}" for i in range(len(images))]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        if not len(images):
            return []
        rows, classes = self._candidates(where, set())
        squares = np.stack([self.square(im) for im in images])
        if evidence:
            g, e = self.embed_square(squares)
        else:
            e, _ = embed(self.model, squares, self.cfg.model.image_size, views=self.views)
            g = None
        none = np.zeros((0, 1, 1), np.float32)
        out = []
        votes = self._vote(e, k, ids, rows, classes, set(), image_statistics(squares))
        for q, (pred, idx) in enumerate(votes):
            if g is not None and len(idx):
                qams, rams = activation_map_pairs(g[q], self.result_maps(idx), f_q=e[q])
            else:
                qams = rams = none
            out.append(QueryResult(pred, squares[q], qams, rams, e[q], g[q] if g is not None else none))
        return out

    def _candidates(self, where: str | None, excluded: set[int]) -> tuple[np.ndarray | None, list[str]]:
        """The archive rows a ``where`` filter lets vote (None: all) and the classes they can speak about."""
        if not where:
            return None, self.classes
        flt = parse_where(where, self.index.diagnoses, self.index.metadata)
        passing = flt.mask(self.index.diagnoses, self.index.metadata)
        passing[list(excluded)] = False
        rows = np.flatnonzero(passing)
        if not len(rows):
            raise DataError(None, f"--where: no archive case passes '{where}'", code="bad_filter")
        present = {self.index.diagnoses[r] for r in rows}
        if self.positive_class not in present:
            raise DataError(
                None,
                f"--where: no {self.positive_class} among the {len(rows)} case(s) that pass '{where}': "
                "the vote could only say 0",
                code="bad_filter",
            )
        return rows, [c for c in self.classes if c in present]

    def _vote(
        self,
        queries: np.ndarray,
        k: int,
        image_ids: list[str],
        rows: np.ndarray | None,
        classes: list[str],
        excluded: set[int],
        stats: np.ndarray | None = None,
    ) -> list[tuple[Prediction, np.ndarray]]:
        """Each query embedding's k nearest archive cases (among ``rows``, never ``excluded``) and their vote:
        the one vote of :meth:`predict` and :meth:`predict_many`, with its novelty (from the whole archive,
        whatever ``rows``) and the rest of ``prediction.uncertainty``; ``stats``: the queries' image
        statistics."""
        e = np.ascontiguousarray(queries, dtype=np.float32)
        novelty = self.novelty(e, stats, excluded)
        if rows is not None:
            dists, idxs = self.index.search_among(e, k, rows)
        else:
            dists, idxs = self.index.search(e, k + len(excluded))
        out = []
        for image_id, dist, idx in zip(image_ids, dists, idxs, strict=True):
            if rows is None:
                keep = [j for j in range(len(idx)) if idx[j] >= 0 and idx[j] not in excluded][:k]
                dist, idx = dist[keep], idx[keep]
            probs = class_distribution(
                [self.index.diagnoses[i] for i in idx], classes, vote_weights(dist, self.vote) if len(idx) else None
            )
            neighbors = [
                Neighbor(
                    rank=r + 1,
                    image_id=self.index.image_ids[i],
                    diagnosis=self.index.diagnoses[i],
                    group=self.index.groups[i],
                    distance=float(d),
                    image_path=self.index.paths[i],
                    metadata=dict(self.index.metadata[i]),
                )
                for r, (i, d) in enumerate(zip(idx, dist, strict=True))
            ]
            pred = Prediction(image_id, self.positive_class, probs, len(idx), neighbors, vote=self.vote)
            pct = novelty[len(out)]
            if self.uncertainty is None or pct is None:
                pred.uncertainty = unc.unknown()
            else:
                pred.uncertainty = self.uncertainty.assess(
                    pct, probs, level=self.level, threshold=self.novelty_threshold, key=unc.set_key(e[len(out)])
                )
            out.append((pred, idx))
        return out

    def novelty(self, queries: np.ndarray, stats: np.ndarray | None, excluded: set[int] = frozenset()) -> list:
        """Each query embedding's novelty percentile (None where the index has no reference)."""
        u = self.uncertainty
        if u is None or (u.method == "mean+image" and stats is None):
            return [None] * len(queries)
        d, i = self.index.search(np.ascontiguousarray(queries, np.float32), u.k + len(excluded))
        dist, _ = nv.keep_others(d, i, [set(excluded)] * len(queries), u.k)
        img = None
        if u.method == "mean+image":
            if self._archive_stats is None:
                self._archive_stats = u.stat_scale.apply(self.index.image_stats)
            img = nv.image_distances(self._archive_stats, u.stat_scale.apply(stats))
        return [float(p) for p in u.novelty(dist, img)]

    def warm_up(self, n: int = 3, k: int = 10) -> float:
        """Answer ``n`` queries of a plain grey image with ``k`` evidence pairs; the median milliseconds of
        the queries after the first (which pays for torch's one-time set-up). A server calls it before its
        first user: that user does not pay the set-up, and the operator learns what a query costs on this
        machine, on the threads a request gets."""
        import time

        grey = np.full((self.cfg.model.load_size,) * 2 + (3,), 128, np.uint8)
        k = max(1, min(k, len(self.index)))
        times = []
        for _ in range(max(2, n)):
            t = time.perf_counter()
            self.predict(grey, k=k, image_id="warm-up")
            times.append((time.perf_counter() - t) * 1000)
        self.typical_distance()  # the viewer's distance scale, computed once before the first user
        return float(np.median(times[1:]))

    def _embeddings_of(self, image_ids: list[str]) -> np.ndarray:
        if len(image_ids) > MAX_EXAMPLES:
            raise DataError(None, f"at most {MAX_EXAMPLES} marked cases refine a query", code="bad_region")
        rows = []
        for iid in image_ids:
            row = self.index.row_of(iid)
            if row is None:
                raise DataError(None, f"no archive case '{iid}' to refine with", code="bad_region")
            rows.append(row)
        dim = self.index.embeddings.shape[1]
        return np.asarray(self.index.embeddings[rows], dtype=np.float32).reshape(len(rows), dim)

    def _same_case(self, image_id: str | None) -> set[int]:
        """Rows an archive case must not find: itself and other images of its lesion (same lesion_id)."""
        row = None if image_id is None else self.index.row_of(image_id)
        if row is None:
            return set()
        lesion = self.index.metadata[row].get("lesion_id")
        if not lesion:
            return {row}
        return {i for i, m in enumerate(self.index.metadata) if m.get("lesion_id") == lesion} | {row}

    def neighbor_images(self, result: QueryResult) -> list[np.ndarray]:
        """The listed neighbours' images, squared like the query, for reports."""
        try:
            return [self.square(load_image(n.image_path)) for n in result.prediction.neighbors]
        except DataError as e:
            if e.code != "missing":
                raise
            raise ArtifactError(
                f"{e}: the index's archive images are not where it expects them; an index keeps their "
                "places relative to itself, so move it together with its archive folder, or index again"
            ) from None

    @staticmethod
    def listed_maps(result: QueryResult, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The QAM and RAM computed with the query, if ``image_id`` is one of its listed neighbours."""
        for n, qam, ram in zip(result.prediction.neighbors, result.qams, result.rams, strict=False):
            if n.image_id == image_id:
                return qam, ram
        return None

    def pair_maps(self, result: QueryResult, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """QAM and RAM between a query and any archive image (listed neighbour or not)."""
        row = self.index.row_of(image_id)
        if row is None:
            raise KeyError(image_id)
        listed = self.listed_maps(result, image_id)
        if listed is not None:
            return listed
        qams, rams = activation_map_pairs(result.maps, self.result_maps(np.array([row])), f_q=result.embedding)
        return qams[0], rams[0]

    def embed_table(self, table: ImageTable, *, skip_bad: bool = False) -> tuple[np.ndarray, list[int]]:
        images, ok, _ = prepare(table.paths, self.cfg.model.load_size, skip_bad=skip_bad)
        return embed(self.model, images, self.cfg.model.image_size, views=self.views)[0], ok
