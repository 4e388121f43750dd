"""The worklist query: studies with AI results, most urgent first, filtered and paged in SQL.

Urgency order (issue 6): studies whose current findings include a critical class first, then routing priority
(``priority_rank``: stat < urgent < routine), then arrival (oldest first: it has waited longest). All filter values
are bound parameters; LIKE patterns are escaped so ``%``/``_`` in a search are literal characters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, Subquery, and_, case, func, or_, select
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Finding, Job, Review, Study
from dicom_agent.db.states import JobState, ReviewState, StudyState
from dicom_agent.web.schemas import TopFinding, WorklistFilters, WorklistPage, WorklistRow, WorklistVersion

#: Study states that mean "AI was run or is running" — the worklist shows only these.
AI_STATES = (
    StudyState.QUEUED,
    StudyState.INFERRING,
    StudyState.RESULTS_READY,
    StudyState.EXPORTED,
    StudyState.SIGNED,
    StudyState.FAILED,
)


def critical_studies() -> Subquery:
    """Ids of studies whose succeeded job has a present critical finding (a small set: joined, not per row)."""
    return (
        select(Finding.study_id)
        .join(Job, Job.id == Finding.job_id)
        .where(Finding.present.is_(True), Finding.critical.is_(True), Job.state == JobState.SUCCEEDED)
        .distinct()
        .subquery("critical_study")
    )


def _review_exists(*states: str) -> ColumnElement[bool]:
    stmt = select(Review.id).where(Review.study_id == Study.id)
    if states:
        stmt = stmt.where(Review.state.in_(states))
    return stmt.correlate(Study).exists()


def review_filter(state: str) -> ColumnElement[bool] | None:
    """The review-state filter as semi-joins (index ``ix_review_study_id``), never a per-row subquery in SELECT.

    A study's review state is the strongest of its reviews: signed > rejected > in review > new (no review).
    """
    signed = _review_exists(ReviewState.SIGNED)
    rejected = _review_exists(ReviewState.REJECTED)
    if state == "open":
        return and_(~signed, ~rejected)
    if state == "new":
        return ~_review_exists()
    if state == "in_review":
        return and_(_review_exists(ReviewState.IN_REVIEW), ~signed, ~rejected)
    if state == "signed":
        return signed
    if state == "rejected":
        return and_(rejected, ~signed)
    return None


def study_review_state(states: set[str]) -> str:
    for state in (ReviewState.SIGNED, ReviewState.REJECTED, ReviewState.IN_REVIEW):
        if state in states:
            return state.value
    return ReviewState.NEW.value


_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


def _filtered(stmt: _S, f: WorklistFilters) -> _S:
    stmt = stmt.where(Study.state.in_([s.value for s in AI_STATES]))
    if f.modality:
        stmt = stmt.where(Study.modalities.contains(f.modality, autoescape=True))
    review = review_filter(f.state)
    if review is not None:
        stmt = stmt.where(review)
    if f.date_from:
        stmt = stmt.where(Study.study_date >= f.date_from.strftime("%Y%m%d"))
    if f.date_to:
        stmt = stmt.where(Study.study_date <= f.date_to.strftime("%Y%m%d"))
    if f.q:
        needle = f.q.lower()
        stmt = stmt.where(
            or_(
                *(
                    func.lower(col).contains(needle, autoescape=True)
                    for col in (Study.patient_name, Study.patient_id, Study.accession_number, Study.study_description)
                )
            )
        )
    return stmt


def worklist_statement(f: WorklistFilters) -> Select[*tuple[Any, ...]]:
    """The paged SELECT of study ids in urgency order, narrow so the sort stays cheap (``bench/worklist.py``
    prints its EXPLAIN); the page's rows are loaded by id afterwards."""
    crit = critical_studies()
    critical = crit.c.study_id.is_not(None)
    stmt = select(Study.id, critical.label("critical")).outerjoin(crit, crit.c.study_id == Study.id)
    return (
        _filtered(stmt, f)
        .order_by(case((critical, 0), else_=1), Study.priority_rank, Study.first_received_at, Study.id)
        .limit(f.per_page)
        .offset((f.page - 1) * f.per_page)
    )


def worklist_page(db: Session, f: WorklistFilters) -> WorklistPage:
    total = db.scalar(_filtered(select(func.count(Study.id)), f)) or 0
    pages = max(1, math.ceil(total / f.per_page))
    ranked = db.execute(worklist_statement(f)).all()
    study_ids = [sid for sid, _critical in ranked]
    studies = {s.id: s for s in db.scalars(select(Study).where(Study.id.in_(study_ids)))} if study_ids else {}
    reviews: dict[int, set[str]] = defaultdict(set)
    if study_ids:
        for sid, state in db.execute(select(Review.study_id, Review.state).where(Review.study_id.in_(study_ids))):
            reviews[sid].add(state)
    findings = _current_findings(db, study_ids)
    out: list[WorklistRow] = []
    for sid, critical in ranked:
        study = studies[sid]
        present = sorted(findings.get(study.id, []), key=lambda x: (not x.critical, -x.probability))
        top = present[0] if present else None
        out.append(
            WorklistRow(
                study_id=study.id,
                patient_name=study.patient_name,
                patient_id=study.patient_id,
                accession_number=study.accession_number,
                modalities=study.modalities or "",
                study_date=study.study_date,
                description=study.study_description,
                study_state=study.state,
                priority=study.priority or "routine",
                critical=bool(critical),
                findings_count=len(present),
                top_finding=TopFinding(
                    label=top.label,
                    name_en=top.name_en,
                    name_zh=top.name_zh,
                    probability=top.probability,
                    critical=top.critical,
                )
                if top
                else None,
                review_state=study_review_state(reviews.get(study.id, set())),
                first_received_at=study.first_received_at,
            )
        )
    return WorklistPage(rows=out, total=total, page=f.page, pages=pages, filters=f)


def current_job_ids(db: Session, study_ids: list[int]) -> dict[int, int]:
    """study id → its newest succeeded job (the AI result under review)."""
    if not study_ids:
        return {}
    stmt = (
        select(Job.study_id, func.max(Job.id))
        .where(Job.study_id.in_(study_ids), Job.state == JobState.SUCCEEDED)
        .group_by(Job.study_id)
    )
    return {sid: jid for sid, jid in db.execute(stmt).all()}


def _current_findings(db: Session, study_ids: list[int]) -> dict[int, list[Finding]]:
    jobs = current_job_ids(db, study_ids)
    if not jobs:
        return {}
    stmt = select(Finding).where(and_(Finding.job_id.in_(list(jobs.values())), Finding.present.is_(True)))
    by_study: dict[int, list[Finding]] = defaultdict(list)
    for finding in db.scalars(stmt):
        by_study[finding.study_id].append(finding)
    return by_study


def worklist_version(db: Session) -> WorklistVersion:
    """Changes whenever a study enters the list, changes state, or a review is saved."""
    studies = db.execute(
        select(func.count(Study.id), func.max(Study.updated_at)).where(Study.state.in_([s.value for s in AI_STATES]))
    ).one()
    reviews = db.execute(select(func.count(Review.id), func.max(Review.updated_at))).one()
    return WorklistVersion(token=f"{studies[0]}:{studies[1]}:{reviews[0]}:{reviews[1]}")
