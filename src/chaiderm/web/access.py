"""Access control on every request: who is asking (session cookie or bearer token), whether they are
signed in at all (an ASGI middleware, so that no route, the OpenAPI schema and unknown paths included,
can be reached anonymously by mistake), CSRF on cookie-authenticated writes, and the role a route needs
(a dependency per route)."""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chaiderm.data.audit import AuditLog
from chaiderm.errors import DataError
from chaiderm.web.auth import COOKIE, LOCAL, Sessions, SignInThrottle, User, Users
from chaiderm.web.security import HEADERS, page

# reachable without signing in: health checks, the sign-in page with its scripts, and signing in
PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/api/session"), ("POST", "/api/token")}
PUBLIC_PREFIX = "/static/"  # the pages' own scripts and styles: code, never data
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_HEADER = "x-csrf-token"


@dataclass
class Access:
    """How a server decides who is asking; ``users`` None means no sign-in (loopback only)."""

    users: Users | None
    sessions: Sessions
    audit: AuditLog
    secure_cookies: bool = False
    throttle: SignInThrottle = field(default_factory=SignInThrottle)

    @property
    def enabled(self) -> bool:
        return self.users is not None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _cookie(headers: dict[bytes, bytes]) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


class SignedIn:
    """Puts ``request.state.user`` on every request; without a valid session answers 401 (the sign-in
    page for a browser's page request, JSON for the API) and, for a cookie session, 403 on a write
    without the session's CSRF token."""

    def __init__(self, app: ASGIApp, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        access = self.access
        if not access.enabled:
            scope["state"]["user"] = LOCAL
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if (method, path) in PUBLIC or (method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIX)):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        token = _bearer(headers)
        kind = "token"
        if token is None:
            token, kind = _cookie(headers), "cookie"
        session = None
        user = None
        try:
            session = access.sessions.lookup(token) if token else None
        except DataError:
            await _answer(scope, receive, send, 503, "the server's database is busy or unavailable; try again")
            return
        if session is not None and session.kind == kind:
            access.users.refresh()
            user = access.users.get(session.user)  # removed users are signed out; role changes apply at once
        if user is None:
            message = "sign in first" if session is None else "this account no longer exists"
            if method == "GET" and path == "/":
                await page("login.html", status_code=401)(scope, receive, send)
            else:
                await _answer(scope, receive, send, 401, f"{message} (your session may have ended)", bearer=True)
            return
        if kind == "cookie" and method in UNSAFE:
            sent = headers.get(CSRF_HEADER.encode(), b"").decode("latin-1")
            if not hmac.compare_digest(sent, session.csrf):
                await _answer(scope, receive, send, 403, "missing or stale CSRF token: reload the page and try again")
                return
        scope["state"]["user"] = user
        scope["state"]["session_token"] = token
        await self.app(scope, receive, send)


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str, bearer: bool = False) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="chaiderm"'} if bearer else {}
    await JSONResponse({"detail": detail}, status, headers={**headers, **HEADERS})(scope, receive, send)


def current_user(request: Request) -> User:
    return getattr(request.state, "user", LOCAL)


def need(role: str):
    """A dependency: the signed-in user, if their role includes ``role``; else 403 (and an audit entry)."""

    def check(request: Request) -> User:
        user = current_user(request)
        if not user.can(role):
            access: Access = request.app.state.access
            with contextlib.suppress(DataError):  # refusing is what matters; a lost entry is not worth a 503
                access.audit.record(
                    "forbidden",
                    user=user.name,
                    role=user.role,
                    address=client_address(request.scope),
                    target=request.url.path[:200],
                    status=403,
                )
            raise HTTPException(403, detail=f"your role ({user.role}) cannot do this: it needs {role}")
        return user

    return check


Viewer = Annotated[User, Depends(need("viewer"))]
Expert = Annotated[User, Depends(need("expert"))]
Admin = Annotated[User, Depends(need("admin"))]
