"""Admin pages: export outbox with dead letters and replay, routing rule test, model/worker status, audit log."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from dicom_agent.db.orm import AuditEvent, Export, Job, ResultObject, User
from dicom_agent.db.states import ExportState, check_export
from dicom_agent.errors import StateTransitionError
from dicom_agent.web.deps import AdminUser, AppSettings, Db
from dicom_agent.web.templating import render

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])
PER_PAGE = 50


@router.get("", response_class=HTMLResponse)
def admin_home(request: Request, db: Db, user: AdminUser, settings: AppSettings) -> HTMLResponse:
    counts = dict(db.execute(select(Export.state, func.count(Export.id)).group_by(Export.state)).all())
    users = db.scalars(select(User).order_by(User.username)).all()
    return render(
        request,
        "admin/home.html",
        {
            "counts": counts,
            "users": users,
            "manifest": read_manifest(settings.model_dir),
            "routing": routing_available(),
        },
    )


@router.get("/exports", response_class=HTMLResponse)
def exports(request: Request, db: Db, user: AdminUser, state: str = "", page: int = 1) -> HTMLResponse:
    stmt = select(Export, ResultObject).join(ResultObject, ResultObject.id == Export.result_object_id)
    count = select(func.count(Export.id))
    if state in {s.value for s in ExportState}:
        stmt = stmt.where(Export.state == state)
        count = count.where(Export.state == state)
    page = max(1, page)
    rows = db.execute(
        stmt.order_by(Export.updated_at.desc(), Export.id.desc()).limit(PER_PAGE).offset((page - 1) * PER_PAGE)
    ).all()
    total = db.scalar(count) or 0
    return render(
        request,
        "admin/exports.html",
        {"rows": rows, "state": state, "page": page, "pages": max(1, -(-total // PER_PAGE)), "total": total},
    )


@router.post("/exports/{export_id}/replay")
def replay_export(export_id: int, db: Db, user: AdminUser) -> RedirectResponse:
    """A dead letter (or a done row, on purpose) goes back to pending with a fresh attempt budget."""
    row = db.get(Export, export_id)
    if row is None:
        raise HTTPException(status_code=404, detail="export not found")
    if row.state not in (ExportState.DEAD, ExportState.DONE):
        raise HTTPException(status_code=409, detail=f"export is {row.state}, nothing to replay")
    try:
        check_export(row.state, ExportState.PENDING)
    except StateTransitionError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    previous = row.state
    from dicom_agent.export.outbox import replay

    replay(db, [row.id])
    db.add(
        AuditEvent(
            actor=f"user:{user.username}",
            action="export_replayed",
            study_id=row.result_object.study_id,
            detail={"export_id": row.id, "from": previous, "destination": row.destination},
        )
    )
    return RedirectResponse("/admin/exports?state=dead", status_code=303)


def routing_available() -> bool:
    return importlib.util.find_spec("dicom_agent.routing.engine") is not None


@router.get("/routing", response_class=HTMLResponse)
def routing_form(request: Request, user: AdminUser) -> HTMLResponse:
    return render(request, "admin/routing.html", {"available": routing_available(), "result": None, "form": {}})


@router.post("/routing", response_class=HTMLResponse)
def routing_test(
    request: Request,
    user: AdminUser,
    settings: AppSettings,
    modality: Annotated[str, Form(max_length=16)] = "",
    body_part: Annotated[str, Form(max_length=64)] = "",
    description: Annotated[str, Form(max_length=128)] = "",
    series_description: Annotated[str, Form(max_length=128)] = "",
    instances: Annotated[str, Form(max_length=6)] = "",
    calling_ae: Annotated[str, Form(max_length=16)] = "",
    study_id: Annotated[str, Form(max_length=12)] = "",
) -> HTMLResponse:
    form = {
        "modality": modality,
        "body_part": body_part,
        "description": description,
        "series_description": series_description,
        "instances": instances,
        "calling_ae": calling_ae,
        "study_id": study_id,
    }
    result: Any = None
    if routing_available():
        from dicom_agent.web.routing_probe import probe

        result = probe(settings, form)
    return render(request, "admin/routing.html", {"available": routing_available(), "result": result, "form": form})


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@router.get("/status", response_class=HTMLResponse)
def status(request: Request, db: Db, user: AdminUser, settings: AppSettings) -> HTMLResponse:
    jobs = db.scalars(select(Job).order_by(Job.id.desc()).limit(30)).all()
    by_state = dict(db.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
    return render(
        request,
        "admin/status.html",
        {"manifest": read_manifest(settings.model_dir), "jobs": jobs, "by_state": by_state},
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, db: Db, user: AdminUser, page: int = 1, security: bool = False) -> HTMLResponse:
    page = max(1, page)
    stmt = select(AuditEvent)
    count = select(func.count(AuditEvent.id))
    if security:
        stmt = stmt.where(AuditEvent.security.is_(True))
        count = count.where(AuditEvent.security.is_(True))
    events = db.scalars(
        stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(PER_PAGE).offset((page - 1) * PER_PAGE)
    ).all()
    total = db.scalar(count) or 0
    return render(
        request,
        "admin/audit.html",
        {"events": events, "page": page, "pages": max(1, -(-total // PER_PAGE)), "security": security},
    )
