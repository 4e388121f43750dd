"""The review workflow on the database: open, decide per finding, edit the report, reject, sign.

Every decision keeps who and when and what it changed (``review.decisions[finding id]`` with its history) and
writes an ``audit_event``, so that radiologist feedback can later be counted against the model's output.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from dicom_agent.db.orm import AuditEvent, Finding, Job, Review, Study, User
from dicom_agent.db.states import ReviewState
from dicom_agent.web.schemas import FindingDecisionForm, ReportForm


class ReviewClosedError(Exception):
    """The review is signed or rejected; a verified document is never modified (PS3.3 C.17.2.1)."""


def _now() -> datetime:
    return datetime.now(UTC)


def audit(db: Session, user: User, action: str, study_id: int, **detail: Any) -> None:
    db.add(AuditEvent(actor=f"user:{user.username}", action=action, study_id=study_id, detail=detail or None))


def open_review(db: Session, study: Study, job: Job, user: User, existing: Review | None) -> Review:
    """The review of this job, created (state in_review) by the first action on it."""
    if existing is not None:
        if existing.state in (ReviewState.SIGNED, ReviewState.REJECTED):
            raise ReviewClosedError
        return existing
    review = Review(study_id=study.id, job_id=job.id, user_id=user.id, state=ReviewState.IN_REVIEW, decisions={})
    db.add(review)
    db.flush()
    audit(db, user, "review_opened", study.id, review_id=review.id, job_id=job.id)
    return review


def record_decision(db: Session, review: Review, finding: Finding, form: FindingDecisionForm, user: User) -> None:
    decisions = dict(review.decisions or {})
    key = str(finding.id)
    before = decisions.get(key) or {}
    entry: dict[str, Any] = {
        "decision": form.decision,
        "label": (form.label.strip() or before.get("label") or finding.label) if form.decision == "edit" else None,
        "location": (form.location.strip() or None) if form.decision == "edit" else None,
        "ai_label": finding.label,
        "ai_location": finding.location,
        "ai_probability": finding.probability,
        "by": user.username,
        "at": _now().isoformat(),
        "history": [*before.get("history", []), *([_summary(before)] if before else [])],
    }
    decisions[key] = entry
    review.decisions = decisions  # a new dict, so the JSON column is marked dirty
    review.user_id = user.id
    review.updated_at = _now()
    audit(
        db,
        user,
        "finding_decision",
        review.study_id,
        review_id=review.id,
        finding_id=finding.id,
        decision=form.decision,
        label=entry["label"],
        location=entry["location"],
        previous=_summary(before) if before else None,
    )


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("decision", "label", "location", "by", "at")}


def save_report(db: Session, review: Review, form: ReportForm, user: User) -> None:
    changed = [
        name
        for name, old, new in (
            ("report_en", review.report_en, form.report_en),
            ("report_zh", review.report_zh, form.report_zh),
            ("impression", review.impression, form.impression),
        )
        if (old or "") != new
    ]
    review.report_en = form.report_en
    review.report_zh = form.report_zh
    review.impression = form.impression
    review.user_id = user.id
    review.updated_at = _now()
    audit(db, user, "report_edited", review.study_id, review_id=review.id, fields=changed)


def reject_result(db: Session, review: Review, reason: str, user: User) -> None:
    """The whole AI result is wrong or unusable: nothing is sent; the reason is kept for model feedback."""
    review.state = ReviewState.REJECTED
    review.reject_reason = reason
    review.user_id = user.id
    review.updated_at = _now()
    audit(db, user, "ai_result_rejected", review.study_id, review_id=review.id, reason=reason)


def rejected_finding_ids(review: Review) -> set[int]:
    return {int(k) for k, v in (review.decisions or {}).items() if v.get("decision") == "reject"}
