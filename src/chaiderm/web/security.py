"""What every chaiderm page and route gets: security headers and a hard limit on request bodies.

Pages are static files whose scripts put data into the DOM as text only; the Content-Security-Policy
below (no inline script, nothing from elsewhere) makes a missed escape inert rather than executable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
WEB = resources.files("chaiderm.web")


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413: at once when its Content-Length says so,
    and for a chunked body without one as soon as the bytes received pass the limit (never after
    spooling it whole). Also stamps :data:`HEADERS` on every response."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items() if k.lower().encode() not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        mb = f"{self.limit / 1_000_000:g} MB"
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": f"request body over the {mb} limit"}, 413)(scope, receive, send_with_headers)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # raised inside the route's body parsing, so FastAPI answers it as this 413
                    raise HTTPException(413, detail=f"request body over the {mb} limit")
            return message

        await self.app(scope, counted_receive, send_with_headers)


class AllowedMethods:
    """405 with an ``Allow`` header that lists every method the path serves. Starlette answers a method it
    does not route with the methods of the first route whose path matched (``GET`` for /api/archive,
    which also takes ``POST``), so a client reading ``Allow`` would be misled. The paths and methods are
    the app's own OpenAPI schema, read once: what the schema declares is what ``Allow`` says."""

    def __init__(self, app: ASGIApp, schema: Callable[[], dict]):
        self.app, self.schema = app, schema
        self._paths: list[tuple[re.Pattern, set[str]]] | None = None

    def _allowed(self, path: str) -> set[str]:
        if self._paths is None:
            self._paths = []
            for template, ops in self.schema().get("paths", {}).items():
                methods = {m.upper() for m in ops}
                self._paths.append((compile_path(template)[0], methods | ({"HEAD"} if "GET" in methods else set())))
        return {m for regex, methods in self._paths if regex.match(path) for m in methods}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            allowed = self._allowed(scope["path"])
            if allowed and method not in allowed:
                listed = ", ".join(sorted(allowed))
                detail = f"{method} is not served at this path; it takes {listed}"
                await JSONResponse({"detail": detail}, 405, headers={"Allow": listed})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_methods(app: FastAPI) -> None:
    app.add_middleware(AllowedMethods, schema=app.openapi)


def page(name: str, status_code: int = 200) -> HTMLResponse:
    """A static page from ``chaiderm/web/templates``: no data is ever formatted into it."""
    return HTMLResponse((WEB / "templates" / name).read_text(encoding="utf-8"), status_code=status_code)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or "request"


async def readable_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 is a list of machine records; ours is one line that names each field."""
    problems = [f"{_field(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]]
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, 422)


def secure(app: FastAPI, body_limit: int) -> FastAPI:
    """Mount the static scripts and styles, and add the body limit, security headers and readable
    validation errors."""
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    app.add_exception_handler(RequestValidationError, readable_validation_error)
    if not any(m.cls is AllowedMethods for m in app.user_middleware):  # an app may place it inside sign-in
        allowed_methods(app)
    app.add_middleware(BodyLimit, limit=body_limit)
    return app
