"""The verified final report: a NEW Comprehensive 3D SR in a NEW series that supersedes the AI draft.

dicom-outputs.md item 6: VerificationFlag VERIFIED, PreliminaryFlag FINAL, CompletionFlag COMPLETE, Verifying
Observer Sequence (name, organisation, date/time), Predecessor Documents Sequence → the draft, the observation
context with the Person observer added and the Device observer kept. Findings the radiologist rejected are
left out; the impression is the radiologist's text. A verified document is never modified: an amendment is
another call with the signed SR as ``draft`` (it becomes the predecessor).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from dicom_agent.dicom.codes import Code
from dicom_agent.dicom.uids import derived_uid
from dicom_agent.encode.equipment import CHARSET
from dicom_agent.encode.identity import SERIES_NUMBER, copy_study_attributes, pin_timestamps
from dicom_agent.encode.sr import COMMENT, QUALITATIVE_EVALUATIONS, impression_container, language_item
from dicom_agent.errors import EncodeError

FINAL_SERIES_DESCRIPTION = "Final report (verified)"
IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"
TRACKING_UID = "112040"
FINDING = "121071"


@dataclass(frozen=True)
class DraftGroup:
    """One measurement group of a draft, as the review UI lists it."""

    tracking_uid: str
    tracking_id: str
    finding: Code
    probability_percent: float | None


def draft_groups(draft: Dataset) -> list[DraftGroup]:
    """The measurement groups of an SR (TID 1501/1410/1411), in document order."""
    out = []
    for group in _measurement_groups(draft):
        uid = tid = ""
        finding = Code("", "", "")
        prob = None
        for item in group.get("ContentSequence", []):
            name = item.ConceptNameCodeSequence[0].CodeValue
            if item.ValueType == "UIDREF" and name == TRACKING_UID:
                uid = str(item.UID)
            elif item.ValueType == "TEXT" and name == "112039":
                tid = str(item.TextValue)
            elif item.ValueType == "CODE" and name == FINDING:
                c = item.ConceptCodeSequence[0]
                finding = Code(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)
            elif item.ValueType == "NUM" and name == codes.DCM.Probability.value:
                prob = float(item.MeasuredValueSequence[0].NumericValue)
        out.append(DraftGroup(uid, tid, finding, prob))
    return out


def build_signed_sr(
    draft: Dataset,
    *,
    report_en: str,
    report_zh: str,
    verifier_name: str,
    verifier_organization: str,
    verified_at: datetime,
    rejected_tracking_uids: Collection[str] = (),
    rejected_codes: Collection[tuple[str, str]] = (),
    impression: str | None = None,
    revision: int = 0,
) -> Dataset:
    """A new VERIFIED / FINAL / COMPLETE SR that names ``draft`` as its predecessor.

    ``draft``: the AI draft SR (or a previous signed SR, for an amendment) as read from its file.
    ``report_en`` / ``report_zh``: the radiologist's report text, written as TEXT Impression (121073) per language.
    ``impression``: optional conclusion, written as TEXT Comment (121106) tagged zh-CN if it has CJK characters.
    ``rejected_tracking_uids`` / ``rejected_codes`` ((code value, scheme) pairs): measurement groups left out.
    ``verified_at``: the signature time; it pins every timestamp, so the same inputs give the same bytes.
    ``revision``: raise it to re-sign with otherwise identical inputs as a distinct instance.
    """
    if not _is_sr(draft):
        raise EncodeError("the draft is not a Comprehensive 3D SR")
    when = verified_at if verified_at.tzinfo is not None else verified_at.replace(tzinfo=UTC)
    if not verifier_name.strip() or not verifier_organization.strip():
        raise EncodeError("a verified SR needs the verifier's name and organisation")

    root = _root_content(draft)
    _drop_groups(root, set(rejected_tracking_uids), set(rejected_codes))
    _add_person_observer(root, verifier_name, verifier_organization)
    _replace_texts(root, report_en, report_zh, impression)

    digest = hashlib.sha256(
        "\x1f".join(
            [
                draft.SOPInstanceUID,
                report_en,
                report_zh,
                impression or "",
                verifier_name,
                verifier_organization,
                when.isoformat(),
                *sorted(rejected_tracking_uids),
                *sorted(f"{v}^{s}" for v, s in rejected_codes),
            ]
        ).encode("utf-8")
    ).hexdigest()
    signed = hd.sr.Comprehensive3DSR(
        evidence=_evidence_of(draft),
        content=root,
        series_instance_uid=derived_uid(draft.StudyInstanceUID, draft.SeriesInstanceUID, "sr_signed-series"),
        series_number=SERIES_NUMBER["sr_signed"],
        sop_instance_uid=derived_uid(draft.SOPInstanceUID, "sr_signed", digest, f"r{revision}"),
        instance_number=revision + 1,
        manufacturer=str(draft.get("Manufacturer", "")) or None,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=verifier_name,
        verifying_organization=verifier_organization,
        previous_versions=[draft],
        series_description=FINAL_SERIES_DESCRIPTION,
        specific_character_set=CHARSET,
    )
    if "ContributingEquipmentSequence" in draft:
        signed.ContributingEquipmentSequence = copy.deepcopy(draft.ContributingEquipmentSequence)
    copy_study_attributes(signed, draft)
    pin_timestamps(signed, when)
    for item in signed.VerifyingObserverSequence:
        item.VerificationDateTime = DT(when.astimezone(UTC).replace(tzinfo=None, microsecond=0))
    return signed


def _is_sr(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.88.34" and "ContentSequence" in ds


def _root_content(draft: Dataset) -> Dataset:
    """A copy of the document's root content item (the Comprehensive3DSR constructor takes it as content)."""
    root = Dataset()
    for kw in ("ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence", "ContentSequence"):
        if kw in draft:
            root[kw] = copy.deepcopy(draft[kw])
    root.ValueType = "CONTAINER"
    return root


