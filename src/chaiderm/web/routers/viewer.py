"""Evidence viewer routes: thin adapters over :class:`chaiderm.pipeline.Predictor`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chaiderm.data.diagnoses import NAMES, VOCABULARY, canonical
from chaiderm.data.images import UPLOAD_FORMATS
from chaiderm.data.records import ImageTable
from chaiderm.errors import ChaidermError, DataError
from chaiderm.evidence.render import MAP_STYLES
from chaiderm.index.archive import ArchiveIndex, cases_dir, discard_added_images
from chaiderm.index.lock import IndexBusyError, open_for_writing
from chaiderm.index.refine import Region, parse_regions
from chaiderm.interfaces import IDENTIFYING
from chaiderm.pipeline import QueryResult, add_to_index, load_image, render_heatmap, to_png_bytes
from chaiderm.storage import ACTIONS, Entry, content_id, parse_time
from chaiderm.web.access import Admin, Expert, Viewer, client_address, current_user
from chaiderm.web.auth import LOCAL, LOCAL_ROLE, User
from chaiderm.web.dependencies import ViewerState, get_state
from chaiderm.web.schemas import ERRORS, FeedbackIn, FeedbackOut, NeighborOut, QueryOut
from chaiderm.web.security import page as static_page

router = APIRouter(responses=ERRORS)
State = Annotated[ViewerState, Depends(get_state)]
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
K_MIN, K_MAX = 1, 40
# declared in the OpenAPI schema, so that a client knows every value the server takes
MapStyle = Literal[MAP_STYLES]  # type: ignore[valid-type]
AuditAction = Literal[ACTIONS]  # type: ignore[valid-type]
MAP_SIDE = 320  # the page shows maps at 320 px
FAST_PNG = 1  # zlib level for what the server encodes per request (render.to_png_bytes)
STATUS = {"not_image": 415, "too_large": 413, "bad_shape": 422, "empty": 400, "corrupt": 400, "unavailable": 503}
# an archive change waits this long for another writer of the index (`chaiderm archive`, another server), then
# answers 503 with Retry-After: a request thread is not held for a CLI add that may run for minutes
WRITER_WAIT_S = 10.0
RETRY_AFTER_S = 5
log = logging.getLogger("chaiderm.serve")


def audit(
    request: Request, action: str, target: str | None = None, detail: str | None = None, status: int = 200
) -> None:
    """Record who did this; a database that cannot record it refuses the action (503): nothing is seen
    or changed unrecorded."""
    _store(request.app.state.access.audit.record, action, **_who(request), target=target, status=status, detail=detail)


def _who(request: Request) -> dict[str, str]:
    """The audit columns that say who acted: user, role and address."""
    user = current_user(request)
    return {"user": user.name, "role": user.role, "address": client_address(request.scope)}


@router.get("/", response_class=HTMLResponse)
def page(user: Viewer) -> HTMLResponse:
    return static_page("viewer.html")


@router.get("/healthz")
def healthz(state: State) -> dict:
    return {"status": "ok", "archive": len(state.predictor.index)}


@router.get("/api/info")
def info(state: State, user: Viewer, limit: Annotated[int, Query(ge=0, le=5000)] = 200) -> dict:
    """What is loaded: the model, the archive (size, diagnoses, whether it is synthetic) and its first cases."""
    idx = state.predictor.index
    cases = [{"image_id": i, "diagnosis": d} for i, d in zip(idx.image_ids[:limit], idx.diagnoses[:limit], strict=True)]
    return {**state.info, "cases": cases}


def _decode_here(state: ViewerState, data: bytes, name: str) -> np.ndarray:
    try:
        return load_image(data, name=name, fit=state.predictor.cfg.model.load_size, formats=UPLOAD_FORMATS)
    except DataError as e:
        raise HTTPException(STATUS.get(e.code, 400), detail=str(e)) from None


def _decode(state: ViewerState, data: bytes, name: str) -> np.ndarray:
    """Decode on the viewer's own decoding threads (at most MAX_DECODES at once), shrunk while decoded."""
    return state.decoder.submit(_decode_here, state, data, name).result()


def _store(call, *args, **kwargs):
    """Run a database call; a locked or failing database is a 503 the page shows, never a hang."""
    try:
        return call(*args, **kwargs)
    except DataError as e:
        if e.code != "unavailable":
            raise
        raise HTTPException(
            503, detail="the server's database is busy or unavailable; nothing was saved, try again"
        ) from None


