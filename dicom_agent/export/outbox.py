"""The durable outbox: encoded objects become files + ``result_object`` rows + one ``export`` row per destination.

Everything is committed before anything is sent (style.md 7), so a crash at any point loses nothing: the
exporter picks up pending rows on its next start. The ``result_object`` table is the UID → sha256 ledger:
the same UID twice is the same row, and the same UID with different bytes is an encoder bug (non-deterministic
output or a content change without a new revision) and raises instead of silently replacing a sent object.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Export, ResultObject, utcnow
from dicom_agent.db.states import ExportState, check_export
from dicom_agent.encode.objects import EncodedObject
from dicom_agent.errors import EncodeError
from dicom_agent.store.atomic import atomic_write_bytes, hashed_relpath, resolve_inside

log = logging.getLogger(__name__)


class LedgerConflictError(EncodeError):
    """The same SOP Instance UID was encoded twice with different bytes."""


@dataclass(frozen=True)
class Stored:
    result_object_id: int
    export_ids: list[int]


def store_object(
    session: Session, storage_root: Path, obj: EncodedObject, study_id: int, job_id: int | None
) -> ResultObject:
    """Writes the file (atomically, inside the storage root) and its row; idempotent per SOP Instance UID."""
    data = obj.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    row = session.scalar(select(ResultObject).where(ResultObject.sop_instance_uid == obj.sop_instance_uid))
    if row is not None:
        if row.sha256 != digest:
            raise LedgerConflictError(
                f"{obj.kind} {obj.sop_instance_uid}: already stored with other bytes "
                "(content changed without a new revision?)"
            )
        if not resolve_inside(storage_root, row.path).exists():  # the file was lost: same bytes, write it again
            atomic_write_bytes(storage_root, row.path, data)
        return row
    study_uid = str(obj.dataset.StudyInstanceUID)
    relpath = hashed_relpath(study_uid, obj.series_instance_uid, obj.sop_instance_uid, prefix="results")
    atomic_write_bytes(storage_root, relpath, data)
    row = ResultObject(
        job_id=job_id,
        study_id=study_id,
        kind=obj.kind,
        sop_class_uid=obj.sop_class_uid,
        sop_instance_uid=obj.sop_instance_uid,
        series_instance_uid=obj.series_instance_uid,
        path=relpath.as_posix(),
        sha256=digest,
        size_bytes=len(data),
    )
    session.add(row)
    session.flush()
    return row


def queue_exports(session: Session, result_object_id: int, destinations: Iterable[str]) -> list[int]:
    """One ``export`` row per (object, destination); an existing row is kept as it is (no duplicate send)."""
    ids = []
    for destination in dict.fromkeys(destinations):
        row = session.scalar(
            select(Export).where(Export.result_object_id == result_object_id, Export.destination == destination)
        )
        if row is None:
            row = Export(
                result_object_id=result_object_id,
                destination=destination,
                state=ExportState.PENDING,
                attempts=0,
                next_try_at=utcnow(),
            )
            session.add(row)
            session.flush()
        ids.append(row.id)
    return ids


def enqueue(
    session: Session,
    storage_root: Path,
    objects: Sequence[EncodedObject],
    destinations: Iterable[str],
    *,
    study_id: int,
    job_id: int | None = None,
) -> list[Stored]:
    """Stores ``objects`` and queues each for every destination; the caller's commit makes it durable."""
    targets = list(destinations)
    out = []
    for obj in objects:
        row = store_object(session, storage_root, obj, study_id, job_id)
        out.append(Stored(row.id, queue_exports(session, row.id, targets)))
    log.info("stored %d result object(s), queued for %d destination(s)", len(objects), len(targets))
    return out


def replay(session: Session, export_ids: Iterable[int] = (), *, dead: bool = False) -> list[int]:
    """Puts rows back to ``pending`` (due now, a fresh attempt budget): the given ids, and every dead row if asked.

    A row being sent right now is left alone; a done row may be replayed on purpose (the PACS lost it).
    """
    query = select(Export)
    wanted = list(export_ids)
    if dead:
        query = query.where(Export.state == ExportState.DEAD)
    elif wanted:
        query = query.where(Export.id.in_(wanted))
    else:
        return []
    replayed = []
    now = utcnow()
    for row in session.scalars(query):
        if row.state == ExportState.SENDING:
            continue
        row.state = check_export(row.state, ExportState.PENDING)
        row.attempts = 0
        row.next_try_at = now
        row.updated_at = now
        replayed.append(row.id)
    log.info("replaying %d export(s)", len(replayed))
    return replayed


def export_table(session: Session, limit: int = 100, state: str | None = None) -> list[tuple[object, ...]]:
    """(id, kind, destination, state, attempts, next try, last error) per export row, newest first."""
    query = (
        select(
            Export.id,
            ResultObject.kind,
            Export.destination,
            Export.state,
            Export.attempts,
            Export.next_try_at,
            Export.last_error,
        )
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .order_by(Export.id.desc())
        .limit(limit)
    )
    if state:
        query = query.where(Export.state == state)
    return [tuple(row) for row in session.execute(query).all()]


# Which object kinds each output profile delivers; a signed SR goes to every destination.
PROFILE_KINDS = {
    "full": frozenset({"sr", "seg", "kos", "sr_signed"}),
    "sr-only": frozenset({"sr", "sr_signed"}),
    "key-images": frozenset({"sc", "sr_signed"}),
    "key-images+gsps": frozenset({"sc", "gsps", "sr_signed"}),
}


def persist_results(
    job_id: int, objects: Sequence[EncodedObject], destinations: Sequence[str], settings: Any = None
) -> list[int]:
    """Stores a job's objects and queues them, in one committed transaction; returns the export ids.

    ``destinations`` are ``AET@host:port[?profile=...]`` strings: each gets the objects of its profile's kinds
    (no profile given: every object). Objects are always stored, even with no destination (for review).
    """
    from dicom_agent.config import get_settings
    from dicom_agent.db.orm import Job
    from dicom_agent.db.session import session_scope
    from dicom_agent.export.destinations import Destination

    settings = settings or get_settings()
    parsed = [(Destination.parse(text), "?profile=" in text) for text in destinations]
    export_ids: list[int] = []
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ValueError(f"job {job_id} does not exist")
        for obj in objects:
            row = store_object(session, settings.storage_dir, obj, job.study_id, job_id)
            targets = [d.address for d, explicit in parsed if not explicit or obj.kind in PROFILE_KINDS[d.profile]]
            export_ids.extend(queue_exports(session, row.id, targets))
        kinds = {obj.kind for obj in objects}
        for d, explicit in parsed:
            if explicit and not kinds & PROFILE_KINDS[d.profile]:
                log.warning("destination %s wants profile %s: none of these objects fit it", d.address, d.profile)
    from dicom_agent.export.runner import wake

    wake()
    return export_ids


def deliver(export_id: int, settings: Any = None) -> Any:
    """Sends one export row now (a Celery task's body); see ``export.runner.deliver``."""
    from dicom_agent.config import get_settings
    from dicom_agent.export.runner import deliver as run_one

    return run_one(export_id, settings or get_settings())
