"""For administrators: the audit log and the server's metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chaiderm.storage import ACTIONS, Entry, parse_time
from chaiderm.web.access import Admin
from chaiderm.web.audit import audit
from chaiderm.web.dependencies import State
from chaiderm.web.schemas import ERRORS

router = APIRouter(responses=ERRORS)
AuditAction = Literal[ACTIONS]  # type: ignore[valid-type]


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
    entries = request.app.state.access.audit.entries(
        since=_time_arg("since", since), until=_time_arg("until", until), user=who, action=action, limit=limit
    )
    audit(request, "audit_read", None, f"{len(entries)} entries")
    return entries


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, user: Admin) -> Response:
    """Prometheus text format (scrape with an admin's bearer token)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
