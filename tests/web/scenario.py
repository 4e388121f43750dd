"""Realistic studies for web tests: source images, findings, and the AI draft SR/SEG/KOS made by the real encoder.

Sources come from ``tests/results/sources.py`` (valid CT/DX/PET geometry) with fresh UIDs per study; the
draft objects are ``encode_study`` output written into the storage root with their result_object rows, as the
pipeline would leave them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Finding, Instance, Job, ResultObject, Series, Study
from dicom_agent.encode import EncodedObject, encode_study
from dicom_agent.encode.objects import dataset_bytes
from dicom_agent.inference.types import StudyFindings
from dicom_agent.store.atomic import atomic_write_bytes, hashed_relpath
from tests.results import findings as fx
from tests.results import sources


@dataclass
class Seeded:
    study: Study
    job: Job
    findings: dict[str, Finding]
    objects: dict[str, ResultObject]
    sources: list[Dataset]


def _fresh_uids(datasets: list[Dataset], patient: tuple[str, str]) -> None:
    study_uid = generate_uid()
    series_map: dict[str, str] = {}
    for ds in datasets:
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_map.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = patient


def _store(db: Session, storage: Path, study: Study, datasets: list[Dataset]) -> None:
    by_series: dict[str, Series] = {}
    for ds in datasets:
        series = by_series.get(ds.SeriesInstanceUID)
        if series is None:
            series = Series(
                study_id=study.id,
                series_instance_uid=ds.SeriesInstanceUID,
                modality=ds.Modality,
                series_number=int(ds.SeriesNumber),
                series_description=f"{ds.Modality} series",
            )
            db.add(series)
            db.flush()
            by_series[ds.SeriesInstanceUID] = series
        rel = hashed_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, prefix="instances")
        data = dataset_bytes(ds)
        atomic_write_bytes(storage, rel, data)
        db.add(
            Instance(
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                instance_number=int(ds.InstanceNumber),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                number_of_frames=None,
                path=str(rel),
                size_bytes=len(data),
                sha256="0" * 64,
            )
        )
    db.flush()


def _finding_rows(db: Session, job: Job, sf: StudyFindings) -> dict[str, Finding]:
    """The rows the pipeline writes (tasks/pipeline.py ``_finding_rows``): boxes as ``xy`` + ``frame``."""
    out = {}
    for f in sf.findings:
        row = Finding(
            job_id=job.id,
            study_id=job.study_id,
            label=f.label,
            code_value=f.code.value,
            coding_scheme=f.code.scheme,
            code_meaning=f.code.meaning,
            name_en=f.name_en,
            name_zh=f.name_zh,
            probability=f.probability,
            present=f.present,
            critical=f.critical,
            location=f.location_en or f.location,
            laterality=f.laterality,
            text_en=f.text_en,
            text_zh=f.text_zh,
            boxes=[
                {
                    "sop_instance_uid": b.image.sop_instance_uid,
                    "frame": b.image.frame_number,
                    "xy": [b.x0, b.y0, b.x1, b.y1],
                    "score": b.score,
                }
                for b in f.boxes
            ]
            or None,
            masks=[{"series_instance_uid": f.mask.series_instance_uid}] if f.mask is not None else None,
        )
        db.add(row)
        out[f.label] = row
    db.flush()
    return out


def _objects(db: Session, storage: Path, job: Job, objects: list[EncodedObject]) -> dict[str, ResultObject]:
    out = {}
    for obj in objects:
        data = obj.to_bytes()
        rel = hashed_relpath(obj.sop_instance_uid, prefix="results")
        atomic_write_bytes(storage, rel, data)
        row = ResultObject(
            job_id=job.id,
            study_id=job.study_id,
            kind=obj.kind,
            sop_class_uid=obj.sop_class_uid,
            sop_instance_uid=obj.sop_instance_uid,
            series_instance_uid=obj.series_instance_uid,
            path=str(rel),
            sha256=obj.sha256(),
            size_bytes=len(data),
        )
        db.add(row)
        out[obj.kind] = row
    db.flush()
    return out


def seed(
    db: Session,
    storage: Path,
    kind: str = "ct",
    patient: tuple[str, str] = ("Phantom^Ct", "PH-CT"),
    minutes_ago: int = 20,
    priority: str = "routine",
) -> Seeded:
    """One study with AI results: ``ct`` (nodule box + mask, emphysema), ``dx`` (critical pneumothorax), ``pet``."""
    if kind == "ct":
        datasets = sources.ct_series()
        _fresh_uids(datasets, patient)
        sf = fx.ct_findings(datasets)
    elif kind == "dx":
        datasets = [sources.dx_image()]
        _fresh_uids(datasets, patient)
        sf = fx.dx_findings(datasets[0])
    else:
        datasets = sources.pet_series()
        _fresh_uids(datasets, patient)
        for ds in datasets:
            ds.PatientWeight = 70  # body-weight SUV needs it
        sf = fx.pet_findings(datasets)
    first = datasets[0]
    study = Study(
        study_instance_uid=first.StudyInstanceUID,
        patient_id=patient[1],
        patient_name=patient[0],
        accession_number=f"ACC-{patient[1]}",
        study_date=str(first.StudyDate),
        study_description={"ct": "CT chest", "dx": "Chest PA", "pet": "PET/CT whole body"}[kind],
        modalities=str(first.Modality),
        state="results_ready",
        priority=priority,
        priority_rank=10 if priority == "stat" else 50,
        first_received_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        instance_count=len(datasets),
    )
    db.add(study)
    db.flush()
    _store(db, storage, study, datasets)
    job = Job(
        study_id=study.id,
        model_name=sf.model.name,
        model_version=sf.model.version,
        state="succeeded",
        series_uids=[str(first.SeriesInstanceUID)],
    )
    db.add(job)
    db.flush()
    rows = _finding_rows(db, job, sf)
    objects = _objects(db, storage, job, encode_study(sf, datasets))
    db.commit()
    return Seeded(study, job, rows, objects, datasets)
