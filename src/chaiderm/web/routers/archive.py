"""The archive: what is loaded, its cases and their images, and (for admins) adding or removing a case.
Every answer to a change, refusals included, is in the audit log with its status."""

from __future__ import annotations

import asyncio
import mimetypes
import re
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from chaiderm.errors import ChaidermError
from chaiderm.web.access import Admin, Viewer
from chaiderm.web.archive_writes import add_case, remove_case
from chaiderm.web.audit import audit, refused
from chaiderm.web.dependencies import Search, Snapshot, State
from chaiderm.web.schemas import ERRORS
from chaiderm.web.search import archive_file, decode_here

router = APIRouter(responses=ERRORS)
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _cases(snap: Snapshot, limit: int) -> list[dict]:
    idx = snap.index
    return [{"image_id": i, "diagnosis": d} for i, d in zip(idx.image_ids[:limit], idx.diagnoses[:limit], strict=True)]


@router.get("/api/info")
def info(snap: Search, user: Viewer, limit: Annotated[int, Query(ge=0, le=5000)] = 200) -> dict:
    """What is loaded: the model, the archive (size, diagnoses, whether it is synthetic) and its first cases."""
    return {**snap.info, "cases": _cases(snap, limit)}


@router.get("/api/images/{image_id}")
def archive_image(image_id: str, snap: Search, request: Request, user: Viewer) -> Response:
    """Archive images by id only: the id is looked up, never joined into a path."""
    data, path = archive_file(snap.index, image_id)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    audit(request, "view_image", image_id)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/api/archive")
def archive_list(snap: Search, user: Viewer, limit: Annotated[int, Query(ge=0, le=5000)] = 200) -> list[dict]:
    return _cases(snap, limit)


@router.post("/api/archive", status_code=201)
async def archive_add(
    state: State,
    snap: Search,
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
        decoded = await asyncio.wrap_future(state.decoder.submit(decode_here, snap, data, f"image for '{image_id}'"))
        return await run_in_threadpool(add_case, state, request, decoded, image_id, diagnosis)
    except (HTTPException, ChaidermError) as e:
        await run_in_threadpool(refused, request, "archive_add", image_id, e)
        raise


@router.delete("/api/archive/{image_id}")
def archive_remove(image_id: str, state: State, request: Request, user: Admin) -> dict:
    """Remove one case; an image the server stored for it is deleted once the smaller index is saved."""
    try:
        return remove_case(state, request, image_id)
    except (HTTPException, ChaidermError) as e:
        refused(request, "archive_remove", image_id, e)
        raise
