"""StudyFindings from a synthetic sample's ``ground_truth.json`` (``dicom-agent samples make``), for demos and tests.

This is NOT a model: every finding is the phantom's known truth with probability 100 %, and the algorithm is
named "ground-truth" so that nobody mistakes the output for a model result. It lets the encoders and the
export path run end to end on the committed samples without the model.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Box, Finding, ImageRef, Mask, ModelIdentity, StudyFindings


def load_sample(folder: Path) -> tuple[StudyFindings, list[Dataset]]:
    """The sample's source datasets and its ground truth as findings."""
    truth_path = folder / "ground_truth.json"
    truth: dict[str, Any] = json.loads(truth_path.read_text(encoding="utf-8"))
    sources: list[Dataset] = [dcmread(folder / name) for name in truth["files"]]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    mask = None
    if truth.get("mask_file"):
        with gzip.open(folder / truth["mask_file"]) as fh:
            mask = np.load(fh)
    model = ModelIdentity(
        name="ground-truth",
        version="phantom",
        manufacturer="dicom_agent samples",
        bundle_sha256=hashlib.sha256(truth_path.read_bytes()).hexdigest(),
        description="phantom ground truth, not a model",
    )
    findings = [_finding(lesion, by_uid, mask) for lesion in truth["lesions"]]
    return (
        StudyFindings(
            study_instance_uid=truth["study_instance_uid"],
            model=model,
            findings=findings,
            impression=dict(truth.get("report") or {}),
            series_uids=[truth["series_instance_uid"]],
        ),
        sources,
    )


def _ref(ds: Dataset) -> ImageRef:
    return ImageRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))


def _finding(lesion: dict[str, Any], by_uid: dict[str, Dataset], mask: np.ndarray | None) -> Finding:
    slices = lesion.get("slices") or [
        {"index": None, "sop_instance_uid": lesion["sop_instance_uid"], "box": lesion.get("box")}
    ]
    boxes = [
        Box(_ref(by_uid[s["sop_instance_uid"]]), *map(float, s["box"]))
        for s in slices
        if s.get("box") is not None and s["sop_instance_uid"] in by_uid
    ]
    lesion_mask = None
    if mask is not None:
        refs, planes = [], []
        for s in slices:
            plane = mask if mask.ndim == 2 else mask[s["index"]]
            if s["sop_instance_uid"] in by_uid:
                refs.append(_ref(by_uid[s["sop_instance_uid"]]))
                planes.append(plane == lesion["index"])
        if refs and any(p.any() for p in planes):
            lesion_mask = Mask(refs[0].series_instance_uid, refs, np.stack(planes))
    return Finding(
        label=lesion["label"],
        code=Code(*lesion["code"]),
        name_en=lesion["name_en"],
        name_zh=lesion["name_zh"],
        probability=1.0,
        present=True,
        finding_site=Code(*lesion["location_code"]) if lesion.get("location_code") else None,
        location=lesion.get("location"),
        laterality=lesion.get("laterality"),
        size_mm=lesion.get("size_mm"),
        suv_max=(lesion.get("attrs") or {}).get("suv_max"),
        boxes=boxes,
        mask=lesion_mask,
    )
