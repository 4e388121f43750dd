"""BINARY Segmentation (PS3.3 A.51), one per source series, one segment per finding class present in it.

dicom-outputs.md item 3: BINARY only (OHIF reads neither FRACTIONAL nor LABELMAP), one SEG per source series
(OHIF reads only the first referenced series). Empty masks give no segment, a series without a mask no SEG.
Each segment carries a tracking UID that the SR's TID 1411 group repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_agent.dicom.codes import Code
from dicom_agent.encode.equipment import CHARSET, contributing_equipment, device_serial, seg_algorithm_id
from dicom_agent.encode.identity import SERIES_NUMBER, ResultIdentity, copy_study_attributes, pin_timestamps
from dicom_agent.errors import EncodeError
from dicom_agent.inference.types import Finding, ModelIdentity

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class SegmentInfo:
    """What the SR needs to point at one segment (TID 1411 Referenced Segment + Tracking UID)."""

    label: str
    code: Code
    name_en: str
    segment_number: int
    tracking_uid: str
    tracking_id: str
    series_instance_uid: str
    finding_site: Code | None  # only when every finding in the segment has the same site
    laterality: str | None  # likewise
    probability: float
    volume_mm3: float | None
    findings: list[Finding] = field(default_factory=list)


@dataclass
class EncodedSeg:
    dataset: hd.seg.Segmentation
    source_series_uid: str
    segments: list[SegmentInfo]


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def sort_series(images: Sequence[Dataset]) -> list[Dataset]:
    """Source images in spatial order (along the slice normal), else by instance number."""

    def key(ds: Dataset) -> tuple[float, int]:
        pos, ori = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if pos is not None and ori is not None:
            normal = np.cross(np.array(ori[:3], float), np.array(ori[3:], float))
            return float(np.dot(normal, np.array(pos, float))), int(ds.get("InstanceNumber") or 0)
        return 0.0, int(ds.get("InstanceNumber") or 0)

    return sorted(images, key=key)


def voxel_volume_mm3(images: Sequence[Dataset]) -> float | None:
    """Volume of one voxel of a cross-sectional series; None for projection images (no slice spacing)."""
    first = images[0]
    spacing = first.get("PixelSpacing")
    if spacing is None or "ImagePositionPatient" not in first:
        return None
    if len(images) > 1 and "ImagePositionPatient" in images[1]:
        step = float(
            np.linalg.norm(
                np.array(images[1].ImagePositionPatient, float) - np.array(first.ImagePositionPatient, float)
            )
        )
    else:
        step = float(first.get("SliceThickness") or 0)
    return float(spacing[0]) * float(spacing[1]) * step if step > 0 else None


def build_segs(
    present: Sequence[Finding],
    sources: Sequence[Dataset],
    ident: ResultIdentity,
    model: ModelIdentity,
    when: datetime,
    manufacturer: str,
) -> list[EncodedSeg]:
    """One SEG per source series that has a non-empty mask among the present findings."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    out: list[EncodedSeg] = []
    for series_uid in sorted(by_series):
        masked = [f for f in present if f.mask is not None and f.mask.series_instance_uid == series_uid]
        if any(ref.frame_number for f in masked if f.mask is not None for ref in f.mask.images):
            # one SEG frame per single-frame source image is all this encoder does; a wrong frame mapping
            # would be worse than no SEG (the SR still carries the boxes)
            log.warning("masks on multi-frame source images are not encoded as SEG (series skipped)")
            continue
        if not masked:
            continue
        seg = _build_one(series_uid, sort_series(by_series[series_uid]), masked, ident, model, when, manufacturer)
        if seg is not None:
            out.append(seg)
    return out


def _build_one(
    series_uid: str,
    images: list[Dataset],
    findings: list[Finding],
    ident: ResultIdentity,
    model: ModelIdentity,
    when: datetime,
    manufacturer: str,
) -> EncodedSeg | None:
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(images)}
    rows, cols = int(images[0].Rows), int(images[0].Columns)
    per_label: dict[str, np.ndarray] = {}
    members: dict[str, list[Finding]] = {}
    for finding in findings:
        assert finding.mask is not None
        volume = per_label.setdefault(finding.label, np.zeros((len(images), rows, cols), bool))
        for plane, ref in zip(finding.mask.pixels, finding.mask.images, strict=True):
            if ref.sop_instance_uid not in index:
                raise EncodeError("a mask refers to an image that is not among the sources")
            if plane.shape != (rows, cols):
                raise EncodeError("a mask plane does not match its source image size")
            volume[index[ref.sop_instance_uid]] |= plane
        members.setdefault(finding.label, []).append(finding)

    voxel = voxel_volume_mm3(images)
    segments: list[SegmentInfo] = []
    planes: list[np.ndarray] = []
    for label in sorted(per_label):
        if not per_label[label].any():
            continue  # an empty mask gives no segment
        first = members[label][0]
        number = len(segments) + 1
        segments.append(
            SegmentInfo(
                label=label,
                code=first.code,
                name_en=first.name_en,
                segment_number=number,
                tracking_uid=ident.uid("segment", series_uid, label),
                tracking_id=f"AI {first.name_en} segment"[:64],
                series_instance_uid=series_uid,
                finding_site=_common([f.finding_site for f in members[label]]),
                laterality=_common([f.laterality for f in members[label]]),
                probability=max(f.probability for f in members[label]),
                volume_mm3=float(per_label[label].sum()) * voxel if voxel is not None else None,
                findings=members[label],
            )
        )
        planes.append(per_label[label])
    if not segments:
        return None

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.segment_number,
            segment_label=s.name_en[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=coded(s.code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=seg_algorithm_id(model),
            tracking_uid=s.tracking_uid,
            tracking_id=s.tracking_id,
            anatomic_regions=[coded(s.finding_site)] if s.finding_site is not None else None,
        )
        for s in segments
    ]
    pixel_array = np.stack(planes, axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=ident.uid("seg-series", series_uid),
        series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=ident.uid("seg", series_uid),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=device_serial(model),
        content_label="AI_FINDINGS",
        content_description="AI findings (unverified)",
        series_description="AI Segmentation (unverified)",
        contributing_equipment=[contributing_equipment(model, when)],
        specific_character_set=CHARSET,
    )
    if "PatientOrientation" in images[0] and "FrameOfReferenceUID" not in images[0]:
        seg.PatientOrientation = images[0].PatientOrientation  # projection X-ray: dciodvfy requires it
    copy_study_attributes(seg, images[0])
    pin_timestamps(seg, when, dimension_uid=ident.uid("seg-dimension", series_uid))
    return EncodedSeg(dataset=seg, source_series_uid=series_uid, segments=segments)


def _common(values: list[T]) -> T | None:
    """The value all findings of a segment share, else None (a merged segment has no single site)."""
    return values[0] if values and all(v == values[0] for v in values) else None
