"""Signing in and out: a browser session (HTTP-only, SameSite=Strict cookie plus a CSRF token the page
sends back on every write) or a bearer token for API clients and metrics scrapers."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from chaiderm.web.access import (
    UNREADABLE,
    Access,
    Viewer,
    client_address,
    current_user,
    refresh_users,
    throttle_address,
)
from chaiderm.web.auth import COOKIE, MAX_TOKEN_HOURS, SESSION_HOURS, User
from chaiderm.web.schemas import ERRORS
from chaiderm.web.security import page

router = APIRouter(responses=ERRORS)
FAILED_DELAY_S = 1.0  # every wrong password costs its sender a second, on top of the throttle


class SignIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenIn(SignIn):
    hours: float = Field(default=SESSION_HOURS, gt=0, le=MAX_TOKEN_HOURS)


class Me(BaseModel):
    name: str
    role: str
    sign_in: bool  # False: a server without sign-in (loopback, one local user)
    csrf_token: str | None = None


class TokenOut(BaseModel):
    token: str
    name: str
    role: str
    expires: float


def _access(request: Request) -> Access:
    return request.app.state.access


AccessDep = Annotated[Access, Depends(_access)]


async def _verify(access: Access, request: Request, body: SignIn) -> User:
    if not access.enabled:
        raise HTTPException(404, detail="this server has no sign-in (it serves one local user on loopback)")
    address, counted = client_address(request.scope), throttle_address(request.scope)
    wait = access.throttle.wait(counted, body.name)
    if wait > 0:
        await run_in_threadpool(_audit, access, "sign_in_throttled", body.name, None, address, 429)
        raise HTTPException(
            429,
            detail=f"too many failed sign-ins from this address or for this name: try again in {int(wait) + 1} s",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    if await run_in_threadpool(refresh_users, access):
        raise HTTPException(503, detail=UNREADABLE)
    user = await run_in_threadpool(access.users.verify, body.name, body.password)
    if user is None:
        access.throttle.failed(counted, body.name)
        await run_in_threadpool(_audit, access, "sign_in_failed", body.name, None, address, 401)
        await asyncio.sleep(FAILED_DELAY_S)
        raise HTTPException(401, detail="wrong user name or password")
    access.throttle.succeeded(counted, body.name)
    return user


def _audit(access: Access, action: str, name: str | None, role: str | None, address: str, status: int) -> None:
    """A database that cannot record raises its DataError 'unavailable' (503, ``web.errors``)."""
    access.audit.record(action, user=name, role=role, address=address, status=status)


@router.get("/login", response_class=HTMLResponse)
def login() -> HTMLResponse:
    return page("login.html")


@router.post("/api/session", response_model=Me)
async def sign_in(body: SignIn, request: Request, access: AccessDep) -> JSONResponse:
    user = await _verify(access, request, body)
    address = client_address(request.scope)
    await run_in_threadpool(_audit, access, "sign_in", user.name, user.role, address, 200)
    token, session = await run_in_threadpool(access.sessions.create, user, "cookie", SESSION_HOURS)
    out = JSONResponse(Me(name=user.name, role=user.role, sign_in=True, csrf_token=session.csrf).model_dump())
    out.set_cookie(
        COOKIE,
        token,
        max_age=int(SESSION_HOURS * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=access.secure_cookies,
    )
    return out


@router.post("/api/token", response_model=TokenOut)
async def token(body: TokenIn, request: Request, access: AccessDep) -> TokenOut:
    """A bearer token for scripts and scrapers (``Authorization: Bearer ...``), valid ``hours``."""
    user = await _verify(access, request, body)
    await run_in_threadpool(_audit, access, "token", user.name, user.role, client_address(request.scope), 200)
    tok, session = await run_in_threadpool(access.sessions.create, user, "token", body.hours)
    return TokenOut(token=tok, name=user.name, role=user.role, expires=session.expires)


@router.get("/api/me", response_model=Me)
def me(user: Viewer, request: Request, access: AccessDep) -> Me:
    token = getattr(request.state, "session_token", None)
    csrf = None
    if access.enabled and token:
        s = access.sessions.lookup(token)
        csrf = s.csrf if s is not None and s.kind == "cookie" else None
    return Me(name=user.name, role=user.role, sign_in=access.enabled, csrf_token=csrf)


@router.post("/api/session/end")
def sign_out(request: Request, access: AccessDep) -> JSONResponse:
    user = current_user(request)
    token = getattr(request.state, "session_token", None)
    if access.enabled and token:
        access.sessions.revoke(token)
        _audit(access, "sign_out", user.name, user.role, client_address(request.scope), 200)
    out = JSONResponse({"ok": True})
    out.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=access.secure_cookies)
    return out
