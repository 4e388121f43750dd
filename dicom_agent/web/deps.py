"""Request dependencies: settings, database session, signed-in user, role checks, CSRF.

Routes declare what they need with the ``Annotated`` aliases at the bottom (``Db``, ``CurrentUser``, ``AdminUser``),
so that authorization is visible in each route's signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from dicom_agent.config import Settings
from dicom_agent.db.orm import User
from dicom_agent.db.session import transaction
from dicom_agent.web.security import csrf_matches

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    full_name: str
    role: str


class LoginRequiredError(Exception):
    """Raised for anonymous requests to protected routes; the app answers with a redirect to the login page."""


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back when it raises. Used with scope
    "function" (``Db``): the commit ends before the response starts, so a redirect to "saved=1" is sent only for what
    is saved and the page the browser loads next shows it (the default scope commits after the response is sent)."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with transaction(factory) as session:
        yield session


Db = Annotated[Session, Depends(get_db, scope="function")]


def session_data(request: Request) -> dict[str, Any]:
    data: dict[str, Any] = request.state.session
    return data


def optional_user(request: Request, db: Db) -> User | None:
    uid = session_data(request).get("uid")
    if not isinstance(uid, int):
        return None
    user = db.get(User, uid)
    if user is None or not user.active:
        return None
    # A detached snapshot for the page header: error pages render after the request's session is gone.
    request.state.user = UserInfo(user.id, user.username, user.full_name, user.role)
    return user


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise LoginRequiredError
    return user


def require_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(status_code=403, detail="forbidden")
    return user


def require_reviewer(user: Annotated[User, Depends(current_user)]) -> User:
    """Radiologists sign; admins may too (a small site's admin is often a radiologist)."""
    if user.role not in ("radiologist", "admin"):
        raise HTTPException(status_code=403, detail="forbidden")
    return user


async def csrf_protect(request: Request) -> None:
    """Every unsafe request must carry the session's CSRF token (form field ``csrf_token`` or header)."""
    if request.method in SAFE_METHODS:
        return
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(FORM_TYPES):
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    if not csrf_matches(session_data(request).get("csrf"), token):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")


AppSettings = Annotated[Settings, Depends(get_settings_dep)]
CurrentUser = Annotated[User, Depends(current_user)]
ReviewerUser = Annotated[User, Depends(require_reviewer)]
AdminUser = Annotated[User, Depends(require_admin)]
OptionalUser = Annotated[User | None, Depends(optional_user)]
