"""The instance index: idempotent upserts of study, series and instance rows.

The row of a new instance and the rename of its file into place happen inside one transaction, and the
C-STORE Success is sent only after the commit. The unique SOP Instance UID is the lock: a second sender of
the same instance waits on (PostgreSQL) or is serialized behind (SQLite) the first, then sees its row.
Study and series rows are created with ``INSERT ... ON CONFLICT DO NOTHING`` so concurrent associations and
processes receiving the same study never fail on the unique constraints.

A re-sent identical instance (same SHA-256) is acknowledged without a new row. A *different* instance with
a known SOP Instance UID keeps the original under the default ``keep`` policy (as Orthanc and dcm4chee do:
overwriting would let any peer tamper with images) and is recorded as a security audit event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicom_agent.db.orm import AuditEvent, Instance, Series, Study
from dicom_agent.db.states import StudyState, check_study
from dicom_agent.dicom.header import InstanceHeader

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["keep", "overwrite"]


class Outcome(StrEnum):
    STORED = "stored"
    IDENTICAL = "identical"  # re-send of the same bytes: acknowledged, nothing changes
    CONFLICT_KEPT = "conflict_kept"  # different bytes, original kept (security event)
    OVERWRITTEN = "overwritten"  # different bytes, replaced under policy "overwrite" (security event)


@dataclass(frozen=True)
class StoredFile:
    """A spooled, fsynced file and where it should go."""

    relpath: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class IndexResult:
    outcome: Outcome
    study_id: int
    instance_id: int
    reopened: bool = False
    replaced_relpath: str | None = None  # old file to delete after an overwrite moved the instance


def utcnow() -> datetime:
    return datetime.now(UTC)


def index_instance(
    session_factory: Callable[[], Session],
    header: InstanceHeader,
    stored: StoredFile,
    calling_ae: str | None,
    place_file: Callable[[], None],
    file_present: Callable[[str], bool],
    policy: DuplicatePolicy = "keep",
    now: datetime | None = None,
) -> IndexResult:
    """Indexes one received instance; ``place_file`` moves it into place inside the transaction.

    ``file_present(relpath)`` lets an identical re-send repair an index row whose file was lost (a crash
    between the commit and the folder fsync): the file is then placed again.
    """
    now = now or utcnow()
    with session_factory() as session:
        result = _insert_new(session, header, stored, calling_ae, now)
        if result is not None:
            place_file()
            session.commit()
            return result
        session.rollback()  # also drops a study/series row created for an instance that is already known

    with session_factory() as session:
        existing = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid).with_for_update()
        ).one_or_none()
        if existing is None:  # the other writer rolled back between our two transactions
            result = _insert_new(session, header, stored, calling_ae, now)
            if result is None:
                raise RuntimeError("instance row vanished and reappeared; the peer may retry")
            place_file()
            session.commit()
            return result
        if existing.sha256 == stored.sha256:
            if not file_present(existing.path):
                log.warning("index row %s had no file; placing the re-sent copy", existing.id)
                place_file()
            session.commit()
            return IndexResult(Outcome.IDENTICAL, existing.study_id, existing.id)
        detail: dict[str, Any] = {
            "sop_instance_uid": header.sop_instance_uid,
            "calling_ae": calling_ae,
            "original_sha256": existing.sha256,
            "received_sha256": stored.sha256,
            "policy": policy,
        }
        if policy == "keep":
            session.add(
                AuditEvent(
                    at=now,
                    actor="scp",
                    action="instance_conflict_kept",
                    study_id=existing.study_id,
                    security=True,
                    detail=detail,
                )
            )
            session.commit()
            log.warning("conflicting re-send of an instance from %s: original kept (security event)", calling_ae)
            return IndexResult(Outcome.CONFLICT_KEPT, existing.study_id, existing.id)
        old_path, old_study = existing.path, existing.study_id
        _remove_instance(session, existing)
        session.flush()
        result = _insert_new(session, header, stored, calling_ae, now)
        if result is None:
            raise RuntimeError("could not re-insert an overwritten instance")
        session.add(
            AuditEvent(
                at=now, actor="scp", action="instance_overwritten", study_id=old_study, security=True, detail=detail
            )
        )
        place_file()
        session.commit()
        log.warning("conflicting re-send of an instance from %s replaced the original (security event)", calling_ae)
        replaced = old_path if old_path != str(stored.relpath) else None
        return IndexResult(Outcome.OVERWRITTEN, result.study_id, result.instance_id, result.reopened, replaced)


def _insert_ignore(session: Session, entity: Any, values: dict[str, Any], key: str) -> int | None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id``: the new id, or None if the key existed."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(entity).values(**values).on_conflict_do_nothing(index_elements=[key]).returning(entity.id)
    return session.execute(stmt).scalar_one_or_none()


def _insert_new(
    session: Session, h: InstanceHeader, stored: StoredFile, calling_ae: str | None, now: datetime
) -> IndexResult | None:
    """Creates the rows of a new instance; None when the SOP Instance UID is already indexed."""
    study_values = {
        "study_instance_uid": h.study_instance_uid,
        "patient_id": h.patient_id,
        "patient_name": h.patient_name,
        "patient_birth_date": h.patient_birth_date,
        "patient_sex": h.patient_sex,
        "accession_number": h.accession_number,
        "study_date": h.study_date,
        "study_time": h.study_time,
        "study_description": h.study_description,
        "referring_physician": h.referring_physician,
        "modalities": "",
        "calling_ae": calling_ae,
        "state": StudyState.RECEIVING.value,
        "first_received_at": now,
        "last_received_at": now,
    }
    study_id = _insert_ignore(session, Study, study_values, "study_instance_uid")
    if study_id is None:
        study_id = session.scalars(select(Study.id).where(Study.study_instance_uid == h.study_instance_uid)).one()
    # Lock order: the study row first, then its series and instances. Every writer of a study queues here,
    # so two associations can never hold each other's series or instance keys (no deadlock on PostgreSQL).
    # The INSERT comes first on purpose: on SQLite it takes the write lock, so the reads below are not stale.
    study = session.get(Study, study_id, with_for_update=True, populate_existing=True)
    assert study is not None
    series_values = {
        "study_id": study_id,
        "series_instance_uid": h.series_instance_uid,
        "modality": h.modality,
        "body_part_examined": h.body_part_examined,
        "series_description": h.series_description,
        "series_number": h.series_number,
        "image_type": h.image_type,
    }
    series_by_uid = select(Series.id).where(Series.series_instance_uid == h.series_instance_uid)
    series_id = session.scalars(series_by_uid).first()
    if series_id is None:
        series_id = _insert_ignore(session, Series, series_values, "series_instance_uid")
    if series_id is None:  # inserted by another writer between our SELECT and INSERT
        series_id = session.scalars(series_by_uid).one()
    instance_values = {
        "series_id": series_id,
        "study_id": study_id,
        "sop_instance_uid": h.sop_instance_uid,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "instance_number": h.instance_number,
        "rows": h.rows,
        "columns": h.columns,
        "number_of_frames": h.number_of_frames,
        "path": str(stored.relpath),
        "size_bytes": stored.size_bytes,
        "sha256": stored.sha256,
        "calling_ae": calling_ae,
        "received_at": now,
    }
    instance_id = _insert_ignore(session, Instance, instance_values, "sop_instance_uid")
    if instance_id is None:
        return None

    reopened = False
    if study.state != StudyState.RECEIVING:
        # PS3.4 does not end a study; a late instance makes the next run a new revision.
        study.state = check_study(study.state, StudyState.RECEIVING).value
        study.revision += 1
        study.needs_rerun = True
        study.completed_at = None
        reopened = True
        log.info("study %s reopened by a late instance (revision %s)", study_id, study.revision)
    study.instance_count += 1
    study.last_received_at = now
    if h.modality and h.modality not in study.modalities.split(","):
        study.modalities = ",".join(sorted(filter(None, [*study.modalities.split(","), h.modality])))[:128]
    session.execute(update(Series).where(Series.id == series_id).values(instance_count=Series.instance_count + 1))
    return IndexResult(Outcome.STORED, study_id, instance_id, reopened)


def _remove_instance(session: Session, row: Instance) -> None:
    session.execute(update(Study).where(Study.id == row.study_id).values(instance_count=Study.instance_count - 1))
    session.execute(update(Series).where(Series.id == row.series_id).values(instance_count=Series.instance_count - 1))
    session.delete(row)
