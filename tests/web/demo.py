"""Phantom studies for the browser test and the screenshots: the phantoms' DICOM and ground truth, with the
ground truth standing in for a model's output (the model is not what the web app is tested on).

The findings go through the real encoder (``encode_study``) and the real outbox (``outbox.enqueue``) into the
storage root, exactly as the pipeline leaves a finished job; the worklist, viewer and signing then work on them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Finding, Instance, Job, ResultObject, Series, Study
from dicom_agent.dicom.codes import Code
from dicom_agent.encode import encode_study
from dicom_agent.export import outbox
from dicom_agent.inference.types import Box, ImageRef, Mask, ModelIdentity, StudyFindings
from dicom_agent.inference.types import Finding as AIFinding
from dicom_agent.store.atomic import atomic_write_bytes, hashed_relpath
from models.synthetic import make_case
from models.synthetic.dicom_writer import read_mask, write_case
from models.terminology import LABELS, LOCATIONS

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = ModelIdentity(
    name="phantom-ground-truth",
    version="demo",
    manufacturer="dicom_agent tests",
    bundle_sha256="0" * 64,
    description="ground truth of a synthetic phantom standing in for model output",
)


@dataclass
class DemoStudy:
    study: Study
    job: Job
    findings: list[Finding]
    draft: ResultObject


def phantom_dir(kind: str, seed: int, out: Path, want: str | None = None, min_findings: int = 1) -> Path:
    """A phantom written to ``out``; with ``want`` the first seed from ``seed`` whose case has that label
    (and at least ``min_findings`` findings)."""
    for s in range(seed, seed + 200):
        case = make_case(kind, s, size=512 if kind == "cxr" else None)
        labels = [lesion.label for lesion in case.lesions]
        if (want is None or want in labels) and len(labels) >= min_findings:
            write_case(case, out)
            return out
    raise LookupError(f"no {kind} phantom with {want}")


def _ref(ds: pydicom.Dataset) -> ImageRef:
    return ImageRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)


def _findings(truth: dict, datasets: list[pydicom.Dataset], mask: np.ndarray) -> list[AIFinding]:  # type: ignore[type-arg]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    depth = len(datasets)
    by_index = {depth - int(ds.InstanceNumber): ds for ds in datasets}  # slice 0 = instance N (writer's order)
    out = []
    for k, lesion in enumerate(truth["lesions"]):
        label = LABELS[lesion["label"]]
        loc = LOCATIONS.get(lesion.get("location") or "")
        boxes: list[Box] = []
        images: list[pydicom.Dataset] = []
        if truth["kind"] == "cxr":
            ds = by_uid[lesion["sop_instance_uid"]]
            if lesion.get("box"):
                boxes.append(Box(_ref(ds), *lesion["box"]))
            images, planes = [ds], [mask == lesion["index"]]
        else:
            planes = []
            for sl in lesion["slices"]:
                ds = by_index[int(sl["index"])]
                images.append(ds)
                planes.append(mask[int(sl["index"])] == lesion["index"])
                if sl.get("box"):
                    boxes.append(Box(_ref(ds), *sl["box"]))
        pixels = np.stack(planes).astype(bool)
        probability = round(0.96 - 0.09 * k, 2)
        place_en = loc.name_en if loc else ""
        place_zh = loc.name_zh if loc else ""
        out.append(
            AIFinding(
                label=label.key,
                code=Code(*label.code),
                name_en=label.name_en.capitalize(),
                name_zh=label.name_zh,
                probability=probability,
                present=True,
                critical=label.critical,
                finding_site=Code(*loc.code) if loc else None,
                location=lesion.get("location"),
                location_en=place_en,
                location_zh=place_zh,
                laterality=lesion.get("laterality"),
                size_mm=lesion.get("size_mm"),
                boxes=boxes,
                mask=Mask(str(datasets[0].SeriesInstanceUID), [_ref(d) for d in images], pixels)
                if pixels.any()
                else None,
                text_en=f"{label.name_en.capitalize()} in the {place_en}." if place_en else f"{label.name_en}.",
                text_zh=f"{place_zh}{label.name_zh}。",
            )
        )
    return out


def seed_phantom(
    db: Session,
    storage: Path,
    directory: Path,
    *,
    priority: str = "routine",
    minutes_ago: int = 30,
    description: str | None = None,
) -> DemoStudy:
    truth = json.loads((directory / "ground_truth.json").read_text(encoding="utf-8"))
    files = [directory / name for name in truth["files"]]
    datasets = [pydicom.dcmread(p) for p in files]
    first = datasets[0]
    patient = truth["meta"]["patient"]
    study = Study(
        study_instance_uid=str(first.StudyInstanceUID),
        patient_id=str(first.PatientID),
        patient_name=str(first.PatientName),
        patient_sex=patient.get("sex"),
        accession_number=str(first.get("AccessionNumber", "")) or None,
        study_date=str(first.StudyDate),
        study_description=description or str(first.get("StudyDescription", "")) or truth["kind"].upper(),
        modalities=str(first.Modality),
        state="results_ready",
        priority=priority,
        priority_rank={"stat": 10, "urgent": 30}.get(priority, 50),
        first_received_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        instance_count=len(datasets),
    )
    db.add(study)
    db.flush()
    series = Series(
        study_id=study.id,
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=str(first.Modality),
        series_number=int(first.get("SeriesNumber", 1) or 1),
        series_description=str(first.get("SeriesDescription", "")) or None,
        instance_count=len(datasets),
    )
    db.add(series)
    db.flush()
    for path, ds in zip(files, datasets, strict=True):
        rel = hashed_relpath(study.study_instance_uid, series.series_instance_uid, ds.SOPInstanceUID, prefix="i")
        data = path.read_bytes()
        atomic_write_bytes(storage, rel, data)
        db.add(
            Instance(
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                instance_number=int(ds.InstanceNumber),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                path=rel.as_posix(),
                size_bytes=len(data),
                sha256="0" * 64,
            )
        )
    job = Job(
        study_id=study.id,
        model_name=STAND_IN.name,
        model_version=STAND_IN.version,
        state="succeeded",
        series_uids=[series.series_instance_uid],
        finished_at=datetime.now(UTC),
    )
    db.add(job)
    db.flush()
    ai = _findings(truth, datasets, read_mask(directory / truth["mask_file"]))
    sf = StudyFindings(
        study_instance_uid=study.study_instance_uid,
        model=STAND_IN,
        findings=ai,
        impression=dict(truth["report"]),
        series_uids=[series.series_instance_uid],
    )
    objects = encode_study(sf, datasets)
    stored = outbox.enqueue(db, storage, objects, [], study_id=study.id, job_id=job.id)
    rows = []
    for f in ai:
        row = Finding(
            job_id=job.id,
            study_id=study.id,
            label=f.label,
            code_value=f.code.value,
            coding_scheme=f.code.scheme,
            code_meaning=f.code.meaning,
            name_en=f.name_en,
            name_zh=f.name_zh,
            probability=f.probability,
            present=True,
            critical=f.critical,
            location=f.location_en,
            laterality=f.laterality,
            size_mm=f.size_mm,
            text_en=f.text_en,
            text_zh=f.text_zh,
            boxes=[
                {"sop_instance_uid": b.image.sop_instance_uid, "frame": None, "xy": [b.x0, b.y0, b.x1, b.y1]}
                for b in f.boxes
            ]
            or None,
        )
        db.add(row)
        rows.append(row)
    db.commit()
    draft = next(
        r for r in (db.get(ResultObject, s.result_object_id) for s in stored) if r is not None and r.kind == "sr"
    )
    return DemoStudy(study, job, rows, draft)


def sample_dir(kind: str, tmp: Path) -> Path:
    """A private copy of the committed sample under ``samples/`` (the tests never write into the repository)."""
    target = tmp / f"sample-{kind}"
    if not target.exists():
        shutil.copytree(ROOT / "samples" / kind, target)
    return target
