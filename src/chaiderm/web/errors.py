"""The one place where the project's errors become HTTP answers: routes raise the library's own errors
(``chaiderm.errors``) and this mapping, registered on the app, gives each its status and one readable line."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from chaiderm.errors import ChaidermError, DataError
from chaiderm.index.lock import IndexBusyError

# DataError.code -> status. "conflict" and "rejected" are the web layer's words for an archive change the
# archive refuses (the case exists, the change would break it) and for content the server will not take
DATA_STATUS: dict[str, int] = {
    "invalid": 400,
    "empty": 400,
    "corrupt": 400,
    "not_image": 415,
    "too_large": 413,
    "bad_shape": 422,
    "bad_filter": 422,
    "bad_region": 422,
    "rejected": 422,
    "missing": 404,
    "conflict": 409,
    "unavailable": 503,
    "unwritable": 500,
}
# messages that would otherwise name a server path (the database, the index folder): said in words instead
DATABASE_BUSY = "the server's database is busy or unavailable; nothing was saved, try again"
WRITER_BUSY = (
    "another writer (a `chaiderm archive` command or another server) is changing the archive; "
    "nothing was changed, try again in a few seconds"
)
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Answer:
    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def answer(exc: ChaidermError | HTTPException) -> Answer:
    """The status, one-line detail and headers an error is answered with."""
    if isinstance(exc, HTTPException):
        return Answer(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, IndexBusyError):
        return Answer(503, WRITER_BUSY, {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, DataError):
        if exc.code == "unavailable":
            return Answer(503, DATABASE_BUSY)
        return Answer(DATA_STATUS.get(exc.code, 400), str(exc))
    return Answer(500, str(exc))  # an ArtifactError or other: the server's own model or index is at fault


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    a = answer(exc)  # type: ignore[arg-type]
    return JSONResponse({"detail": a.detail}, a.status, headers=a.headers or None)


def register(app: FastAPI) -> None:
    """Answer every :class:`ChaidermError` a route raises by :func:`answer`."""
    app.add_exception_handler(ChaidermError, _handle)