@dataclass(frozen=True)
class Refine:
    """How a query is refined: boxes drawn on it, and archive cases marked similar / not similar. Part of
    every URL derived from the result (maps included), so a map always explains the ranking shown."""

    regions: tuple[Region, ...] = ()
    similar: tuple[str, ...] = ()
    not_similar: tuple[str, ...] = ()

    @classmethod
    def parse(cls, region: str | None, similar: str | None, not_similar: str | None, side: int) -> Refine:
        try:
            regions = tuple(parse_regions(region, side))
        except DataError as e:
            raise HTTPException(422, detail=str(e)) from None
        sim, dis = _id_list(similar), _id_list(not_similar)
        if set(sim) & set(dis):
            raise HTTPException(422, detail="a case cannot be marked both similar and not similar")
        return cls(regions, sim, dis)

    def __bool__(self) -> bool:
        return bool(self.regions or self.similar or self.not_similar)

    def params(self) -> dict[str, str]:
        out = {}
        if self.regions:
            out["region"] = ";".join(map(str, self.regions))
        if self.similar:
            out["similar"] = ",".join(self.similar)
        if self.not_similar:
            out["not_similar"] = ",".join(self.not_similar)
        return out

    def key(self, query_id: str) -> str:
        return query_id + ("?" + urlencode(self.params()) if self else "")


NO_REFINE = Refine()


def _id_list(value: str | None) -> tuple[str, ...]:
    """``"a,b,a"`` -> ``("a", "b")``: comma-separated archive ids, first occurrence kept."""
    return tuple(dict.fromkeys(i for i in (value or "").split(",") if i))


def _predict(
    state: ViewerState,
    query_id: str,
    image: np.ndarray,
    k: int,
    exclude: str | None,
    where: str | None = None,
    refine: Refine = NO_REFINE,
) -> QueryResult:
    try:
        with state.inference() as predictor:
            res = predictor.predict(
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
            raise HTTPException(422, detail=str(e)) from None
        # an index without stored maps whose archive image has gone
        raise HTTPException(500, detail=f"the archive is incomplete: {e}") from None
    state.remember(refine.key(query_id), res)
    return res


def _to_out(
    query_id: str,
    res: QueryResult,
    archive_id: str | None,
    where: str | None = None,
    refine: Refine = NO_REFINE,
    typical_distance: float | None = None,
) -> QueryOut:
    p = res.prediction
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


def _archive_file(index: ArchiveIndex, image_id: str) -> tuple[bytes, Path]:
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


def _archive_bytes(state: ViewerState, image_id: str) -> bytes:
    return _archive_file(state.predictor.index, image_id)[0]


@router.post("/api/query", response_model=QueryOut)
async def post_query(
    state: State,
    request: Request,
    user: Viewer,
    image: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int, Form(ge=K_MIN, le=K_MAX)] = 10,
    archive_id: Annotated[str | None, Form(max_length=256)] = None,
    where: Annotated[str | None, Form(max_length=500)] = None,
    region: Annotated[str | None, Form(max_length=400)] = None,
) -> QueryOut:
    refine = Refine.parse(region, None, None, state.predictor.cfg.model.load_size)
    if image is not None:
        data = await image.read(state.max_upload + 1)
        if len(data) > state.max_upload:
            raise HTTPException(413, detail=f"upload over the {state.max_upload / 1_000_000:g} MB limit")
        name = "uploaded image" + (f" '{image.filename}'" if image.filename else "")
    elif archive_id is not None:
        data = _archive_bytes(state, archive_id)
        name = f"archive image '{archive_id}'"
    else:
        raise HTTPException(422, detail="send an image file (field 'image') or an archive_id")
    decoded = await asyncio.wrap_future(state.decoder.submit(_decode_here, state, data, name))
    # kept: the pixels as decoded (orientation applied), re-encoded without the upload's EXIF or other
    # metadata (GPS, camera owner, dates); the id stays that of the bytes received
    kept = await run_in_threadpool(to_png_bytes, decoded, FAST_PNG)
    query_id = await run_in_threadpool(
        _store,
        state.store.add_query,
        kept,
        archive_id if image is None else None,
        query_id=content_id(data),
        keep_image=state.keep_queries_days != 0,
        owner=user.account or None,
        user=user.name,
    )
    if state.keep_queries_days == 0 and image is not None:
        state.hold(query_id, decoded)  # in memory only, for this page's next k or refinement
    exclude = archive_id if image is None else None
    await run_in_threadpool(audit, request, "query", query_id, f"archive case {exclude}" if exclude else None)
    res = await run_in_threadpool(_predict, state, query_id, decoded, k, exclude, where, refine)
    return _to_out(query_id, res, exclude, where, refine, state.predictor.typical_distance())


