"""What the index needs from a received instance's header, checked and cut to the column sizes.

Pure: takes a pydicom ``Dataset`` read with ``stop_before_pixels``. Values come from a peer, so UIDs are
validated (PS3.5 9.1) and free text is truncated and stripped of NUL bytes (PostgreSQL refuses them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicom_agent.dicom.uids import is_valid_uid
from dicom_agent.errors import UnreadableDatasetError

_INT32 = 2**31 - 1


class MissingUidError(UnreadableDatasetError):
    """A required UID (SOP Instance, Study, Series, SOP Class) is absent (C-STORE 0xC001)."""


class InvalidUidError(UnreadableDatasetError):
    """A UID is not a valid UID: wrong characters, leading zeros, over 64 characters (C-STORE 0xC002)."""


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    image_type: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax_uid: str) -> InstanceHeader:
        """Raises MissingUidError / InvalidUidError for bad identifiers, never for bad optional text."""
        uids = {
            "sop_class_uid": _uid(ds, "SOPClassUID"),
            "sop_instance_uid": _uid(ds, "SOPInstanceUID"),
            "study_instance_uid": _uid(ds, "StudyInstanceUID"),
            "series_instance_uid": _uid(ds, "SeriesInstanceUID"),
        }
        return cls(
            **uids,
            transfer_syntax_uid=transfer_syntax_uid,
            modality=_text(ds, "Modality", 16),
            patient_id=_text(ds, "PatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_sex=_text(ds, "PatientSex", 16),
            accession_number=_text(ds, "AccessionNumber", 64),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            study_description=_text(ds, "StudyDescription", 64),
            referring_physician=_text(ds, "ReferringPhysicianName", 324),
            body_part_examined=_text(ds, "BodyPartExamined", 64),
            series_description=_text(ds, "SeriesDescription", 64),
            series_number=_int(ds, "SeriesNumber"),
            image_type=_text(ds, "ImageType", 128),
            instance_number=_int(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames"),
        )


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value of an optional element is treated as absent
        return None


def _uid(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    if value is None or str(value).strip("\x00 ") == "":
        raise MissingUidError(f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")
    if not is_valid_uid(text):
        raise InvalidUidError(f"{keyword} is not a valid UID ({len(text)} characters)")
    return text


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\x00", "").strip()
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _get(ds, keyword)
    try:
        number = int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
    if number is None or not -_INT32 <= number <= _INT32:
        return None
    return number
