"""Evidence viewer routes: thin adapters over :class:`chaiderm.pipeline.Predictor`."""

from __future__ import annotations

import asyncio
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chaiderm.data.audit import ACTIONS, Entry, parse_time
from chaiderm.data.diagnoses import canonical
from chaiderm.data.feedback import content_id
from chaiderm.data.images import UPLOAD_FORMATS
from chaiderm.data.records import ImageTable
from chaiderm.errors import ChaidermError, DataError
from chaiderm.evidence.render import MAP_STYLES
from chaiderm.index.refine import Region, parse_regions
from chaiderm.pipeline import QueryResult, add_to_index, load_image, render_heatmap, to_png_bytes
from chaiderm.web.access import Admin, Expert, Viewer, client_address, current_user
from chaiderm.web.auth import LOCAL, LOCAL_ROLE
from chaiderm.web.dependencies import ViewerState, get_state
from chaiderm.web.schemas import ERRORS, FeedbackIn, FeedbackOut, NeighborOut, QueryOut
from chaiderm.web.security import page as static_page

router = APIRouter(responses=ERRORS)
State = Annotated[ViewerState, Depends(get_state)]
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
K_MIN, K_MAX = 1, 40
MAP_SIDE = 320  # the page shows maps at 320 px
FAST_PNG = 1  # zlib level for what the server encodes per request (render.to_png_bytes)
STATUS = {"not_image": 415, "too_large": 413, "bad_shape": 413, "empty": 400, "corrupt": 400, "unavailable": 503}


def audit(request: Request, action: str, target: str | None = None, detail: str | None = None) -> None:
    """Record who did this; a database that cannot record it refuses the action (503): nothing is seen
    or changed unrecorded."""
    user = current_user(request)
    _store(
        request.app.state.access.audit.record,
        action,
        user=user.name,
        role=user.role,
        address=client_address(request.scope),
        target=target,
        status=200,
        detail=detail,
    )


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
                metadata=n.metadata,
                image_url=f"/api/images/{quote(n.image_id, safe='')}",
                qam_url=f"/api/maps/{q}/{quote(n.image_id, safe='')}/qam.png{extra}",
                ram_url=f"/api/maps/{q}/{quote(n.image_id, safe='')}/ram.png{extra}",
            )
            for n in p.neighbors
        ],
    )


def _check_k(k: int) -> int:
    if not K_MIN <= k <= K_MAX:
        raise HTTPException(422, detail=f"k must be between {K_MIN} and {K_MAX}")
    return k


def _archive_bytes(state: ViewerState, image_id: str) -> bytes:
    row = state.predictor.index.row_of(image_id)
    if row is None:
        raise HTTPException(404, detail=f"no archive image '{image_id}'")
    path = Path(state.predictor.index.paths[row])
    try:
        return path.read_bytes()
    except OSError:
        raise HTTPException(404, detail=f"archive image '{image_id}' is missing from the archive folder") from None


@router.post("/api/query", response_model=QueryOut)
async def post_query(
    state: State,
    request: Request,
    user: Viewer,
    image: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int, Form()] = 10,
    archive_id: Annotated[str | None, Form(max_length=256)] = None,
    where: Annotated[str | None, Form(max_length=500)] = None,
    region: Annotated[str | None, Form(max_length=400)] = None,
) -> QueryOut:
    _check_k(k)
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
    )
    exclude = archive_id if image is None else None
    await run_in_threadpool(audit, request, "query", query_id, f"archive case {exclude}" if exclude else None)
    res = await run_in_threadpool(_predict, state, query_id, decoded, k, exclude, where, refine)
    return _to_out(query_id, res, exclude, where, refine, state.predictor.typical_distance())


def _stored(state: ViewerState, query_id: str) -> tuple[bytes, str | None]:
    rec = _store(state.store.query_record, query_id)
    if rec is None:
        raise HTTPException(404, detail=f"unknown query '{query_id}'")
    data, archive_id = rec
    if data is None and archive_id is not None:
        return _archive_bytes(state, archive_id), archive_id  # an archive case: its image is still there
    if data is None:
        raise HTTPException(
            410, detail="this query's image is no longer kept (the server's retention policy): upload it again"
        )
    return data, archive_id


@router.get("/api/query/{query_id}", response_model=QueryOut)
def get_query(
    query_id: str,
    state: State,
    request: Request,
    user: Viewer,
    k: Annotated[int, Query()] = 10,
    where: Annotated[str | None, Query(max_length=500)] = None,
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
) -> QueryOut:
    """The same query with another k, filter or refinement (regions of the query; cases marked similar or
    not similar), without uploading it again (an archive case still excludes itself)."""
    _check_k(k)
    refine = Refine.parse(region, similar, not_similar, state.predictor.cfg.model.load_size)
    data, archive_id = _stored(state, query_id)
    audit(request, "view_query", query_id, f"k={k}" + (f" refined {refine.params()}" if refine else ""))
    image = _decode(state, data, f"stored query '{query_id}'")
    res = _predict(state, query_id, image, k, archive_id, where, refine)
    return _to_out(query_id, res, archive_id, where, refine, state.predictor.typical_distance())


