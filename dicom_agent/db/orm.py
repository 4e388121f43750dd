"""ORM tables (design notes, "Database"). The top-level ``models/`` package is the ML model, not this.

Identifiers from peers (UIDs, AE titles, patient data) are stored as data only; file paths are relative to
the storage root and derived from hashes, never from these strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dicom_agent.db.base import Base
from dicom_agent.db.states import ExportState, JobState, ReviewState, StudyState


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = True, **kw: Any) -> Any:
    return mapped_column(DateTime(timezone=True), nullable=nullable, **kw)


class Study(Base):
    __tablename__ = "study"
    __table_args__ = (
        Index("ix_study_state_last_received_at", "state", "last_received_at"),
        Index("ix_study_worklist", "priority_rank", "first_received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician: Mapped[str | None] = mapped_column(String(324))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    priority_rank: Mapped[int] = mapped_column(Integer, default=50)  # lower is more urgent (worklist order)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    needs_rerun: Mapped[bool] = mapped_column(Boolean, default=False)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = _ts(False, default=utcnow)
    last_received_at: Mapped[datetime] = _ts(False, default=utcnow)
    completed_at: Mapped[datetime | None] = _ts()
    route_rule: Mapped[str | None] = mapped_column(String(128))
    route_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _ts(False, default=utcnow, onupdate=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str | None] = mapped_column(String(128))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))  # relative to the storage root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = _ts(False, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One inference run of one model on one study revision."""

    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("study_id", "model_name", "revision", name="uq_job_study_model_rev"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64), default="infer_study")
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    destinations: Mapped[list[str] | None] = mapped_column(JSON)
    output_profile: Mapped[str] = mapped_column(String(32), default="full")
    series_uids: Mapped[list[str] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(32))
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _ts(False, default=utcnow)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of the worker process running it
    heartbeat_at: Mapped[datetime | None] = _ts()  # refreshed while it runs; stale = the claim is dead

    study: Mapped[Study] = relationship(back_populates="jobs")
    findings: Mapped[list[Finding]] = relationship(back_populates="job", cascade="all, delete-orphan")
    result_objects: Mapped[list[ResultObject]] = relationship(back_populates="job")


class Finding(Base):
    """A coded finding of one job: probability, location, boxes and mask references, text per language."""

    __tablename__ = "finding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    code_value: Mapped[str] = mapped_column(String(32))
    coding_scheme: Mapped[str] = mapped_column(String(16))
    code_meaning: Mapped[str] = mapped_column(String(128))
    name_en: Mapped[str] = mapped_column(String(128))
    name_zh: Mapped[str] = mapped_column(String(128))
    probability: Mapped[float] = mapped_column(Float)
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    location: Mapped[str | None] = mapped_column(String(64))
    laterality: Mapped[str | None] = mapped_column(String(16))
    size_mm: Mapped[float | None] = mapped_column(Float)
    suv_max: Mapped[float | None] = mapped_column(Float)  # PET lesions: highest SUVbw of the source voxels
    text_en: Mapped[str | None] = mapped_column(Text)
    text_zh: Mapped[str | None] = mapped_column(Text)
    boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    masks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    tracking_uid: Mapped[str | None] = mapped_column(String(64))
    flags: Mapped[list[str] | None] = mapped_column(JSON)  # e.g. decoder/heads disagreement

    job: Mapped[Job] = relationship(back_populates="findings")


class ResultObject(Base):
    """An SR, SEG, KOS or secondary capture the node produced, with its UIDs and file."""

    __tablename__ = "result_object"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sr, seg, kos, sc, gsps, sr_signed
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))  # relative to the storage root
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = _ts(False, default=utcnow)

    job: Mapped[Job | None] = relationship(back_populates="result_objects")
    exports: Mapped[list[Export]] = relationship(back_populates="result_object", cascade="all, delete-orphan")


class Export(Base):
    """Outbox row: one object to one destination (``AET@host:port``)."""

    __tablename__ = "export"
    __table_args__ = (
        UniqueConstraint("result_object_id", "destination", name="uq_export_object_destination"),
        Index("ix_export_state_next_try_at", "state", "next_try_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_object_id: Mapped[int] = mapped_column(ForeignKey("result_object.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = _ts(False, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(False, default=utcnow)
    updated_at: Mapped[datetime] = _ts(False, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = _ts()

    result_object: Mapped[ResultObject] = relationship(back_populates="exports")


class User(Base):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(128), default="")
    organization: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16), default="radiologist")  # radiologist | admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _ts(False, default=utcnow)


class Review(Base):
    """A radiologist's review of one job's AI draft: decisions per finding, edited text, signature."""

    __tablename__ = "review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(16), default=ReviewState.IN_REVIEW)
    decisions: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # finding id -> accept/reject/edit
    report_en: Mapped[str | None] = mapped_column(Text)
    report_zh: Mapped[str | None] = mapped_column(Text)
    impression: Mapped[str | None] = mapped_column(Text)
    reject_reason: Mapped[str | None] = mapped_column(Text)
    signed_object_id: Mapped[int | None] = mapped_column(ForeignKey("result_object.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _ts(False, default=utcnow)
    updated_at: Mapped[datetime] = _ts(False, default=utcnow, onupdate=utcnow)
    signed_at: Mapped[datetime | None] = _ts()


class AuditEvent(Base):
    """Who or what touched which study, and security events (e.g. a conflicting re-send)."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = _ts(False, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))  # "user:alice", "scp", "worker", "exporter"
    action: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("study.id", ondelete="SET NULL"), index=True)
    security: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