def _own(state: ViewerState, user: User, query_id: str) -> None:
    """Another user's query is answered as unknown (404, not 403: whether an id exists is not told);
    admins see every query, and so does the one person of a server without sign-in."""
    if not user.can("admin") and not _store(state.store.owns, query_id, user.account):
        raise HTTPException(404, detail=f"unknown query '{query_id}'")


def _known(state: ViewerState, query_id: str) -> tuple[str, str | None]:
    """The query's state in the database (``FeedbackStore.query_state``) and its archive id; 404 when it is
    unknown. A purged image is forgotten from memory too: a purge (the server's or `chaiderm purge`) ends
    every way of seeing it, cached results and maps included."""
    rec = _store(state.store.query_state, query_id)
    if rec is None:
        raise HTTPException(404, detail=f"unknown query '{query_id}'")
    status, archive_id = rec
    if status == "purged" and archive_id is None:
        state.forget(query_id)
        raise HTTPException(
            410, detail="this query's image is no longer kept (the server's retention policy): upload it again"
        )
    return status, archive_id


def _query_image(state: ViewerState, query_id: str) -> tuple[np.ndarray, str | None]:
    """The decoded query image to search with, and its archive id (an archive case excludes itself)."""
    status, archive_id = _known(state, query_id)
    if archive_id is not None and status != "kept":  # an archive case: its image is still in the archive
        data = _archive_bytes(state, archive_id)
    elif status == "not_kept":
        image = state.holding(query_id)
        if image is None:
            raise HTTPException(
                410, detail="this server stores no query images and no longer holds this one: upload it again"
            )
        return image, archive_id
    else:
        rec = _store(state.store.query_record, query_id)
        if rec is None or rec[0] is None:  # purged between the two reads
            raise HTTPException(410, detail="this query's image is no longer kept: upload it again")
        data = rec[0]
    return _decode(state, data, f"stored query '{query_id}'"), archive_id


@router.get("/api/query/{query_id}", response_model=QueryOut)
def get_query(
    query_id: str,
    state: State,
    request: Request,
    user: Viewer,
    k: Annotated[int, Query(ge=K_MIN, le=K_MAX)] = 10,
    where: Annotated[str | None, Query(max_length=500)] = None,
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
) -> QueryOut:
    """The same query with another k, filter or refinement (regions of the query; cases marked similar or
    not similar), without uploading it again (an archive case still excludes itself)."""
    _own(state, user, query_id)
    refine = Refine.parse(region, similar, not_similar, state.predictor.cfg.model.load_size)
    image, archive_id = _query_image(state, query_id)
    audit(request, "view_query", query_id, f"k={k}" + (f" refined {refine.params()}" if refine else ""))
    res = _predict(state, query_id, image, k, archive_id, where, refine)
    return _to_out(query_id, res, archive_id, where, refine, state.predictor.typical_distance())


def _result(state: ViewerState, query_id: str, refine: Refine = NO_REFINE) -> QueryResult:
    _known(state, query_id)  # purged since it was cached: 410, and the cached result is dropped
    res = state.recall(refine.key(query_id))
    if res is None:  # evicted from the cache: recompute from the stored image, excluding itself again
        image, archive_id = _query_image(state, query_id)
        res = _predict(state, query_id, image, 10, archive_id, None, refine)
    return res


@router.get("/api/queries/{query_id}/image.png")
def query_image(query_id: str, state: State, request: Request, user: Viewer) -> Response:
    _own(state, user, query_id)
    png = to_png_bytes(_result(state, query_id).image, FAST_PNG)
    audit(request, "view_query", query_id, "image")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/maps/{query_id}/{image_id}/{kind}.png")
def evidence_map(
    query_id: str,
    image_id: str,
    kind: Literal["qam", "ram"],
    state: State,
    request: Request,
    user: Viewer,
    style: Annotated[MapStyle, Query()] = "contour",
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
) -> Response:
    _own(state, user, query_id)
    res = _result(state, query_id, Refine.parse(region, similar, not_similar, state.predictor.cfg.model.load_size))
    try:
        listed = state.predictor.listed_maps(res, image_id)
        if listed is not None:  # a listed neighbour: its pair was computed with the query, no slot needed
            qam, ram = listed
        else:
            with state.inference() as predictor:  # any other case: its maps, or a forward pass without them
                qam, ram = predictor.pair_maps(res, image_id)
    except KeyError:
        raise HTTPException(404, detail=f"no archive image '{image_id}'") from None
    except DataError as e:  # maps not stored and the archive image is gone
        raise HTTPException(404, detail=str(e)) from None
    side = max(res.image.shape[0], MAP_SIDE)  # outlines drawn at the size shown, not scaled up jagged
    png = to_png_bytes(render_heatmap(qam if kind == "qam" else ram, (side, side), style=style), FAST_PNG)
    audit(request, "view_map", f"{query_id}/{image_id}", kind)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/images/{image_id}")
