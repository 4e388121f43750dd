"""Review actions on a study's AI draft: per-finding decisions, report edits, reject, sign (all POST + CSRF)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import RedirectResponse

from dicom_agent.db.orm import Finding
from dicom_agent.web import review_service as rs
from dicom_agent.web.deps import AppSettings, Db, ReviewerUser
from dicom_agent.web.routes.study import get_study
from dicom_agent.web.schemas import FindingDecisionForm, ReportForm, SignForm
from dicom_agent.web.signing import SigningError, sign_review
from dicom_agent.web.study_view import current_job, latest_review

log = logging.getLogger(__name__)
router = APIRouter(tags=["review"])


def _back(study_id: int, **query: str) -> RedirectResponse:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return RedirectResponse(f"/studies/{study_id}" + (f"?{suffix}" if suffix else ""), status_code=303)


def _open(db: Db, study_id: int, user: ReviewerUser) -> rs.Review | RedirectResponse:
    study = get_study(db, study_id)
    job = current_job(db, study.id)
    if job is None:
        return _back(study_id, error="no_ai_result")
    try:
        return rs.open_review(db, study, job, user, latest_review(db, study.id, job.id))
    except rs.ReviewClosedError:
        return _back(study_id, error="review_closed")


@router.post("/studies/{study_id}/findings/{finding_id}/decision")
def decide_finding(
    study_id: int, finding_id: int, form: Annotated[FindingDecisionForm, Form()], db: Db, user: ReviewerUser
) -> RedirectResponse:
    review = _open(db, study_id, user)
    if isinstance(review, RedirectResponse):
        return review
    finding = db.get(Finding, finding_id)
    if finding is None or finding.job_id != review.job_id:
        raise HTTPException(status_code=404, detail="finding not in this AI result")
    rs.record_decision(db, review, finding, form, user)
    return _back(study_id, saved="1")


@router.post("/studies/{study_id}/report")
def save_report(study_id: int, form: Annotated[ReportForm, Form()], db: Db, user: ReviewerUser) -> RedirectResponse:
    review = _open(db, study_id, user)
    if isinstance(review, RedirectResponse):
        return review
    rs.save_report(db, review, form, user)
    return _back(study_id, saved="1")


@router.post("/studies/{study_id}/reject")
def reject_ai_result(
    study_id: int, db: Db, user: ReviewerUser, reason: Annotated[str, Form(min_length=1, max_length=2000)]
) -> RedirectResponse:
    review = _open(db, study_id, user)
    if isinstance(review, RedirectResponse):
        return review
    rs.reject_result(db, review, reason.strip(), user)
    return _back(study_id)


@router.post("/studies/{study_id}/sign")
def sign(
    study_id: int, form: Annotated[SignForm, Form()], db: Db, user: ReviewerUser, settings: AppSettings
) -> RedirectResponse:
    """Signs what the page shows: report fields sent with the button are saved first (none are lost unsaved)."""
    review = _open(db, study_id, user)
    if isinstance(review, RedirectResponse):
        return review
    if form.report_en is not None or form.report_zh is not None:
        rs.save_report(
            db,
            review,
            ReportForm(
                report_en=form.report_en if form.report_en is not None else review.report_en or "",
                report_zh=form.report_zh if form.report_zh is not None else review.report_zh or "",
                impression=form.impression if form.impression is not None else review.impression or "",
            ),
            user,
        )
        db.commit()  # the edits are kept even if signing fails below
    try:
        sign_review(db, settings, review, user)
    except rs.ReviewClosedError:
        db.rollback()
        return _back(study_id, error="review_closed")
    except SigningError as exc:
        log.error("signing study %s failed: %s", study_id, exc)
        db.rollback()
        return _back(study_id, error="sign_failed")
    return _back(study_id)
