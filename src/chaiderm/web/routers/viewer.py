"""Evidence viewer routes: thin adapters over :class:`chaiderm.pipeline.Predictor`."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from chaiderm.errors import DataError
from chaiderm.pipeline import QueryResult, load_image, render_heatmap, to_png_bytes
from chaiderm.web.dependencies import ViewerState, get_state
from chaiderm.web.pages import VIEWER_PAGE
from chaiderm.web.schemas import FeedbackIn, FeedbackOut, NeighborOut, QueryOut

router = APIRouter()
State = Annotated[ViewerState, Depends(get_state)]
K_MIN, K_MAX = 1, 40
STATUS = {"not_image": 415, "too_large": 413, "empty": 400, "corrupt": 400}


@router.get("/", response_class=HTMLResponse)
def page() -> str:
    return VIEWER_PAGE


@router.get("/healthz")
def healthz(state: State) -> dict:
    return {"status": "ok", "archive": len(state.predictor.index)}


def _decode(data: bytes) -> np.ndarray:
    try:
        return load_image(data, name="uploaded image")
    except DataError as e:
        raise HTTPException(STATUS.get(e.code, 400), detail=str(e)) from None


def _run_query(state: ViewerState, query_id: str, image: np.ndarray, k: int, exclude: str | None) -> QueryOut:
    with state.lock:
        res = state.predictor.predict(image, k=k, image_id=query_id, exclude_id=exclude)
    state.remember(query_id, res)
    return _to_out(query_id, res)


def _to_out(query_id: str, res: QueryResult) -> QueryOut:
    p = res.prediction
    return QueryOut(
        query_id=query_id,
        melanoma_probability=p.melanoma_probability,
        k=p.k,
        query_image_url=f"/api/queries/{query_id}/image.png",
        neighbors=[
            NeighborOut(
                rank=n.rank,
                image_id=n.image_id,
                diagnosis=n.diagnosis,
                group=n.group,
                distance=n.distance,
                image_url=f"/api/images/{n.image_id}",
                qam_url=f"/api/maps/{query_id}/{n.image_id}/qam.png",
                ram_url=f"/api/maps/{query_id}/{n.image_id}/ram.png",
            )
            for n in p.neighbors
        ],
    )


def _check_k(k: int) -> int:
    if not K_MIN <= k <= K_MAX:
        raise HTTPException(422, detail=f"k must be between {K_MIN} and {K_MAX}")
    return k


@router.post("/api/query", response_model=QueryOut)
async def post_query(
    state: State,
    image: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int, Form()] = 10,
    archive_id: Annotated[str | None, Form()] = None,
) -> QueryOut:
    _check_k(k)
    exclude = None
    if image is not None:
        data = await image.read(state.max_upload + 1)
        if len(data) > state.max_upload:
            raise HTTPException(413, detail=f"upload over the {state.max_upload // 1_000_000} MB limit")
    elif archive_id is not None:
        row = state.predictor.index.row_of(archive_id)
        if row is None:
            raise HTTPException(404, detail=f"no archive image '{archive_id}'")
        data = Path(state.predictor.index.paths[row]).read_bytes()
        exclude = archive_id  # an archive image must not find itself
    else:
        raise HTTPException(422, detail="send an image file (field 'image') or an archive_id")
    decoded = await run_in_threadpool(_decode, data)
    query_id = await run_in_threadpool(state.store.add_query, data)
    return await run_in_threadpool(_run_query, state, query_id, decoded, k, exclude)


@router.get("/api/query/{query_id}", response_model=QueryOut)
def get_query(query_id: str, state: State, k: Annotated[int, Query()] = 10) -> QueryOut:
    """The same query with another k, without uploading it again."""
    _check_k(k)
    data = state.store.query_image(query_id)
    if data is None:
        raise HTTPException(404, detail=f"unknown query '{query_id}'")
    return _run_query(state, query_id, _decode(data), k, None)


def _result(state: ViewerState, query_id: str) -> QueryResult:
    res = state.recall(query_id)
    if res is None:  # evicted from the cache: recompute from the stored image
        data = state.store.query_image(query_id)
        if data is None:
            raise HTTPException(404, detail=f"unknown query '{query_id}'")
        with state.lock:
            res = state.predictor.predict(_decode(data), k=10, image_id=query_id)
        state.remember(query_id, res)
    return res


@router.get("/api/queries/{query_id}/image.png")
def query_image(query_id: str, state: State) -> Response:
    return Response(to_png_bytes(_result(state, query_id).image), media_type="image/png")


@router.get("/api/maps/{query_id}/{image_id}/{kind}.png")
def evidence_map(query_id: str, image_id: str, kind: str, state: State) -> Response:
    if kind not in ("qam", "ram"):
        raise HTTPException(404, detail="map kind is qam or ram")
    res = _result(state, query_id)
    try:
        with state.lock:
            qam, ram = state.predictor.pair_maps(res, image_id)
    except KeyError:
        raise HTTPException(404, detail=f"no archive image '{image_id}'") from None
    side = res.image.shape[0]
    png = to_png_bytes(render_heatmap(qam if kind == "qam" else ram, (side, side)))
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/api/images/{image_id}")
def archive_image(image_id: str, state: State) -> Response:
    """Archive images by id only: the id is looked up, never joined into a path."""
    row = state.predictor.index.row_of(image_id)
    if row is None:
        raise HTTPException(404, detail=f"no archive image '{image_id}'")
    path = Path(state.predictor.index.paths[row])
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})


@router.get("/api/archive")
def archive_list(state: State, limit: int = 200) -> list[dict]:
    idx = state.predictor.index
    return [{"image_id": i, "diagnosis": d} for i, d in zip(idx.image_ids[:limit], idx.diagnoses[:limit], strict=True)]


@router.post("/api/feedback", response_model=FeedbackOut)
def feedback(body: FeedbackIn, state: State) -> FeedbackOut:
    if state.predictor.index.row_of(body.image_id) is None:
        raise HTTPException(404, detail=f"no archive image '{body.image_id}'")
    try:
        fid = state.store.add_feedback(body.query_id, body.image_id, body.relevant)
    except KeyError:
        raise HTTPException(404, detail=f"unknown query '{body.query_id}'") from None
    return FeedbackOut(ok=True, feedback_id=fid)
