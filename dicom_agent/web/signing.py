"""Sign: the reviewed draft becomes a verified SR in a new series and goes to the export outbox.

dicom-outputs.md item 6 / issue 6: a NEW Comprehensive 3D SR (VERIFIED, FINAL, COMPLETE) with the Verifying
Observer (the signed-in user's name and organisation, the signature time) and Predecessor Documents → the AI
draft; findings the radiologist rejected are left out; the report text per language is the reviewed text.
The encoder is ``encode.signed.build_signed_sr``; storing and sending is the results outbox
(``export.outbox.enqueue``: the file, the result_object row and one export row per destination) inside the
request's transaction, so the review is signed exactly when the signed SR is queued; the exporter sends it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pydicom
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import Finding, Job, ResultObject, Review, Study, User
from dicom_agent.db.states import ReviewState, StudyState, check_study
from dicom_agent.errors import DicomAgentError, StateTransitionError
from dicom_agent.web.review_service import ReviewClosedError, audit, rejected_finding_ids
from dicom_agent.web.study_view import draft_text_for, parse_box, result_object, storage_path

log = logging.getLogger(__name__)
IMAGING_MEASUREMENTS = "126010"  # TID 1500 container of the measurement groups
TRACKING_UID = "112040"  # Tracking Unique Identifier


class SigningError(Exception):
    """The signed SR could not be built or stored; nothing was sent and the review stays open."""


PREFIXES = {"dr", "dr.", "prof", "prof.", "mr", "mr.", "ms", "ms.", "mrs", "mrs."}


def person_name(full_name: str) -> str:
    """A display name as DICOM PN (PS3.5 6.2.1.2, ``Family^Given^Middle^Prefix``): ``Dr. Ada Rad`` → ``Rad^Ada^^Dr.``.

    A name already written with ``^`` is kept; one word (e.g. a Chinese name) becomes ``Word^`` so that it is not
    mistaken for a malformed multi-part name.
    """
    name = " ".join(full_name.split())
    if "^" in name or not name:
        return name
    words = name.split(" ")
    prefix = words.pop(0) if len(words) > 1 and words[0].lower() in PREFIXES else ""
    if len(words) == 1:
        return f"{words[0]}^^^{prefix}" if prefix else f"{words[0]}^"
    family, given, middle = words[-1], words[0], " ".join(words[1:-1])
    return "^".join([family, given, middle, prefix]).rstrip("^")


def _group_boxes(draft: pydicom.Dataset) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """(tracking UID, source SOP Instance UID, bounding box) of every TID 1410 group with an image region."""
    out: list[tuple[str, str, tuple[float, float, float, float]]] = []
    for container in draft.get("ContentSequence", []):
        names = container.get("ConceptNameCodeSequence") or []
        if not names or names[0].CodeValue != IMAGING_MEASUREMENTS:
            continue
        for group in container.get("ContentSequence", []):
            uid, region = "", None
            for item in group.get("ContentSequence", []):
                code = (item.get("ConceptNameCodeSequence") or [None])[0]
                if item.ValueType == "UIDREF" and code is not None and code.CodeValue == TRACKING_UID:
                    uid = str(item.UID)
                elif item.ValueType == "SCOORD":
                    region = item
            if not uid or region is None:
                continue
            points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
            refs = [
                str(ref.ReferencedSOPInstanceUID)
                for child in region.get("ContentSequence", [])
                for ref in child.get("ReferencedSOPSequence", [])
            ]
            bbox = (
                float(points[:, 0].min()),
                float(points[:, 1].min()),
                float(points[:, 0].max()),
                float(points[:, 1].max()),
            )
            out.extend((uid, sop, bbox) for sop in refs)
    return out


def rejected_groups(
    findings: list[Finding], rejected: set[int], draft: pydicom.Dataset
) -> tuple[set[str], set[tuple[str, str]]]:
    """What to leave out of the signed SR for the rejected findings.

    The finding rows do not carry the SR's per-box tracking UIDs, so a rejected finding's box groups are found
    by their image region (same source image, same rectangle); its study-level and segment groups by its code,
    unless an accepted finding has the same code (two nodules share a code and a SEG segment; then only the
    rejected one's boxes go).
    """
    uids = {f.tracking_uid for f in findings if f.id in rejected and f.tracking_uid}
    groups = _group_boxes(draft)
    for f in findings:
        if f.id not in rejected:
            continue
        for raw in f.boxes or []:
            box = parse_box(raw) if isinstance(raw, dict) else None
            if box is None:
                continue
            want = (box["x0"], box["y0"], box["x1"], box["y1"])
            for uid, sop, bbox in groups:
                if sop == box["sop"] and all(abs(a - b) < 1e-3 for a, b in zip(bbox, want, strict=True)):
                    uids.add(uid)
    kept = {(f.code_value, f.coding_scheme) for f in findings if f.present and f.id not in rejected}
    codes = {(f.code_value, f.coding_scheme) for f in findings if f.id in rejected} - kept
    return uids, codes


def sign_review(db: Session, settings: Settings, review: Review, user: User) -> ResultObject:
    from dicom_agent.encode import EncodedObject
    from dicom_agent.encode.signed import build_signed_sr
    from dicom_agent.export import outbox
    from dicom_agent.export.destinations import configured_destinations

    # Claim the review first: of two concurrent signatures only one sees it in review (the row is locked, or
    # SQLite's writer lock serializes the UPDATEs); a failure below rolls the claim back.
    result = db.execute(
        update(Review)
        .where(Review.id == review.id, Review.state == ReviewState.IN_REVIEW)
        .values(state=ReviewState.SIGNED)
        .execution_options(synchronize_session=False)
    )
    claimed = cast(CursorResult[Any], result).rowcount
    if claimed != 1:
        raise ReviewClosedError
    job = db.get(Job, review.job_id)
    study = db.get(Study, review.study_id)
    draft_row = result_object(db, review.job_id, "sr")
    if job is None or study is None or draft_row is None:
        raise SigningError("no AI draft SR stored for this result")
    path = storage_path(settings.storage_dir, draft_row.path)
    if path is None or not path.is_file():
        raise SigningError("the draft SR file is missing from the storage root")
    findings = list(db.scalars(select(Finding).where(Finding.job_id == job.id)))
    draft = pydicom.dcmread(path)
    uids, codes = rejected_groups(findings, rejected_finding_ids(review), draft)
    draft_text = draft_text_for(path, findings)
    report_en = review.report_en if review.report_en is not None else draft_text.get("en", "")
    report_zh = review.report_zh if review.report_zh is not None else draft_text.get("zh", "")
    when = datetime.now(UTC).replace(microsecond=0)
    try:
        signed = build_signed_sr(
            draft,
            report_en=report_en,
            report_zh=report_zh,
            verifier_name=person_name(user.full_name or user.username),
            verifier_organization=user.organization or settings.ae_title,
            verified_at=when,
            rejected_tracking_uids=uids,
            rejected_codes=codes,
            impression=review.impression or None,
        )
    except (DicomAgentError, ValueError) as exc:
        raise SigningError(f"signed SR not built: {exc}") from exc
    encoded = EncodedObject.of("sr_signed", signed)
    destinations = list(job.destinations or [d.address for d in configured_destinations(settings)])
    review.report_en, review.report_zh = report_en, report_zh
    try:
        stored = outbox.enqueue(db, settings.storage_dir, [encoded], destinations, study_id=study.id, job_id=job.id)[0]
    except (DicomAgentError, OSError) as exc:
        raise SigningError(f"signed SR not stored: {exc}") from exc
    row = db.get(ResultObject, stored.result_object_id)
    assert row is not None
    review.state = ReviewState.SIGNED
    review.signed_object_id = row.id
    review.signed_at = when
    review.user_id = user.id
    try:
        study.state = check_study(study.state, StudyState.SIGNED)
    except StateTransitionError:
        log.warning("study %s signed from state %s; study state left as is", study.id, study.state)
    export_ids = stored.export_ids
    audit(
        db,
        user,
        "report_signed",
        study.id,
        review_id=review.id,
        sop_instance_uid=encoded.sop_instance_uid,
        predecessor=str(draft_row.sop_instance_uid),
        left_out=sorted(rejected_finding_ids(review)),
        exports=export_ids,
        destinations=destinations,
    )
    db.commit()  # durable before the exporter is woken (style.md 7)
    from dicom_agent.export.runner import wake

    wake()
    return row