def archive_image(image_id: str, state: State, request: Request, user: Viewer) -> Response:
    """Archive images by id only: the id is looked up, never joined into a path."""
    data, path = _archive_file(state.predictor.index, image_id)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    audit(request, "view_image", image_id)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/api/archive")
def archive_list(state: State, user: Viewer, limit: Annotated[int, Query(ge=0, le=5000)] = 200) -> list[dict]:
    return info(state, user, limit)["cases"]


@router.post("/api/feedback", response_model=FeedbackOut)
def feedback(body: FeedbackIn, state: State, request: Request, user: Expert) -> FeedbackOut:
    _own(state, user, body.query_id)
    if state.predictor.index.row_of(body.image_id) is None:
        raise HTTPException(404, detail=f"no archive image '{body.image_id}'")
    role = LOCAL_ROLE if user is LOCAL else user.role
    try:
        fid = _store(state.store.add_feedback, body.query_id, body.image_id, body.relevant, user=user.name, role=role)
    except KeyError:
        raise HTTPException(404, detail=f"unknown query '{body.query_id}'") from None
    audit(request, "feedback", f"{body.query_id}/{body.image_id}", "similar" if body.relevant else "not similar")
    return FeedbackOut(ok=True, feedback_id=fid)


def _cases_dir(state: ViewerState) -> Path:
    """Where cases added through the server keep their images (``index.archive.cases_dir``)."""
    if state.index_dir is None:
        raise HTTPException(409, detail="this server was not started on an index folder it can change")
    return cases_dir(state.index_dir)


