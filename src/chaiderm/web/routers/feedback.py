"""Experts' feedback: an archive case marked similar or not similar to a query."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from chaiderm.web.access import Expert
from chaiderm.web.audit import audit
from chaiderm.web.auth import LOCAL, LOCAL_ROLE
from chaiderm.web.dependencies import Search, State
from chaiderm.web.schemas import ERRORS, FeedbackIn, FeedbackOut
from chaiderm.web.search import own

router = APIRouter(responses=ERRORS)


@router.post("/api/feedback", response_model=FeedbackOut)
def feedback(body: FeedbackIn, state: State, snap: Search, request: Request, user: Expert) -> FeedbackOut:
    own(state, user, body.query_id)
    if snap.index.row_of(body.image_id) is None:
        raise HTTPException(404, detail=f"no archive image '{body.image_id}'")
    role = LOCAL_ROLE if user is LOCAL else user.role
    try:
        fid = state.store.add_feedback(body.query_id, body.image_id, body.relevant, user=user.name, role=role)
    except KeyError:
        raise HTTPException(404, detail=f"unknown query '{body.query_id}'") from None
    audit(request, "feedback", f"{body.query_id}/{body.image_id}", "similar" if body.relevant else "not similar")
    return FeedbackOut(ok=True, feedback_id=fid)
