"""Rows and DICOM files for web tests: real pydicom images in the storage root, ORM rows pointing at them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Finding, Instance, Job, Series, Study, User
from dicom_agent.store.atomic import hashed_relpath
from dicom_agent.web.security import hash_password

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
PASSWORD = "correct horse battery"


def add_user(db: Session, username: str, role: str = "radiologist", **kw: Any) -> User:
    user = User(
        username=username,
        password_hash=hash_password(PASSWORD),
        role=role,
        full_name=kw.pop("full_name", username.title()),
        organization=kw.pop("organization", "Test Hospital"),
        **kw,
    )
    db.add(user)
    db.flush()
    return user


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Signs in through the form; returns the new session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/").text)


def add_study(
    db: Session,
    *,
    name: str = "Doe^Jane",
    patient_id: str = "P1",
    modality: str = "CR",
    state: str = "results_ready",
    priority: str = "routine",
    rank: int = 50,
    received: datetime | None = None,
    study_date: str = "20260101",
    description: str = "Chest",
    accession: str | None = None,
) -> Study:
    study = Study(
        study_instance_uid=generate_uid(),
        patient_id=patient_id,
        patient_name=name,
        modalities=modality,
        state=state,
        priority=priority,
        priority_rank=rank,
        first_received_at=received or datetime.now(UTC) - timedelta(minutes=30),
        study_date=study_date,
        study_description=description,
        accession_number=accession,
    )
    db.add(study)
    db.flush()
    return study


def add_job(db: Session, study: Study, state: str = "succeeded", revision: int = 0) -> Job:
    job = Job(study_id=study.id, model_name="tiny-unified", model_version="0.1", state=state, revision=revision)
    db.add(job)
    db.flush()
    return job


def add_finding(db: Session, job: Job, label: str = "nodule", **kw: Any) -> Finding:
    defaults: dict[str, Any] = {
        "code_value": "27925004",
        "coding_scheme": "SCT",
        "code_meaning": "Nodule",
        "name_en": label.replace("_", " ").title(),
        "name_zh": "结节",
        "probability": 0.8,
        "present": True,
        "critical": False,
        "text_en": f"{label} seen.",
        "text_zh": "可见结节。",
    }
    defaults.update(kw)
    finding = Finding(job_id=job.id, study_id=job.study_id, label=label, **defaults)
    db.add(finding)
    db.flush()
    return finding


def write_image(storage: Path, study: Study, series_uid: str, modality: str, index: int, pixels: np.ndarray) -> Any:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CT_IMAGE if modality == "CT" else CR_IMAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.InstanceNumber = index + 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if modality == "CT" else 0
    if modality == "CT":
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = 1
    ds.PixelData = pixels.astype(np.int16 if modality == "CT" else np.uint16).tobytes()
    rel = hashed_relpath(study.study_instance_uid, series_uid, ds.SOPInstanceUID, prefix="test")
    target = storage / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return ds, str(rel), target.stat().st_size


def add_series(db: Session, storage: Path, study: Study, modality: str = "CR", n: int = 1, size: int = 64) -> Series:
    """A series of ``n`` synthetic images: a bright disc on a gradient, so windowing changes the PNG."""
    series = Series(study_id=study.id, series_instance_uid=generate_uid(), modality=modality, series_number=1)
    db.add(series)
    db.flush()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
        pixels = (xx * 8 + disc * (400 + 50 * i)).astype(np.int32)
        if modality == "CT":
            pixels = pixels + 424  # stored + (-1024) = HU from -600 up
        ds, rel, nbytes = write_image(storage, study, series.series_instance_uid, modality, i, pixels)
        db.add(
            Instance(
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                instance_number=i + 1,
                rows=size,
                columns=size,
                path=rel,
                size_bytes=nbytes,
                sha256="0" * 64,
            )
        )
    db.flush()
    return series
