"""Who did what, from a request, into the audit log (``chaiderm.storage.AuditLog``). A database that cannot
record an action refuses it (its DataError 'unavailable' is answered 503 by ``web.errors``): nothing is seen
or changed unrecorded."""

from __future__ import annotations

import contextlib

from fastapi import HTTPException, Request

from chaiderm.errors import ChaidermError, DataError
from chaiderm.web.access import client_address, current_user
from chaiderm.web.errors import answer


def who(request: Request) -> dict[str, str]:
    """The audit columns that say who acted: user, role and address."""
    user = current_user(request)
    return {"user": user.name, "role": user.role, "address": client_address(request.scope)}


def audit(
    request: Request, action: str, target: str | None = None, detail: str | None = None, status: int = 200
) -> None:
    """Record who did this."""
    request.app.state.access.audit.record(action, **who(request), target=target, status=status, detail=detail)


def refused(request: Request, action: str, target: str, exc: HTTPException | ChaidermError) -> None:
    """A refused or failed change is recorded with the status it is answered with; a database that cannot
    record it does not change the answer (nothing was changed)."""
    a = answer(exc)
    with contextlib.suppress(DataError):
        audit(request, action, target[:128], a.detail, status=a.status)
