"""Answering a query in the viewer: decoding, searching the request's one snapshot of the archive, stored
queries, and the JSON answer. Thin adapters over :class:`chaiderm.pipeline.Predictor`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
from fastapi import HTTPException

from chaiderm.data.images import UPLOAD_FORMATS
from chaiderm.errors import ArtifactError, DataError
from chaiderm.index.archive import ArchiveIndex
from chaiderm.index.uncertainty import set_key
from chaiderm.interfaces import IDENTIFYING
from chaiderm.pipeline import QueryResult, load_image
from chaiderm.web.auth import User
from chaiderm.web.dependencies import Snapshot, ViewerState
from chaiderm.web.refinement import NO_REFINE, Refine
from chaiderm.web.schemas import NeighborOut, QueryOut, UncertaintyOut

K_MIN, K_MAX = 1, 40
FAST_PNG = 1  # zlib level for what the server encodes per request (render.to_png_bytes)


def decode_here(snap: Snapshot, data: bytes, name: str) -> np.ndarray:
    """Decoded and shrunk while decoded; a bad upload raises its DataError (its code sets the status)."""
    return load_image(data, name=name, fit=snap.predictor.cfg.model.load_size, formats=UPLOAD_FORMATS)


def decode(state: ViewerState, snap: Snapshot, data: bytes, name: str) -> np.ndarray:
    """Decode on the viewer's own decoding threads (at most MAX_DECODES at once)."""
    return state.decoder.submit(decode_here, snap, data, name).result()


def predict(
    state: ViewerState,
    snap: Snapshot,
    query_id: str,
    image: np.ndarray,
    k: int,
    exclude: str | None,
    where: str | None = None,
    refine: Refine = NO_REFINE,
) -> QueryResult:
    try:
        with state.slot():
            res = snap.predictor.predict(
                image,
                k=k,
                image_id=query_id,
                exclude_id=exclude,
                where=where,
                regions=list(refine.regions),
                similar=list(refine.similar),
                not_similar=list(refine.not_similar),
            )
    except DataError as e:
        if e.code in ("bad_filter", "bad_region"):
            raise
        # an index without stored maps whose archive image has gone: the server's archive is at fault
        raise ArtifactError(f"the archive is incomplete: {e}") from None
    state.remember(refine.key(query_id), res, snap.generation)
    return res


def to_out(
    query_id: str,
    res: QueryResult,
    archive_id: str | None,
    where: str | None = None,
    refine: Refine = NO_REFINE,
    typical_distance: float | None = None,
    level: float | None = None,
    snap: Snapshot | None = None,
) -> QueryOut:
    """The JSON answer; with ``level`` (and the ``snap`` that answered), the prediction set at that level
    instead of the predictor's default."""
    p = res.prediction
    u = p.uncertainty
    model = snap.predictor.uncertainty if snap is not None else None
    if level is not None and model is not None and u and u.get("novelty_percentile") is not None:
        u = model.assess(
            u["novelty_percentile"],
            p.class_probabilities,
            level=level,
            # the index's own threshold stays the index's, with the rate it states; another is an override
            threshold=None if u.get("novelty_threshold") == model.threshold else u.get("novelty_threshold"),
            key=set_key(res.embedding),
        )
    q = quote(query_id, safe="")
    extra = ("?" + urlencode(refine.params())) if refine else ""
    return QueryOut(
        query_id=query_id,
        positive_class=p.positive_class,
        positive_probability=p.positive_probability,
        melanoma_probability=p.melanoma_probability,
        class_probabilities=p.class_probabilities,
        summary=p.summary(),
        vote=p.vote,
        archive_id=archive_id,
        where=where or None,
        region=refine.params().get("region"),
        similar=list(refine.similar),
        not_similar=list(refine.not_similar),
        k=p.k,
        typical_distance=typical_distance,
        query_image_url=f"/api/queries/{q}/image.png",
        uncertainty=UncertaintyOut(**u) if u else None,
        neighbors=[
            NeighborOut(
                rank=n.rank,
                image_id=n.image_id,
                diagnosis=n.diagnosis,
                group=n.group,
                distance=n.distance,
                # identifiers stay on the server: they keep a query away from its own lesion, no viewer needs them
                metadata={k: v for k, v in n.metadata.items() if k not in IDENTIFYING},
                image_url=f"/api/images/{quote(n.image_id, safe='')}",
                qam_url=f"/api/maps/{q}/{quote(n.image_id, safe='')}/qam.png{extra}",
                ram_url=f"/api/maps/{q}/{quote(n.image_id, safe='')}/ram.png{extra}",
            )
            for n in p.neighbors
        ],
    )


