"""Study facts for the routing engine, read from stored headers (one representative instance per series).

The engine itself is pure; this module does the reading: from the database and storage root for a received
study, or from files on disk for ``dicom-agent routes test PATH``. Headers are read with
``stop_before_pixels`` — pixel data is never needed to route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

# Modalities of objects that are not images (PS3.3 C.7.3.1.1.1): never inputs of a model. Our own SR, SEG and
# KOS coming back from the PACS are among them.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "REG", "FID", "DOC", "AU", "ECG", "PLAN"}
)


@dataclass(frozen=True)
class SeriesFacts:
    """What routing knows about one series: its header values and how many instances it holds."""

    series_instance_uid: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    image_type: tuple[str, ...] = ()
    instance_count: int = 0
    orientation: str | None = None  # axial | coronal | sagittal, from ImageOrientationPatient
    series_number: int | None = None
    tags: Mapping[int, str] = field(default_factory=dict)  # tag -> value as text, top-level elements

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def is_derived(self) -> bool:
        """ImageType value 1 DERIVED or value 2 SECONDARY (PS3.3 C.7.6.1.1.2)."""
        return (len(self.image_type) > 0 and self.image_type[0] == "DERIVED") or (
            len(self.image_type) > 1 and self.image_type[1] == "SECONDARY"
        )

    @property
    def is_image(self) -> bool:
        return self.modality not in NON_IMAGE_MODALITIES


@dataclass(frozen=True)
class StudyFacts:
    study_instance_uid: str
    study_description: str = ""
    calling_aes: frozenset[str] = frozenset()
    series: tuple[SeriesFacts, ...] = ()

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(s.modality for s in self.series if s.modality)


def _text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def header_tags(ds: Dataset) -> dict[int, str]:
    """Top-level, non-sequence, non-binary elements as text (the values ``tags:`` matchers test)."""
    out: dict[int, str] = {}
    for elem in ds:
        if elem.VR in {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"} or elem.value is None:
            continue
        out[int(elem.tag)] = _text(elem.value)
    return out


def orientation_of(ds: Dataset) -> str | None:
    """The plane of an image from its ImageOrientationPatient (PS3.3 C.7.6.2.1.1): the dominant normal axis."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r = [float(v) for v in iop[:3]]
    c = [float(v) for v in iop[3:]]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("sagittal", "coronal", "axial")[axis]


def series_facts(ds: Dataset, instance_count: int) -> SeriesFacts:
    number = ds.get("SeriesNumber")
    return SeriesFacts(
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")).upper(),
        body_part=str(ds.get("BodyPartExamined", "") or "").upper(),
        description=str(ds.get("SeriesDescription", "") or ""),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or [])),
        instance_count=instance_count,
        orientation=orientation_of(ds),
        series_number=int(number) if number not in (None, "") else None,
        tags=header_tags(ds),
    )


def read_header(path: Path) -> Dataset | None:
    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError):
        return None


def _walk(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path


def facts_from_files(paths: Iterable[Path], calling_ae: str | None = None) -> list[StudyFacts]:
    """Groups the DICOM files under ``paths`` into studies (for ``routes test``); unreadable files are skipped."""
    studies: dict[str, tuple[Dataset, dict[str, tuple[Dataset, int]]]] = {}
    for path in _walk(paths):
        ds = read_header(path)
        if ds is None or "StudyInstanceUID" not in ds:
            continue
        study_uid = str(ds.StudyInstanceUID)
        first, series = studies.setdefault(study_uid, (ds, {}))
        suid = str(ds.get("SeriesInstanceUID", ""))
        rep, count = series.get(suid, (ds, 0))
        series[suid] = (rep, count + 1)
    out = []
    for study_uid, (first, series) in studies.items():
        out.append(
            StudyFacts(
                study_instance_uid=study_uid,
                study_description=str(first.get("StudyDescription", "") or ""),
                calling_aes=frozenset({calling_ae} if calling_ae else set()),
                series=tuple(series_facts(rep, n) for rep, n in series.values()),
            )
        )
    return out


def facts_from_db(study_id: int, storage_root: Path, database_url: str | None = None) -> StudyFacts:
    """Facts of a received study: counts and calling AEs from the index, header values from one file per series."""
    from sqlalchemy import select

    from dicom_agent.db.orm import Instance, Series, Study
    from dicom_agent.db.session import session_scope
    from dicom_agent.store.atomic import resolve_inside

    with session_scope(database_url) as s:
        study = s.get(Study, study_id)
        if study is None:
            raise LookupError(f"study {study_id} not found")
        aes = {study.calling_ae} if study.calling_ae else set()
        aes |= {a for a in s.scalars(select(Instance.calling_ae).where(Instance.study_id == study_id).distinct()) if a}
        series_out: list[SeriesFacts] = []
        for row in s.scalars(select(Series).where(Series.study_id == study_id).order_by(Series.id)):
            count = row.instance_count or len(row.instances)
            rep = s.scalars(
                select(Instance).where(Instance.series_id == row.id).order_by(Instance.instance_number, Instance.id)
            ).first()
            ds = read_header(resolve_inside(storage_root, rep.path)) if rep is not None else None
            if ds is not None:
                series_out.append(series_facts(ds, count))
            else:  # the index alone: enough for modality/body part/description rules
                series_out.append(
                    SeriesFacts(
                        series_instance_uid=row.series_instance_uid,
                        modality=(row.modality or "").upper(),
                        body_part=(row.body_part_examined or "").upper(),
                        description=row.series_description or "",
                        image_type=tuple((row.image_type or "").upper().split("\\")) if row.image_type else (),
                        instance_count=count,
                        series_number=row.series_number,
                    )
                )
        return StudyFacts(
            study_instance_uid=study.study_instance_uid,
            study_description=study.study_description or "",
            calling_aes=frozenset(aes),
            series=tuple(series_out),
        )
