"""Deterministic identity of every derived object: UIDs, series numbers and pinned timestamps.

PS3.5 9.1 / dicom-outputs.md item 9: UIDs are ``2.25.<uuid5>`` of (study UID, digest of the source series and
their SOP instances, model name + version + bundle hash, object role, revision). With the timestamps pinned as
well, encoding the same job twice yields byte-identical files; any change of content must come with a new
revision, hence new UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import Dataset
from pydicom.valuerep import DA, DT, TM

from dicom_agent.dicom.uids import derived_uid, digest_of_uids
from dicom_agent.inference.types import ModelIdentity

# Series numbers of derived objects: fixed per kind so that a retry never makes a new series (style.md 6).
SERIES_NUMBER = {"sr": 9001, "seg": 9002, "kos": 9003, "sc": 9004, "gsps": 9005, "sr_signed": 9010}


@dataclass(frozen=True)
class ResultIdentity:
    """Everything a derived UID depends on, computed once per (study, model run, revision)."""

    study_instance_uid: str
    sources_digest: str
    model_key: str
    revision: int

    @classmethod
    def of(cls, study_uid: str, sources: Sequence[Dataset], model: ModelIdentity, revision: int) -> ResultIdentity:
        series = sorted({str(ds.SeriesInstanceUID) for ds in sources})
        instances = digest_of_uids(str(ds.SOPInstanceUID) for ds in sources)
        return cls(
            study_instance_uid=study_uid,
            sources_digest=digest_of_uids([*series, instances]),
            model_key="\x1e".join((model.name, model.version, model.bundle_sha256)),
            revision=revision,
        )

    def uid(self, role: str, *parts: str) -> str:
        """The UID of one role (``sr``, ``seg-series``, ``segment`` + series + label, ...)."""
        return derived_uid(
            self.study_instance_uid, self.sources_digest, self.model_key, role, *parts, f"r{self.revision}"
        )


def pinned_time(when: datetime | None, sources: Sequence[Dataset]) -> datetime:
    """The content time of a run: the given one, else the study's date/time (deterministic, never 'now')."""
    if when is not None:
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    first = sources[0]
    date = str(getattr(first, "StudyDate", "") or "19700101")
    time = str(getattr(first, "StudyTime", "") or "000000").split(".")[0].ljust(6, "0")[:6]
    return datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


_TOP_LEVEL_PAIRS = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
    ("PresentationCreationDate", "PresentationCreationTime"),
)


def pin_timestamps(ds: Dataset, when: datetime, dimension_uid: str | None = None) -> None:
    """Replaces every 'now' highdicom wrote (creation, content, series, contribution times, SEG dimension UID)."""
    naive = when.astimezone(UTC).replace(tzinfo=None)
    for date_kw, time_kw in _TOP_LEVEL_PAIRS:
        if date_kw in ds:
            setattr(ds, date_kw, DA(naive.date()))
            setattr(ds, time_kw, TM(naive.time().replace(microsecond=0)))
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = DT(naive.replace(microsecond=0))
    if dimension_uid is not None:
        _replace_dimension_uid(ds, dimension_uid)


def _replace_dimension_uid(ds: Dataset, new_uid: str) -> None:
    """SEG: highdicom draws a random DimensionOrganizationUID; it appears in two sequences."""
    for item in ds.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = new_uid
    for item in ds.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = new_uid


def copy_study_attributes(target: Dataset, source: Dataset) -> None:
    """Patient, General Study and Patient Study attributes as in the source: dcentvfy checks that they agree
    across a study's objects (dicom-outputs.md item 10), and highdicom copies fewer for KOS/SEG than for SR."""
    copy_modules = getattr(target, "copy_patient_and_study_information", None)
    if copy_modules is not None:
        copy_modules(source)
    for kw in ("StudyDescription", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if kw in source:
            target[kw] = source[kw]
