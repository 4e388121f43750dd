"""Server-side rendering of stored images to PNG: window/level presets, SUV for PET, mask overlays.

Pixel values go through the Modality LUT (Rescale Slope/Intercept, PS3.3 C.11.1) before windowing (linear VOI
LUT function, PS3.3 C.11.2.1.2). PET is shown as body-weight SUV (decay-corrected injected dose, PS3.3 C.8.9.1).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image

log = logging.getLogger(__name__)
MAX_SIDE = 1024

#: (center, width) in Hounsfield units for CT.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}
SUV_RANGE = (0.0, 5.0)


def presets_for(modality: str) -> list[str]:
    if modality == "CT":
        return ["mediastinum", "lung", "bone"]
    if modality == "PT":
        return ["suv", "default"]
    return ["default"]


class RenderError(ValueError):
    """The stored file cannot be shown (no pixel data, unknown layout)."""


@dataclass(frozen=True)
class Frame:
    values: NDArray[np.float32]  # modality values (HU, SUV or stored units)
    modality: str
    window: tuple[float, float] | None  # from the file (center, width)
    invert: bool  # MONOCHROME1 or PET display convention


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _time_of_day_s(value: str | None) -> float | None:
    if not value:
        return None
    text = value.split(".")[0].ljust(6, "0")[:6]
    try:
        t = datetime.strptime(text, "%H%M%S")
    except ValueError:
        return None
    return t.hour * 3600 + t.minute * 60 + t.second + (float("0." + value.split(".")[1]) if "." in value else 0.0)


def suv_factor(ds: pydicom.Dataset) -> float | None:
    """Body-weight SUV factor (g/mL per Bq/mL) for Units BQML with decay correction START; None if not derivable."""
    if str(ds.get("Units", "")).upper() != "BQML":
        return None
    weight_kg = _first(ds.get("PatientWeight"))
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not weight_kg or not seq:
        return None
    info = seq[0]
    dose = _first(info.get("RadionuclideTotalDose"))
    half_life = _first(info.get("RadionuclideHalfLife"))
    start = _time_of_day_s(info.get("RadiopharmaceuticalStartTime"))
    scan = _time_of_day_s(ds.get("SeriesTime") or ds.get("AcquisitionTime"))
    if not dose or not half_life:
        return None
    decayed = dose
    if start is not None and scan is not None and str(ds.get("DecayCorrection", "START")).upper() == "START":
        elapsed = (scan - start) % 86400
        decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight_kg * 1000.0 / decayed


def load_frame(path: Path, frame: int = 1) -> Frame:
    """Reads one frame (1-based) of a stored image in modality units."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or unsupported pixel data
        raise RenderError(f"cannot decode pixel data: {type(exc).__name__}") from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 3 and n_frames > 1:
        if not 1 <= frame <= n_frames:
            raise RenderError("frame out of range")
        pixels = pixels[frame - 1]
    if pixels.ndim != 2:
        raise RenderError("only monochrome images are rendered")
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    modality = str(ds.get("Modality", ""))
    window = None
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width:
        window = (center, width)
    invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if modality == "PT":
        factor = suv_factor(ds)
        if factor is not None:
            values = values * np.float32(factor)
            window = None
            modality = "PT_SUV"
    return Frame(values=values, modality=modality, window=window, invert=invert)


def window_for(frame: Frame, preset: str) -> tuple[float, float]:
    """(low, high) display range for a preset; ``default`` uses the file's window, else the 0.5–99.5 percentiles."""
    if frame.modality == "CT" and preset in CT_PRESETS:
        center, width = CT_PRESETS[preset]
        return center - width / 2, center + width / 2
    if frame.modality == "PT_SUV" and preset == "suv":
        return SUV_RANGE
    if frame.window is not None:
        center, width = frame.window
        return center - width / 2, center + width / 2
    lo, hi = np.percentile(frame.values, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def to_png(frame: Frame, preset: str) -> bytes:
    lo, hi = window_for(frame, preset)
    scaled = np.clip((frame.values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    invert = frame.invert or (frame.modality == "PT_SUV" and preset == "suv")
    if invert:
        scaled = 1.0 - scaled
    image = Image.fromarray((scaled * 255.0 + 0.5).astype(np.uint8), mode="L")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


@lru_cache(maxsize=256)
def _render_cached(path: str, mtime_ns: int, frame: int, preset: str) -> bytes:
    return to_png(load_frame(Path(path), frame), preset)


def render_png(path: Path, frame: int, preset: str) -> bytes:
    """PNG bytes of one frame; cached by file identity (stored instances are immutable)."""
    return _render_cached(str(path), path.stat().st_mtime_ns, frame, preset)


OVERLAY_COLORS: list[tuple[int, int, int]] = [
    (255, 64, 64),
    (64, 160, 255),
    (255, 200, 0),
    (64, 220, 120),
    (220, 90, 255),
    (255, 140, 40),
]


def mask_png(mask: NDArray[np.bool_], color_index: int) -> bytes:
    """A transparent PNG with the mask filled in one colour at 45 % opacity, same grid as the source image."""
    r, g, b = OVERLAY_COLORS[color_index % len(OVERLAY_COLORS)]
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (r, g, b, 115)
    image = Image.fromarray(rgba, mode="RGBA")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
