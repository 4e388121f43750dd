"""The study page: images with overlays, findings, AI report, and the review forms."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from dicom_agent.db.orm import AuditEvent, Study
from dicom_agent.web.deps import AppSettings, CurrentUser, Db
from dicom_agent.web.study_view import build_study_view
from dicom_agent.web.templating import render

router = APIRouter(tags=["study"])


def get_study(db: Db, study_id: int) -> Study:
    study = db.get(Study, study_id)
    if study is None:
        raise HTTPException(status_code=404, detail="study not found")
    return study


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request, study_id: int, db: Db, user: CurrentUser, settings: AppSettings, series: int | None = None
) -> HTMLResponse:
    study = get_study(db, study_id)
    view = build_study_view(db, settings.storage_dir, study, series)
    db.add(AuditEvent(actor=f"user:{user.username}", action="study_viewed", study_id=study.id))
    saved = request.query_params.get("saved") == "1"
    error = request.query_params.get("error")
    return render(
        request,
        "study.html",
        {
            "v": view,
            "overlay_json": json.dumps(view.overlay_data, separators=(",", ":")),
            "saved": saved,
            "error": error if error in ("sign_failed", "review_closed", "no_ai_result") else None,
        },
    )
