"""Queries: an upload or an archive case searched, then asked again with another k, filter or refinement."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from chaiderm.pipeline import to_png_bytes
from chaiderm.web.access import Viewer
from chaiderm.web.audit import audit
from chaiderm.web.dependencies import Search, Snapshot, State, ViewerState
from chaiderm.web.refinement import Refine
from chaiderm.web.schemas import ERRORS, QueryOut
from chaiderm.web.search import (
    FAST_PNG,
    K_MAX,
    K_MIN,
    archive_file,
    decode_here,
    own,
    predict,
    remember_query,
    result,
    to_out,
)
from chaiderm.web.search import query_image as stored_query_image

router = APIRouter(responses=ERRORS)


async def _upload(state: ViewerState, image: UploadFile) -> tuple[bytes, str]:
    data = await image.read(state.max_upload + 1)
    if len(data) > state.max_upload:
        raise HTTPException(413, detail=f"upload over the {state.max_upload / 1_000_000:g} MB limit")
    return data, "uploaded image" + (f" '{image.filename}'" if image.filename else "")


def _archive_case(snap: Snapshot, archive_id: str) -> tuple[bytes, str]:
    return archive_file(snap.index, archive_id)[0], f"archive image '{archive_id}'"


@router.post("/api/query", response_model=QueryOut)
async def post_query(
    state: State,
    snap: Search,
    request: Request,
    user: Viewer,
    image: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int, Form(ge=K_MIN, le=K_MAX)] = 10,
    archive_id: Annotated[str | None, Form(max_length=256)] = None,
    where: Annotated[str | None, Form(max_length=500)] = None,
    region: Annotated[str | None, Form(max_length=400)] = None,
    level: Annotated[float | None, Form(ge=0.5, lt=1.0)] = None,
) -> QueryOut:
    refine = Refine.parse(region, None, None, snap.predictor.cfg.model.load_size)
    if image is not None:
        data, name = await _upload(state, image)
    elif archive_id is not None:
        data, name = _archive_case(snap, archive_id)
    else:
        raise HTTPException(422, detail="send an image file (field 'image') or an archive_id")
    decoded = await asyncio.wrap_future(state.decoder.submit(decode_here, snap, data, name))
    exclude = archive_id if image is None else None
    # an archive case needs no holding: the archive keeps its image
    query_id = await run_in_threadpool(remember_query, state, user, data, decoded, exclude, hold=image is not None)
    await run_in_threadpool(audit, request, "query", query_id, f"archive case {exclude}" if exclude else None)
    res = await run_in_threadpool(predict, state, snap, query_id, decoded, k, exclude, where, refine)
    return to_out(query_id, res, exclude, where, refine, snap.predictor.typical_distance(), level, snap)


@router.get("/api/query/{query_id}", response_model=QueryOut)
def get_query(
    query_id: str,
    state: State,
    snap: Search,
    request: Request,
    user: Viewer,
    k: Annotated[int, Query(ge=K_MIN, le=K_MAX)] = 10,
    where: Annotated[str | None, Query(max_length=500)] = None,
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
    level: Annotated[float | None, Query(ge=0.5, lt=1.0)] = None,
) -> QueryOut:
    """The same query with another k, filter or refinement (regions of the query; cases marked similar or
    not similar), without uploading it again (an archive case still excludes itself)."""
    own(state, user, query_id)
    refine = Refine.parse(region, similar, not_similar, snap.predictor.cfg.model.load_size)
    image, archive_id = stored_query_image(state, snap, query_id)
    audit(request, "view_query", query_id, f"k={k}" + (f" refined {refine.params()}" if refine else ""))
    res = predict(state, snap, query_id, image, k, archive_id, where, refine)
    return to_out(query_id, res, archive_id, where, refine, snap.predictor.typical_distance(), level, snap)


@router.get("/api/queries/{query_id}/image.png")
def query_image(query_id: str, state: State, snap: Search, request: Request, user: Viewer) -> Response:
    own(state, user, query_id)
    png = to_png_bytes(result(state, snap, query_id).image, FAST_PNG)
    audit(request, "view_query", query_id, "image")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