def _measurement_groups(ds: Dataset) -> list[Dataset]:
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS:
            return [g for g in item.get("ContentSequence", []) if g.ValueType == "CONTAINER"]
    return []


def _drop_groups(root: Dataset, uids: set[str], finding_codes: set[tuple[str, str]]) -> None:
    """Removes the rejected findings' measurement groups (and with them their references)."""
    rejected = {
        g.tracking_uid
        for g in draft_groups(root)
        if g.tracking_uid in uids or (g.finding.value, g.finding.scheme) in finding_codes
    }
    for item in root.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS:
            kept = [g for g in item.get("ContentSequence", []) if _group_uid(g) not in rejected]
            item.ContentSequence = DicomSequence(kept)


def _group_uid(group: Dataset) -> str | None:
    for item in group.get("ContentSequence", []):
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID:
            return str(item.UID)
    return None


def _add_person_observer(root: Dataset, name: str, organization: str) -> None:
    """TID 1002: Person observer items go before the Device observer items, which stay."""
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=name, organization_name=organization
        ),
    )
    items = list(root.ContentSequence)
    first_obs = next(
        (i for i, it in enumerate(items) if it.RelationshipType == "HAS OBS CONTEXT"),
        len(items),
    )
    root.ContentSequence = DicomSequence([*items[:first_obs], *person, *items[first_obs:]])


def _replace_texts(root: Dataset, report_en: str, report_zh: str, impression: str | None) -> None:
    items = [
        it
        for it in root.ContentSequence
        if not (
            it.ValueType == "CONTAINER" and it.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
        )
    ]
    container = impression_container({"en": report_en, "zh": report_zh})
    if impression and impression.strip():
        comment = hd.sr.TextContentItem(
            name=hd.sr.CodedConcept(*COMMENT),
            value=impression.strip(),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        comment.ContentSequence = DicomSequence([language_item("zh" if _has_cjk(impression) else "en")])
        if container is None:
            container = hd.sr.ContainerContentItem(
                name=hd.sr.CodedConcept(*QUALITATIVE_EVALUATIONS),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            container.ContentSequence = DicomSequence()
        container.ContentSequence.append(comment)
    root.ContentSequence = DicomSequence([*items, container] if container is not None else items)


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)


def _evidence_of(draft: Dataset) -> list[Dataset]:
    """Minimal datasets for every instance the draft lists as evidence, with the draft's patient and study."""
    out = []
    for study in draft.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            for ref in series.ReferencedSOPSequence:
                ds = Dataset()
                for kw in (
                    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription",
                ):  # fmt: skip
                    if kw in draft:
                        ds[kw] = copy.deepcopy(draft[kw])
                ds.StudyInstanceUID = study.StudyInstanceUID
                ds.SeriesInstanceUID = series.SeriesInstanceUID
                ds.SOPInstanceUID = ref.ReferencedSOPInstanceUID
                ds.SOPClassUID = ref.ReferencedSOPClassUID
                out.append(ds)
    if not out:
        raise EncodeError("the draft lists no evidence")
    return out
