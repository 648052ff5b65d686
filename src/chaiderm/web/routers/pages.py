"""The viewer's page and the health check."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from chaiderm.web.access import Viewer
from chaiderm.web.dependencies import Search
from chaiderm.web.schemas import ERRORS
from chaiderm.web.security import page as static_page

router = APIRouter(responses=ERRORS)


@router.get("/", response_class=HTMLResponse)
def page(user: Viewer) -> HTMLResponse:
    return static_page("viewer.html")


@router.get("/healthz")
def healthz(snap: Search) -> dict:
    return {"status": "ok", "archive": len(snap.index)}
