"""Access control on every request: who is asking (session cookie or bearer token), whether they are
signed in at all (an ASGI middleware, so that no route, the OpenAPI schema and unknown paths included,
can be reached anonymously by mistake), CSRF on cookie-authenticated writes, and the role a route needs
(a dependency per route)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from chaiderm.errors import DataError
from chaiderm.storage import AuditLog, Session, Sessions
from chaiderm.web.auth import COOKIE, LOCAL, SignInThrottle, User, Users
from chaiderm.web.security import HEADERS, page

# reachable without signing in: health checks, the sign-in page with its scripts, and signing in
PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/api/session"), ("POST", "/api/token")}
PUBLIC_PREFIX = "/static/"  # the pages' own scripts and styles: code, never data
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_HEADER = "x-csrf-token"
PEER = "chaiderm.peer"  # scope key: the loopback peer a forwarded request came through


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
    """The address to record: the peer, or behind a proxy ``"CLIENT via PEER"``: what the proxy said and
    the connection it came on, since any process on the proxy's machine can say the same."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    peer = scope.get(PEER)
    return f"{host} via {peer}" if peer else host


def throttle_address(scope: Scope) -> str:
    """The address failed sign-ins are counted for: the forwarded client's (what the proxy saw)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


class Forwarded:
    """Behind a TLS-terminating proxy on this machine (``serve --behind-https-proxy``): a request that
    arrives from loopback takes its client address from the *last* X-Forwarded-For value (the one the
    proxy itself set or appended; earlier values come from the client and are ignored) and its scheme from
    X-Forwarded-Proto. The peer is kept beside it (see ``client_address``). Values that are not an IP
    address are ignored, so an invented string never reaches the audit log."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and _loopback(client[0]):
            forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-forwarded-for"]
            last = ",".join(forwarded).split(",")[-1].strip() if forwarded else ""
            if last and _is_ip(last):
                scope[PEER] = client[0]
                scope["client"] = (str(ipaddress.ip_address(last)), 0)
            proto = dict(scope.get("headers", [])).get(b"x-forwarded-proto", b"").decode("latin-1").strip()
            if proto in ("http", "https"):
                scope["scheme"] = proto
        await self.app(scope, receive, send)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


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
    without the session's CSRF token. While the users file is unreadable every request that needs a user
    is answered 503. Refusals of a presented session or CSRF token are audited; requests that present no
    credential at all are not (an anonymous scanner would fill the append-only log; the access log has them)."""

    def __init__(self, app: ASGIApp, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        if not self.access.enabled:
            scope["state"]["user"] = LOCAL
            await self.app(scope, receive, send)
            return
        if _public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        await self._signed_in(scope, receive, send)

    async def _signed_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Passes the request on with its user, or answers it (503, 401 or 403) itself."""
        access = self.access
        headers = dict(scope.get("headers", []))
        token, kind = _credential(headers)
        session = None
        user = None
        try:
            if refresh_users(access):
                await _answer(scope, receive, send, 503, UNREADABLE)
                return
            session = access.sessions.lookup(token) if token else None
        except DataError:
            await _answer(scope, receive, send, 503, "the server's database is busy or unavailable; try again")
            return
        if session is not None and session.kind == kind:
            # bound to the account as it is now: removed, new password or new role -> signed out at once
            user = access.users.current(session)
        if user is None:
            await _not_signed_in(access, scope, receive, send, token, kind, session)
            return
        if await _csrf_refused(access, scope, receive, send, headers, kind, session, user):
            return
        scope["state"]["user"] = user
        scope["state"]["session_token"] = token
        await self.app(scope, receive, send)


def _public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC or (method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIX))


def _credential(headers: dict[bytes, bytes]) -> tuple[str | None, str]:
    """The presented credential and its kind: a bearer token if there is one, else the session cookie."""
    token = _bearer(headers)
    return (token, "token") if token is not None else (_cookie(headers), "cookie")


async def _not_signed_in(
    access: Access, scope: Scope, receive: Receive, send: Send, token: str | None, kind: str, session: Session | None
) -> None:
    """401: the sign-in page for a browser's page request, JSON otherwise; audited when a credential was sent."""
    message = "sign in first" if session is None else "this account was removed or its password or role changed"
    if token:
        reason = "no such session" if session is None else "session ended"
        await _refused(access, scope, session.user if session else None, 401, f"{reason} ({kind})")
    if scope["method"] == "GET" and scope["path"] == "/":
        await page("login.html", status_code=401)(scope, receive, send)
    else:
        await _answer(scope, receive, send, 401, f"{message} (your session may have ended)", bearer=True)


async def _csrf_refused(
    access: Access,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: dict[bytes, bytes],
    kind: str,
    session: Session,
    user: User,
) -> bool:
    """True (after answering 403) for a cookie-authenticated write without the session's CSRF token."""
    if kind != "cookie" or scope["method"] not in UNSAFE:
        return False
    sent = headers.get(CSRF_HEADER.encode(), b"").decode("latin-1")
    if hmac.compare_digest(sent, session.csrf):
        return False
    await _refused(access, scope, user.name, 403, "missing CSRF token" if not sent else "wrong CSRF token")
    await _answer(scope, receive, send, 403, "missing or stale CSRF token: reload the page and try again")
    return True


def refresh_users(access: Access) -> bool:
    """Pick up a changed users file; True while it is unreadable (every user is refused). A change ends
    the sessions of accounts that are gone or changed in the database too, not only at their next request."""
    if access.users.refresh() and access.users.broken is None:
        with contextlib.suppress(DataError):  # a busy database: `Users.current` still refuses them
            access.sessions.retain(access.users.keys())
    return access.users.broken is not None


# the reason (path, parser message) goes to the server's log only: this line reaches anonymous callers too
UNREADABLE = "the server's users file is unreadable: nobody can sign in until an admin fixes it (its log says why)"


async def _refused(access: Access, scope: Scope, user: str | None, status: int, detail: str) -> None:
    def record() -> None:
        with contextlib.suppress(DataError):  # refusing is what matters; a lost entry is not worth a 503
            access.audit.record(
                "refused",
                user=user,
                address=client_address(scope),
                target=scope["path"][:200],
                status=status,
                detail=detail,
            )

    await run_in_threadpool(record)


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