def _result(state: ViewerState, query_id: str, refine: Refine = NO_REFINE) -> QueryResult:
    res = state.recall(refine.key(query_id))
    if res is None:  # evicted from the cache: recompute from the stored image, excluding itself again
        data, archive_id = _stored(state, query_id)
        image = _decode(state, data, f"stored query '{query_id}'")
        res = _predict(state, query_id, image, 10, archive_id, None, refine)
    return res


@router.get("/api/queries/{query_id}/image.png")
def query_image(query_id: str, state: State, request: Request, user: Viewer) -> Response:
    png = to_png_bytes(_result(state, query_id).image, FAST_PNG)
    audit(request, "view_query", query_id, "image")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/maps/{query_id}/{image_id}/{kind}.png")
def evidence_map(
    query_id: str,
    image_id: str,
    kind: str,
    state: State,
    request: Request,
    user: Viewer,
    style: Annotated[str, Query()] = "contour",
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
) -> Response:
    if kind not in ("qam", "ram"):
        raise HTTPException(404, detail="map kind is qam or ram")
    if style not in MAP_STYLES:
        raise HTTPException(422, detail=f"style must be one of {', '.join(MAP_STYLES)}")
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
    index = state.predictor.index
    data = _archive_bytes(state, image_id)
    path = Path(index.paths[index.row_of(image_id)])
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    audit(request, "view_image", image_id)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/api/archive")
def archive_list(state: State, user: Viewer, limit: Annotated[int, Query(ge=0, le=5000)] = 200) -> list[dict]:
    return info(state, user, limit)["cases"]


@router.post("/api/feedback", response_model=FeedbackOut)
def feedback(body: FeedbackIn, state: State, request: Request, user: Expert) -> FeedbackOut:
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
    """Where cases added through the server keep their images: beside the index folder (the index
    folder itself is replaced whole on every change)."""
    if state.index_dir is None:
        raise HTTPException(409, detail="this server was not started on an index folder it can change")
    return state.index_dir.parent / f"{state.index_dir.name}-cases"


@router.post("/api/archive", status_code=201)
async def archive_add(
    state: State,
    request: Request,
    user: Admin,
    image: Annotated[UploadFile, File()],
    image_id: Annotated[str, Form(max_length=128)],
    diagnosis: Annotated[str, Form(min_length=1, max_length=100)],
) -> dict:
    """Add one case (image + diagnosis) to the archive: embedded with the served model, saved at once."""
    if not CASE_ID.match(image_id):
        raise HTTPException(
            422, detail="image_id: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    data = await image.read(state.max_upload + 1)
    if len(data) > state.max_upload:
        raise HTTPException(413, detail=f"upload over the {state.max_upload / 1_000_000:g} MB limit")
    decoded = await asyncio.wrap_future(state.decoder.submit(_decode_here, state, data, f"image for '{image_id}'"))
    return await run_in_threadpool(_add_case, state, request, decoded, image_id, canonical(diagnosis))


def _add_case(state: ViewerState, request: Request, decoded: np.ndarray, image_id: str, diagnosis: str) -> dict:
    folder = _cases_dir(state)
    with state.reload_lock:
        index = state.predictor.index
        if index.row_of(image_id) is not None:
            raise HTTPException(409, detail=f"the archive already holds a case '{image_id}'")
        audit(request, "archive_add", image_id, diagnosis)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_id}.png"
        path.write_bytes(to_png_bytes(decoded))  # re-encoded: no metadata of the upload is kept
        table = ImageTable([image_id], [str(path)], [diagnosis], source="added through chaiderm serve")
        try:
            with state.inference() as predictor:
                new, messages = add_to_index(index, predictor.model, predictor.cfg, table)
            if new is index:
                raise HTTPException(409, detail="; ".join(messages) or "nothing was added")
            state.adopt(new)
        except ChaidermError as e:
            path.unlink(missing_ok=True)
            raise HTTPException(422, detail=str(e)) from None
        except HTTPException:
            path.unlink(missing_ok=True)
            raise
    return {"image_id": image_id, "diagnosis": diagnosis, "archive_size": len(new)}


@router.delete("/api/archive/{image_id}")
def archive_remove(image_id: str, state: State, request: Request, user: Admin) -> dict:
    if state.index_dir is None:
        raise HTTPException(409, detail="this server was not started on an index folder it can change")
    with state.reload_lock:
        index = state.predictor.index
        if index.row_of(image_id) is None:
            raise HTTPException(404, detail=f"no archive image '{image_id}'")
        if len(index) == 1:
            raise HTTPException(409, detail="the archive's last case cannot be removed")
        try:
            new = index.remove([image_id])
            state.check(new)  # refused if it would leave no case of the positive class
        except ChaidermError as e:
            raise HTTPException(409, detail=str(e)) from None
        audit(request, "archive_remove", image_id)
        state.adopt(new)
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
    action: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[Entry]:
    if action is not None and action not in ACTIONS:
        raise HTTPException(422, detail=f"action must be one of {', '.join(ACTIONS)}")
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
