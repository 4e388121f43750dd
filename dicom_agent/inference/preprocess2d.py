"""Radiographs (CR, DX) from DICOM to the model's square input, keeping the exact way back (pydicom).

The pixel pipeline follows the DICOM grayscale chain (PS3.4 N.2): stored values → Modality LUT (rescale or
LUT, PS3.3 C.11.1) → VOI LUT (window or LUT, PS3.3 C.11.2, LINEAR / LINEAR_EXACT / SIGMOID) → MONOCHROME1
inversion so that bright means dense. Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg,
GDCM). Patient Orientation (0020,0020) mirrors the image into the canonical display (image left = patient right,
head up); the :class:`~dicom_agent.inference.grid.Letterbox` records resize, pad and mirror, so boxes and masks
found on the model grid map back exactly onto the source pixel grid and frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.grid import Letterbox
from dicom_agent.inference.types import ImageRef

log = logging.getLogger(__name__)


@dataclass
class Radiograph:
    """One model input (one frame) and everything needed to map results back to its source."""

    pixels: np.ndarray  # float32 (size, size) in [0, 1], canonical orientation
    ref: ImageRef
    grid: Letterbox
    spacing_mm: tuple[float, float] | None  # (row, column) spacing of the source grid
    spacing_source: str  # which attribute gave the spacing (PS3.3 10.7.1.3 says which one to trust)
    view_position: str | None = None
    flags: list[str] = field(default_factory=list)
    source_values: np.ndarray | None = None  # [0, 1] display values on the stored pixel grid: sizes are measured here


def load_radiographs(path: Path, size: int, study_uid: str | None = None, keep_aspect: bool = True) -> list[Radiograph]:
    """All frames of one stored radiograph, each resized into a ``size`` × ``size`` model input."""
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise PermanentInferenceError(f"cannot decode pixel data of {path.name}: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:  # colour secondary capture of a radiograph: use luminance
        stored = _luminance(stored)
    stack = stored.reshape((frames, int(ds.Rows), int(ds.Columns)))
    flip_x, flip_y = _mirrors(ds)
    spacing, spacing_source = _spacing(ds)
    out = []
    for index, frame in enumerate(stack):
        values, flags = display_values(ds, frame, index)
        grid = Letterbox.fit(frame.shape[0], frame.shape[1], size, flip_x, flip_y, keep_aspect)
        ref = ImageRef(
            study_instance_uid=study_uid or str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            frame_number=index + 1 if frames > 1 else None,
        )
        out.append(
            Radiograph(
                pixels=resize_into(grid.canonical(values), grid),
                ref=ref,
                grid=grid,
                spacing_mm=spacing,
                spacing_source=spacing_source,
                view_position=str(getattr(ds, "ViewPosition", "") or "") or None,
                flags=flags,
                source_values=values,
            )
        )
    return out


def display_values(ds: Dataset, stored: np.ndarray, frame_index: int = 0) -> tuple[np.ndarray, list[str]]:
    """Stored values → [0, 1] display values (1 = bright = dense), with flags saying which defaults were used."""
    flags: list[str] = []
    slope, intercept = _frame_rescale(ds, frame_index)
    if slope is not None:
        modality = stored.astype(np.float64) * slope + (intercept or 0.0)
    else:
        modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    center, width, function = _frame_window(ds, frame_index)
    if center is not None and width is not None and width > 0:
        values = window(modality, center, width, function)
    elif "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        out = np.asarray(apply_voi(modality, ds, index=0), dtype=np.float64)
        bits = int(lut.LUTDescriptor[2])
        values = out / float(2**bits - 1)
    else:
        lo, hi = np.percentile(modality, [0.5, 99.5])
        values = (modality - lo) / max(hi - lo, 1e-6)
        flags.append("voi_auto_window")
    values = np.clip(values, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        values = 1.0 - values  # PS3.3 C.7.6.3.1.2: minimum value is displayed white
    return values.astype(np.float32), flags


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing to [0, 1] (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.1 LINEAR_EXACT, C.11.2.1.3.2 SIGMOID)."""
    function = function.upper() or "LINEAR"
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return (values - (center - width / 2.0)) / width
    if width <= 1:
        return (values >= center - 0.5).astype(np.float64)
    return ((values - (center - 0.5)) / (width - 1.0)) + 0.5


def resize_into(values: np.ndarray, grid: Letterbox) -> np.ndarray:
    """Area-aware bilinear resize (PIL, float) into the padded square canvas described by ``grid``."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    resized = np.asarray(image.resize((grid.inner_cols, grid.inner_rows), Image.Resampling.BILINEAR))
    canvas = np.zeros((grid.size, grid.size), dtype=np.float32)
    canvas[grid.pad_top : grid.pad_top + grid.inner_rows, grid.pad_left : grid.pad_left + grid.inner_cols] = resized
    return canvas


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _mirrors(ds: Dataset) -> tuple[bool, bool]:
    """Patient Orientation (0020,0020): row direction R means columns run toward patient right; H means rows run up.

    Canonical display has image left = patient right (row direction L) and the head up (column direction F).
    """
    orientation = [str(v).upper() for v in (getattr(ds, "PatientOrientation", None) or [])]
    if len(orientation) != 2:
        return False, False
    row_dir, col_dir = orientation
    return row_dir.startswith("R"), col_dir.startswith("H")


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """Pixel Spacing if present (calibrated at the patient), else Imager Pixel Spacing (at the detector)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, keyword, None)
        if value is not None and len(value) == 2:
            return (float(value[0]), float(value[1])), keyword
    return None, "none"


def _functional_group(ds: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """A functional-group item for a frame of an enhanced multi-frame image (per-frame wins over shared)."""
    for holder in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = getattr(ds, holder, None)
        if not groups:
            continue
        group = groups[frame_index] if holder.startswith("PerFrame") and frame_index < len(groups) else groups[0]
        items = getattr(group, sequence, None)
        if items:
            return items[0]
    return None


def _frame_rescale(ds: Dataset, frame_index: int) -> tuple[float | None, float | None]:
    item = _functional_group(ds, frame_index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        return float(item.RescaleSlope), float(getattr(item, "RescaleIntercept", 0.0))
    return None, None


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or (hasattr(value, "__getitem__") and not isinstance(value, str)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _frame_window(ds: Dataset, frame_index: int) -> tuple[float | None, float | None, str]:
    item = _functional_group(ds, frame_index, "FrameVOILUTSequence") or ds
    center = _first(getattr(item, "WindowCenter", None))
    width = _first(getattr(item, "WindowWidth", None))
    function = str(getattr(item, "VOILUTFunction", "LINEAR") or "LINEAR")
    return center, width, function