@contextlib.contextmanager
def _writing(state: ViewerState) -> Iterator[ArchiveIndex]:
    """The index as it is on disk now, held under its writer lock for the block (``index.lock``): changed
    from there, not from this server's copy, which a `chaiderm archive` command may have overtaken."""
    with contextlib.ExitStack() as stack:
        try:
            index = stack.enter_context(open_for_writing(state.index_dir, WRITER_WAIT_S))
        except IndexBusyError:
            raise HTTPException(
                503,
                detail="another writer (a `chaiderm archive` command or another server) is changing the archive; "
                "nothing was changed, try again in a few seconds",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except ChaidermError as e:
            raise HTTPException(500, detail=f"the archive on disk cannot be read: {e}") from None
        yield index


def _save(
    state: ViewerState, request: Request, new: ArchiveIndex, action: str, target: str, status: int, detail: str | None
) -> None:
    """Save ``new`` over the index folder and record the outcome with it: the database is reserved first, so
    one that cannot record refuses the change before it is made (503), and the row follows the save."""
    saved = False
    try:
        with request.app.state.access.audit.change() as record:
            new.save(state.index_dir)
            saved = True
            record(action, **_who(request), target=target, status=status, detail=detail)
    except DataError as e:
        if saved:  # the commit after a save failed (disk error): the change stands, the server's log says so
            log.error("%s '%s' was saved but its audit row could not be written: %s", action, target, e)
            return
        if e.code != "unavailable":
            raise
        raise HTTPException(
            503, detail="the server's database is busy or unavailable; nothing was saved, try again"
        ) from None
    except OSError as e:
        raise HTTPException(500, detail=f"the archive could not be saved ({e.strerror}); nothing was changed") from None


def _refused(request: Request, action: str, target: str, e: HTTPException) -> None:
    """A refused or failed archive change is recorded with its status; a database that cannot record it
    does not change the answer (nothing was changed)."""
    with contextlib.suppress(HTTPException, DataError):
        audit(request, action, target[:128], str(e.detail), status=e.status_code)


def _diagnosis(index: ArchiveIndex, raw: str) -> str:
    """A diagnosis the archive already has or the vocabulary knows (canonical name); free text would
    silently become a class of its own in every vote."""
    accepted = sorted(set(index.diagnoses) | set(NAMES))
    try:
        name = canonical(raw)
    except DataError:
        name = ""
    if name not in accepted:
        raise HTTPException(
            422,
            detail=f"diagnosis: {raw!r} is neither a diagnosis of this archive nor one of the vocabulary "
            f"({VOCABULARY}); give one of: {', '.join(accepted)}",
        )
    return name


@router.post("/api/archive", status_code=201)
async def archive_add(
    state: State,
    request: Request,
    user: Admin,
    image: Annotated[UploadFile, File()],
    # the pattern is declared for clients but checked in the route, so that a refusal is audited like the rest
    image_id: Annotated[str, Form(max_length=128, json_schema_extra={"pattern": CASE_ID.pattern})],
    diagnosis: Annotated[str, Form(min_length=1, max_length=100)],
) -> dict:
    """Add one case (image + diagnosis) to the archive: embedded with the served model, saved at once. A 201
    means the case is in the index on disk; every answer is in the audit log with its status."""
    try:
        if not CASE_ID.match(image_id):
            raise HTTPException(
                422, detail="image_id: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        data = await image.read(state.max_upload + 1)
        if len(data) > state.max_upload:
            raise HTTPException(413, detail=f"upload over the {state.max_upload / 1_000_000:g} MB limit")
        decoded = await asyncio.wrap_future(state.decoder.submit(_decode_here, state, data, f"image for '{image_id}'"))
        return await run_in_threadpool(_add_case, state, request, decoded, image_id, diagnosis)
    except HTTPException as e:
        await run_in_threadpool(_refused, request, "archive_add", image_id, e)
        raise


def _add_case(state: ViewerState, request: Request, decoded: np.ndarray, image_id: str, diagnosis: str) -> dict:
    folder = _cases_dir(state)
    path = folder / f"{image_id}.png"
    with state.reload_lock, _writing(state) as index:
        if index.row_of(image_id) is not None:
            raise HTTPException(409, detail=f"the archive already holds a case '{image_id}'")
        diagnosis = _diagnosis(index, diagnosis)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_png_bytes(decoded))  # re-encoded: no metadata of the upload is kept
        saved = False
        try:
            table = ImageTable([image_id], [str(path)], [diagnosis], source="added through chaiderm serve")
            with state.inference() as predictor:
                new, messages = add_to_index(index, predictor.model, predictor.cfg, table)
            if new is index:
                raise HTTPException(409, detail="; ".join(messages) or "nothing was added")
            _save(state, request, new, "archive_add", image_id, 201, diagnosis)
            saved = True
        except ChaidermError as e:
            raise HTTPException(422, detail=str(e)) from None
        finally:
            if not saved:  # a refused or failed add leaves no image behind
                path.unlink(missing_ok=True)
        state.adopt(new)
    return {"image_id": image_id, "diagnosis": diagnosis, "archive_size": len(new)}


@router.delete("/api/archive/{image_id}")
def archive_remove(image_id: str, state: State, request: Request, user: Admin) -> dict:
    """Remove one case; an image the server stored for it is deleted once the smaller index is saved."""
    try:
        return _remove_case(state, request, image_id)
    except HTTPException as e:
        _refused(request, "archive_remove", image_id, e)
        raise


def _remove_case(state: ViewerState, request: Request, image_id: str) -> dict:
    _cases_dir(state)
    with state.reload_lock, _writing(state) as index:
        row = index.row_of(image_id)
        if row is None:
            raise HTTPException(404, detail=f"no archive image '{image_id}'")
        if len(index) == 1:
            raise HTTPException(409, detail="the archive's last case cannot be removed")
        try:
            new = index.remove([image_id])
            state.check(new)  # refused if it would leave no case of the positive class
        except ChaidermError as e:
            raise HTTPException(409, detail=str(e)) from None
        _save(state, request, new, "archive_remove", image_id, 200, None)
        state.adopt(new)
        discard_added_images(state.index_dir, [index.paths[row]])
    return {"removed": image_id, "archive_size": len(new)}


def _time_arg(name: str, value: str | None) -> float | None:
    try:
        return None if value is None else parse_time(value)
    except ValueError as e:
        raise HTTPException(422, detail=f"{name}: {e}") from None


@router.get("/api/audit", response_model=list[Entry])
def audit_log(
    state: State,
    request: Request,
    user: Admin,
    since: Annotated[str | None, Query(max_length=20)] = None,
    until: Annotated[str | None, Query(max_length=20)] = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[AuditAction | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[Entry]:
    entries = _store(
        request.app.state.access.audit.entries,
        since=_time_arg("since", since),
        until=_time_arg("until", until),
        user=who,
        action=action,
        limit=limit,
    )
    audit(request, "audit_read", None, f"{len(entries)} entries")
    return entries


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, user: Admin) -> Response:
    """Prometheus text format (scrape with an admin's bearer token)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
