"""Sign in and out, and the interface language switch."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from dicom_agent.db.orm import AuditEvent, User
from dicom_agent.web.deps import Db, OptionalUser
from dicom_agent.web.i18n import LANG_COOKIE, LANGUAGES
from dicom_agent.web.security import LoginThrottle, dummy_verify, new_csrf_token, verify_password
from dicom_agent.web.templating import render

log = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])
throttle = LoginThrottle()


def safe_next(target: str | None) -> str:
    """Only same-site absolute paths: ``//evil.example`` and ``https://…`` become ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET" or here == "/":
        return "/login"
    return "/login?next=" + quote(here, safe="")


@router.get("/login")
def login_page(request: Request, user: OptionalUser, next: str = "/") -> Response:
    if user is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login")
def login(
    request: Request,
    db: Db,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    client = request.client.host if request.client else "?"
    key = f"{client}|{username.lower()}"
    if throttle.blocked(key):
        log.warning("sign-in throttled for a user from %s", client)
        return render(request, "login.html", {"next": safe_next(next), "error": "login_throttled"}, status_code=429)
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        dummy_verify()
    if user is None or not user.active or not verify_password(user.password_hash, password):
        throttle.failed(key)
        db.add(AuditEvent(actor=f"user:{username[:64]}", action="login_failed", security=True, detail={"ip": client}))
        return render(request, "login.html", {"next": safe_next(next), "error": "login_failed"}, status_code=401)
    throttle.succeeded(key)
    # A fresh session and CSRF token at sign-in: a token planted before login is worthless afterwards.
    request.state.session = {"uid": user.id, "csrf": new_csrf_token()}
    request.state.session_changed = True
    db.add(AuditEvent(actor=f"user:{user.username}", action="login", detail={"ip": client}))
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request, db: Db, user: OptionalUser) -> Response:
    if user is not None:
        db.add(AuditEvent(actor=f"user:{user.username}", action="logout"))
    request.state.session = {"csrf": new_csrf_token()}
    request.state.session_changed = True
    return RedirectResponse("/login", status_code=303)


@router.get("/lang/{code}")
def switch_language(code: str, next: str = "/") -> Response:
    response = RedirectResponse(safe_next(next), status_code=303)
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, samesite="lax", httponly=True)
    return response
