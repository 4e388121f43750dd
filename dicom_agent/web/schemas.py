"""Shapes the pages and JSON endpoints exchange — kept apart from the ORM tables (db/orm.py)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

ReviewFilter = Literal["open", "all", "new", "in_review", "signed", "rejected"]
Decision = Literal["accept", "reject", "edit"]


class WorklistFilters(BaseModel):
    """Query parameters of the worklist; every value reaches SQL only as a bound parameter."""

    modality: str = Field("", max_length=16)
    state: ReviewFilter = "open"
    date_from: date | None = None
    date_to: date | None = None
    q: str = Field("", max_length=128)
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(50, ge=5, le=200)

    @field_validator("date_from", "date_to", mode="before")
    @classmethod
    def _empty_date(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("modality")
    @classmethod
    def _modality(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("q")
    @classmethod
    def _q(cls, value: str) -> str:
        return value.strip()


class TopFinding(BaseModel):
    label: str
    name_en: str
    name_zh: str
    probability: float
    critical: bool


class WorklistRow(BaseModel):
    study_id: int
    patient_name: str | None
    patient_id: str | None
    accession_number: str | None
    modalities: str
    study_date: str | None
    description: str | None
    study_state: str
    priority: str
    critical: bool
    findings_count: int
    top_finding: TopFinding | None
    review_state: str
    first_received_at: datetime


class WorklistPage(BaseModel):
    rows: list[WorklistRow]
    total: int
    page: int
    pages: int
    filters: WorklistFilters


class WorklistVersion(BaseModel):
    """A cheap change token the page polls; when it changes the page fetches the rows fragment."""

    token: str


class FindingDecisionForm(BaseModel):
    decision: Decision
    label: str = Field("", max_length=64)
    location: str = Field("", max_length=64)


class ReportForm(BaseModel):
    report_en: str = Field("", max_length=20_000)
    report_zh: str = Field("", max_length=20_000)
    impression: str = Field("", max_length=20_000)


class SignForm(BaseModel):
    """Sign may carry the report fields of the page (the sign button submits the report form)."""

    report_en: str | None = Field(None, max_length=20_000)
    report_zh: str | None = Field(None, max_length=20_000)
    impression: str | None = Field(None, max_length=20_000)
