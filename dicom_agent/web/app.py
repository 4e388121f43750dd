"""The radiologist worklist web application (``dicom-agent web``; also mounted by ``dicom-agent serve``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from dicom_agent.config import Settings
from dicom_agent.db.orm import User
from dicom_agent.db.session import engine_for
from dicom_agent.web.deps import LoginRequiredError, csrf_protect
from dicom_agent.web.routes import admin, auth, images, review, study, worklist
from dicom_agent.web.security import (
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    SessionCodec,
    hash_password,
    new_csrf_token,
    secret_key_for,
)
from dicom_agent.web.templating import render

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
BOOTSTRAP_ENV = "DICOM_AGENT_WEB_ADMIN_PASSWORD"


def create_app(settings: Settings) -> FastAPI:
    """Builds the app for one settings object; the database must already be migrated (``dicom-agent db upgrade``)."""
    codec = SessionCodec(secret_key_for(settings))
    app = FastAPI(
        title="dicom_agent worklist",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(csrf_protect)],
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker(bind=engine_for(settings.database_url), expire_on_commit=False)
    _bootstrap_admin(settings, app.state.sessionmaker)

    @app.middleware("http")
    async def session_cookie(request: Request, call_next: Any) -> Response:
        """Loads the signed session (or starts an anonymous one with a CSRF token) and writes it back when changed."""
        data = codec.loads(request.cookies.get(SESSION_COOKIE))
        request.state.session_changed = data is None
        request.state.session = data if data is not None else {"csrf": new_csrf_token()}
        response: Response = await call_next(request)
        if request.state.session_changed:
            response.set_cookie(
                SESSION_COOKIE,
                codec.dumps(request.state.session),
                max_age=SESSION_MAX_AGE_S,
                httponly=True,
                samesite="lax",
                secure=settings.production,
                path="/",
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        )
        return response

    @app.exception_handler(LoginRequiredError)
    async def _login_required(request: Request, _exc: LoginRequiredError) -> Response:
        return RedirectResponse(auth.login_url(request), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        key = {403: "forbidden", 404: "not_found"}.get(exc.status_code, "error")
        accept = request.headers.get("accept", "")
        if "text/html" not in accept and request.url.path.endswith((".png", ".json")):
            return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
        return render(request, "error.html", {"message_key": key, "detail": exc.detail}, status_code=exc.status_code)

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    for module in (auth, worklist, study, images, review, admin):
        app.include_router(module.router)
    _mount_metrics(app)
    return app


def _mount_metrics(app: FastAPI) -> None:
    """Mounts the pipeline's Prometheus ``/metrics`` ASGI app when that module is present in this build."""
    try:
        from dicom_agent import metrics  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    factory = getattr(metrics, "metrics_app", None)
    if callable(factory):
        # A Route (not a Mount) so that ``/metrics`` answers without a redirect to ``/metrics/``. Open to
        # scrapers without a session: the metrics carry no patient data (labels are states, queues, AE titles).
        app.router.routes.append(Route("/metrics", endpoint=_AsgiEndpoint(factory()), methods=["GET"]))


class _AsgiEndpoint:
    """Wraps a plain ASGI callable so Starlette's Route passes it the raw ASGI call (not a Request)."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)


def _bootstrap_admin(settings: Settings, factory: sessionmaker[Session]) -> None:
    """Embedded mode only: creates user ``admin`` from ``DICOM_AGENT_WEB_ADMIN_PASSWORD`` when no user exists yet."""
    password = settings.web_admin_password
    if not password:
        return
    if settings.production:
        log.warning("%s is ignored in production; create users with 'dicom-agent users add'", BOOTSTRAP_ENV)
        return
    try:
        with factory.begin() as db:
            if (db.scalar(select(func.count()).select_from(User)) or 0) > 0:
                return
            db.add(
                User(username="admin", password_hash=hash_password(password), full_name="Administrator", role="admin")
            )
    except (OperationalError, ProgrammingError):
        log.warning("user table missing: run 'dicom-agent db upgrade' before the web app")
        return
    log.info("created the first admin user 'admin' from %s", BOOTSTRAP_ENV)


def run_web(settings: Settings) -> None:
    """Serves the app with uvicorn on ``WEB_HOST:WEB_PORT``."""
    import uvicorn

    uvicorn.run(
        create_app(settings), host=settings.web_host, port=settings.web_port, log_level="info", access_log=False
    )
