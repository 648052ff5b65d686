"""The viewer's PACS routes (``chaiderm serve --dicomweb URL``): a signed-in user opens a study by its UID and
queries its dermoscopic images as uploads are queried (the query image kept, or not, as ``--keep-queries``
says); an expert or admin stores a query's results back into its study (an SR and an evidence capture,
``pacs.results``), audited. Studies and instances are named by UID only: nothing of the patient is answered,
logged or audited."""

from __future__ import annotations

import asyncio
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from chaiderm.errors import DataError
from chaiderm.pacs.client import Pacs, PacsError
from chaiderm.pacs.fetch import check_uid
from chaiderm.pacs.select import InstanceRef, Selection, class_name
from chaiderm.pipeline import load_image
from chaiderm.web.access import Expert, Viewer
from chaiderm.web.audit import audit
from chaiderm.web.dependencies import Search, Snapshot, State, ViewerState
from chaiderm.web.schemas import ERRORS, QueryOut
from chaiderm.web.search import K_MAX, K_MIN, own, predict, remember_query, result, to_out

# 502: the PACS failed or refused; 504: it did not answer within its limit (pacs.client)
router = APIRouter(responses={**ERRORS, 502: ERRORS[503], 504: ERRORS[503]})
SOURCES = 1024  # queries whose PACS instance is remembered for storing back (the newest)


@dataclass
class PacsLink:
    """The configured PACS and, per query answered from it, the instance it came from."""

    pacs: Pacs
    sources: OrderedDict[str, InstanceRef] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, query_id: str, ref: InstanceRef) -> None:
        with self.lock:
            self.sources[query_id] = ref
            self.sources.move_to_end(query_id)
            while len(self.sources) > SOURCES:
                self.sources.popitem(last=False)

    def source(self, query_id: str) -> InstanceRef | None:
        with self.lock:
            return self.sources.get(query_id)


def _link(request: Request) -> PacsLink:
    link = getattr(request.app.state, "pacs", None)
    if link is None:
        raise HTTPException(404, detail="no PACS is configured (chaiderm serve --dicomweb URL)")
    return link


def _uid(value: str, what: str) -> str:
    try:
        return check_uid(value, what)
    except DataError as e:
        raise HTTPException(422, detail=str(e)) from None


def _asked(request: Request, action: str, target: str, call, *args):
    """``call(*args)`` against the PACS; a PACS that fails is 502 (504 when silent), audited as refused."""
    try:
        return call(*args)
    except PacsError as e:
        status = 504 if "did not answer" in str(e) else 502
        audit(request, action, target, str(e), status=status)
        raise HTTPException(status, detail=str(e)) from None


def _images(link: PacsLink, request: Request, study: str) -> Selection:
    return _asked(request, "pacs_study", study, lambda: link.pacs.find(studies=[study]))


@router.get("/api/pacs")
def pacs_configured(request: Request, user: Viewer) -> dict:
    """Whether this server reads a PACS (the page shows its study control only then)."""
    return {"configured": getattr(request.app.state, "pacs", None) is not None}


@router.get("/api/pacs/studies/{study}")
def pacs_study(study: str, request: Request, user: Viewer) -> dict:
    """The dermoscopic and VL photographic instances of a study (UIDs only), and what else it holds by class."""
    link = _link(request)
    study = _uid(study, "study")
    found = _images(link, request, study)
    audit(request, "pacs_study", study, f"{len(found.images)} image(s), {len(found.others)} other instance(s)")
    return {
        "study": study,
        "images": [
            {"series": r.series, "instance": r.instance, "class": class_name(r.sop_class)} for r in found.images
        ],
        "skipped": dict(found.skipped),
    }


def _decode_dicom(snap: Snapshot, data: bytes, name: str) -> np.ndarray:
    """The instance's pixels (only DICOM is decoded here: an upload never reaches this); a hostile instance
    raises its DataError, answered by ``web.errors`` with the instance's UID."""
    return load_image(data, name, fit=snap.predictor.cfg.model.load_size, formats=("DICOM",))


@router.post("/api/pacs/query", response_model=QueryOut)
async def pacs_query(
    state: State,
    snap: Search,
    request: Request,
    user: Viewer,
    study: Annotated[str, Form(max_length=64)],
    instance: Annotated[str, Form(max_length=64)],
    k: Annotated[int, Form(ge=K_MIN, le=K_MAX)] = 10,
) -> QueryOut:
    """Query one dermoscopic instance of a study, as an upload is queried."""
    link = _link(request)
    study, instance = _uid(study, "study"), _uid(instance, "instance")
    found = await run_in_threadpool(_images, link, request, study)
    ref = next((r for r in found.images if r.instance == instance), None)
    if ref is None:
        raise HTTPException(404, detail=f"study {study} has no dermoscopic instance {instance}")
    data = await run_in_threadpool(_asked, request, "query", instance, link.pacs.fetch, ref)
    decoded = await asyncio.wrap_future(state.decoder.submit(_decode_dicom, snap, data, ref.name))
    query_id = await run_in_threadpool(remember_query, state, user, data, decoded)  # no DICOM header kept
    link.remember(query_id, ref)
    await run_in_threadpool(audit, request, "query", query_id, f"PACS study {study} instance {instance}")
    res = await run_in_threadpool(predict, state, snap, query_id, decoded, k, None)
    return to_out(query_id, res, None, None, typical_distance=snap.predictor.typical_distance())


def _store_back(state: ViewerState, snap: Snapshot, request: Request, link: PacsLink, query_id: str) -> dict:
    from pydicom import dcmread

    from chaiderm.pacs.results import Identity, study_results

    ref = link.source(query_id)
    if ref is None:
        raise HTTPException(404, detail=f"query '{query_id}' was not answered from the PACS by this server")
    data = _asked(request, "pacs_store", ref.instance, link.pacs.fetch, ref)
    head = dcmread(io.BytesIO(data), stop_before_pixels=True)
    res = result(state, snap, query_id)
    neighbours = snap.predictor.neighbor_images(res)
    objects = study_results([head], [res], [neighbours], Identity.of(snap.predictor))
    _asked(request, "pacs_store", ref.instance, link.pacs.store, objects, ref.study)
    stored = [str(o.SOPInstanceUID) for o in objects]
    audit(request, "pacs_store", ref.instance, f"study {ref.study}: " + ", ".join(stored), status=201)
    return {"study": ref.study, "instance": ref.instance, "stored": stored}


@router.post("/api/pacs/store", status_code=201)
def pacs_store(
    state: State, snap: Search, request: Request, user: Expert, query_id: Annotated[str, Form(max_length=128)]
) -> dict:
    """Store a PACS query's results into its study: an SR and an evidence capture in new series."""
    link = _link(request)
    own(state, user, query_id)
    return _store_back(state, snap, request, link, query_id)