def archive_file(index: ArchiveIndex, image_id: str) -> tuple[bytes, Path]:
    """A case's image and its path, both from the one index given: an index swapped meanwhile (a case
    removed) can never pair one case's row with another index's paths."""
    row = index.row_of(image_id)
    if row is None:
        raise HTTPException(404, detail=f"no archive image '{image_id}'")
    path = Path(index.paths[row])
    try:
        return path.read_bytes(), path
    except OSError:
        raise HTTPException(404, detail=f"archive image '{image_id}' is missing from the archive folder") from None


def remember_query(
    state: ViewerState, user: User, data: bytes, decoded: np.ndarray, exclude: str | None = None, *, hold: bool = True
) -> str:
    """Store a query under the id of the bytes received, as ``--keep-queries`` says: the pixels as decoded,
    re-encoded without the file's metadata (EXIF, a DICOM header with the patient's name), kept on disk, or
    with ``--keep-queries 0`` never written and, where ``hold``, held in memory for the page's next k or
    refinement. Returns the query id."""
    from chaiderm.pipeline import to_png_bytes
    from chaiderm.storage import content_id

    query_id = state.store.add_query(
        to_png_bytes(decoded, FAST_PNG),
        exclude,
        query_id=content_id(data),
        keep_image=state.keep_queries_days != 0,
        owner=user.account or None,
        user=user.name,
    )
    if state.keep_queries_days == 0 and hold:
        state.hold(query_id, decoded)
    return query_id


def own(state: ViewerState, user: User, query_id: str) -> None:
    """Another user's query is answered as unknown (404, not 403: whether an id exists is not told);
    admins see every query, and so does the one person of a server without sign-in."""
    if not user.can("admin") and not state.store.owns(query_id, user.account):
        raise HTTPException(404, detail=f"unknown query '{query_id}'")


def known(state: ViewerState, query_id: str) -> tuple[str, str | None]:
    """The query's state in the database (``FeedbackStore.query_state``) and its archive id; 404 when it is
    unknown. A purged image is forgotten from memory too: a purge (the server's or `chaiderm purge`) ends
    every way of seeing it, cached results and maps included."""
    rec = state.store.query_state(query_id)
    if rec is None:
        raise HTTPException(404, detail=f"unknown query '{query_id}'")
    status, archive_id = rec
    if status == "purged" and archive_id is None:
        state.forget(query_id)
        raise HTTPException(
            410, detail="this query's image is no longer kept (the server's retention policy): upload it again"
        )
    return status, archive_id


def query_image(state: ViewerState, snap: Snapshot, query_id: str) -> tuple[np.ndarray, str | None]:
    """The decoded query image to search with, and its archive id (an archive case excludes itself)."""
    status, archive_id = known(state, query_id)
    if archive_id is not None and status != "kept":  # an archive case: its image is still in the archive
        data = archive_file(snap.index, archive_id)[0]
    elif status == "not_kept":
        image = state.holding(query_id)
        if image is None:
            raise HTTPException(
                410, detail="this server stores no query images and no longer holds this one: upload it again"
            )
        return image, archive_id
    else:
        rec = state.store.query_record(query_id)
        if rec is None or rec[0] is None:  # purged between the two reads
            raise HTTPException(410, detail="this query's image is no longer kept: upload it again")
        data = rec[0]
    return decode(state, snap, data, f"stored query '{query_id}'"), archive_id


def result(state: ViewerState, snap: Snapshot, query_id: str, refine: Refine = NO_REFINE) -> QueryResult:
    """The query's result on this snapshot: cached, or recomputed from the stored image (excluding itself)."""
    known(state, query_id)  # purged since it was cached: 410, and the cached result is dropped
    res = state.recall(refine.key(query_id), snap.generation)
    if res is None:
        image, archive_id = query_image(state, snap, query_id)
        res = predict(state, snap, query_id, image, 10, archive_id, None, refine)
    return res
