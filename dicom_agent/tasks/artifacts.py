"""The hand-off between ``infer_study`` and ``encode_results``: StudyFindings saved as JSON + NPZ in the storage root.

Tasks take ids only, so the model's output (boxes, masks as arrays, text) travels through a file written
atomically beside the study's data, named by a hash of (study UID, job id). JSON and NPZ, never pickle:
a file on disk is not code.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Box, Finding, ImageRef, Mask, ModelIdentity, StudyFindings
from dicom_agent.store.atomic import atomic_write_bytes, hashed_relpath, resolve_inside


def artifact_relpath(study_uid: str, job_id: int) -> Path:
    return hashed_relpath(study_uid, f"job-{job_id}", prefix="findings", suffix="")


def _ref(r: ImageRef) -> dict[str, Any]:
    return {f.name: getattr(r, f.name) for f in fields(ImageRef)}


def _code(c: Code | None) -> list[str] | None:
    return list(c) if c is not None else None


def findings_to_json(sf: StudyFindings) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A JSON-safe dict and the mask arrays it refers to by name."""
    arrays: dict[str, np.ndarray] = {}
    out_findings = []
    for i, f in enumerate(sf.findings):
        mask = None
        if f.mask is not None:
            key = f"mask_{i}"
            arrays[key] = np.packbits(f.mask.pixels, axis=-1)
            mask = {
                "series_instance_uid": f.mask.series_instance_uid,
                "images": [_ref(r) for r in f.mask.images],
                "array": key,
                "cols": int(f.mask.pixels.shape[-1]),
            }
        d = {
            fl.name: getattr(f, fl.name)
            for fl in fields(Finding)
            if fl.name not in {"code", "finding_site", "boxes", "mask"}
        }
        d |= {
            "code": _code(f.code),
            "finding_site": _code(f.finding_site),
            "boxes": [{"image": _ref(b.image), "xy": [b.x0, b.y0, b.x1, b.y1], "score": b.score} for b in f.boxes],
            "mask": mask,
        }
        out_findings.append(d)
    doc = {
        "study_instance_uid": sf.study_instance_uid,
        "model": {fl.name: getattr(sf.model, fl.name) for fl in fields(ModelIdentity)},
        "findings": out_findings,
        "impression": sf.impression,
        "narrative": sf.narrative,
        "key_images": [_ref(r) for r in sf.key_images],
        "series_uids": sf.series_uids,
        "flags": sf.flags,
        "timings": sf.timings,
        "extra": sf.extra,
    }
    return doc, arrays


def _box(b: dict[str, Any]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in b["xy"])
    return Box(ImageRef(**b["image"]), x0, y0, x1, y1, score=float(b["score"]))


def findings_from_json(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> StudyFindings:
    findings = []
    for d in doc["findings"]:
        mask = None
        if d["mask"] is not None:
            m = d["mask"]
            pixels = np.unpackbits(arrays[m["array"]], axis=-1, count=m["cols"]).astype(bool)
            mask = Mask(m["series_instance_uid"], [ImageRef(**r) for r in m["images"]], pixels)
        boxes = [_box(b) for b in d["boxes"]]
        rest = {k: v for k, v in d.items() if k not in {"code", "finding_site", "boxes", "mask"}}
        findings.append(
            Finding(
                **rest,
                code=Code(*d["code"]),
                finding_site=Code(*d["finding_site"]) if d["finding_site"] else None,
                boxes=boxes,
                mask=mask,
            )
        )
    return StudyFindings(
        study_instance_uid=doc["study_instance_uid"],
        model=ModelIdentity(**doc["model"]),
        findings=findings,
        impression=doc["impression"],
        narrative=doc.get("narrative", {}),
        key_images=[ImageRef(**r) for r in doc.get("key_images", [])],
        series_uids=doc.get("series_uids", []),
        flags=doc.get("flags", []),
        timings=doc.get("timings", {}),
        extra=doc.get("extra", {}),
    )


def save_findings(root: Path, study_uid: str, job_id: int, sf: StudyFindings) -> Path:
    """Writes ``<hash>.json`` and ``<hash>.npz`` atomically; returns the JSON path's relative form."""
    rel = artifact_relpath(study_uid, job_id)
    doc, arrays = findings_to_json(sf)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(root, rel.with_suffix(".npz"), buf.getvalue())
    atomic_write_bytes(root, rel.with_suffix(".json"), json.dumps(doc, ensure_ascii=False, default=float).encode())
    return rel.with_suffix(".json")


def load_findings_doc(root: Path, study_uid: str, job_id: int) -> dict[str, Any]:
    """The JSON half only (flags, text, timings): enough for a page that does not need the masks."""
    rel = artifact_relpath(study_uid, job_id)
    doc: dict[str, Any] = json.loads(resolve_inside(root, rel.with_suffix(".json")).read_bytes())
    return doc


def load_findings(root: Path, study_uid: str, job_id: int) -> StudyFindings:
    rel = artifact_relpath(study_uid, job_id)
    doc = load_findings_doc(root, study_uid, job_id)
    with np.load(resolve_inside(root, rel.with_suffix(".npz")), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return findings_from_json(doc, arrays)
