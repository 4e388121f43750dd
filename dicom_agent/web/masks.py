"""Segmentation masks for the overlay, read from the SEG result object (PS3.3 A.51, C.8.20).

Each SEG frame names its segment (Segment Identification Sequence) and its source image (Derivation Image →
Source Image Sequence); a finding's segment is the one whose Tracking UID equals the finding's (TID 1411 links
SR and SEG the same way), else the one whose Segment Label is the finding's label or English name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray


@dataclass(frozen=True)
class SegIndex:
    segments: dict[int, tuple[str, str]]  # segment number -> (tracking uid, label)
    frames: dict[tuple[int, str, int], int]  # (segment, source SOP UID, source frame) -> SEG frame index
    rows: int
    columns: int


def _source_of(item: pydicom.Dataset) -> tuple[str, int] | None:
    for deriv in item.get("DerivationImageSequence", []):
        for src in deriv.get("SourceImageSequence", []):
            uid = str(src.get("ReferencedSOPInstanceUID", ""))
            if uid:
                return uid, int(src.get("ReferencedFrameNumber", 1) or 1)
    return None


@lru_cache(maxsize=32)
def _index(path: str, mtime_ns: int) -> SegIndex:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    segments = {
        int(s.SegmentNumber): (str(s.get("TrackingUID", "")), str(s.get("SegmentLabel", "")))
        for s in ds.get("SegmentSequence", [])
    }
    frames: dict[tuple[int, str, int], int] = {}
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    for i, item in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])):
        ident = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        source = _source_of(item) or _source_of(shared)
        if not ident or source is None:
            continue
        frames[(int(ident[0].ReferencedSegmentNumber), source[0], source[1])] = i
    return SegIndex(segments=segments, frames=frames, rows=int(ds.Rows), columns=int(ds.Columns))


@lru_cache(maxsize=8)
def _pixels(path: str, mtime_ns: int) -> NDArray[np.bool_]:
    arr = pydicom.dcmread(path).pixel_array
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    return arr.astype(bool)


def segment_for(path: Path, tracking_uid: str | None, *names: str) -> int | None:
    """The segment of a finding: same Tracking UID, else a Segment Label equal to one of its names."""
    index = _index(str(path), path.stat().st_mtime_ns)
    for number, (uid, _label) in index.segments.items():
        if tracking_uid and uid == tracking_uid:
            return number
    wanted = {n.lower() for n in names if n}
    for number, (_uid, seg_label) in index.segments.items():
        if seg_label.lower() in wanted:
            return number
    return None


def mask_for(path: Path, segment: int, sop_instance_uid: str, frame: int = 1) -> NDArray[np.bool_] | None:
    """The segment's mask on one source image/frame, or None when the SEG has nothing there."""
    mtime = path.stat().st_mtime_ns
    index = _index(str(path), mtime)
    i = index.frames.get((segment, sop_instance_uid, frame))
    if i is None:
        return None
    return _pixels(str(path), mtime)[i]


def sources_with_mask(path: Path, segment: int) -> set[str]:
    """SOP Instance UIDs that have a frame of this segment (the study view marks those slices)."""
    index = _index(str(path), path.stat().st_mtime_ns)
    return {uid for (seg, uid, _f) in index.frames if seg == segment}


def clip_to_boxes(mask: NDArray[np.bool_], boxes: list[dict[str, float]], margin: float = 0.25) -> NDArray[np.bool_]:
    """The mask inside the given boxes (each grown by ``margin`` of its size); empty when there is no box."""
    keep = np.zeros_like(mask)
    rows, cols = mask.shape
    for b in boxes:
        dx, dy = (b["x1"] - b["x0"]) * margin, (b["y1"] - b["y0"]) * margin
        x0, x1 = max(0, int(b["x0"] - dx)), min(cols, int(np.ceil(b["x1"] + dx)))
        y0, y1 = max(0, int(b["y0"] - dy)), min(rows, int(np.ceil(b["y1"] + dy)))
        keep[y0:y1, x0:x1] = True
    return mask & keep
