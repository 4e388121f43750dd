"""Body-weight SUV for PET images from the DICOM PET attributes (PS3.3 C.8.9.1, C.8.9.2).

SUVbw = activity concentration [Bq/ml] × body weight [g] / injected dose decayed to the decay-correction
reference time [Bq] (tissue density 1 g/ml). The reference time is Decay Correction DateTime (0018,9701) when
present, else Series Date/Time, as QIBA's SUV profile and most vendors do. When the attributes needed are
absent or the Units are not BQML, the stored (rescaled) values are used unchanged and a flag says so: the
caller never gets a silently wrong SUV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SuvScale:
    """Multiply rescaled pixel values (Bq/ml) by ``factor`` to get SUVbw; ``flags`` name every fallback taken."""

    factor: float
    is_suv: bool
    decay_s: float | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)


def _datetime(date: object, time: object) -> datetime | None:
    if not date or not time:
        return None
    text = f"{date}{str(time).split('.')[0]:0<6}"
    try:
        parsed = datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    fraction = str(time).partition(".")[2]
    return parsed.replace(microsecond=int(fraction[:6].ljust(6, "0"))) if fraction.isdigit() else parsed


def _dt_value(value: object) -> datetime | None:
    """A DT value (YYYYMMDDHHMMSS.FFFFFF, optional offset ignored: both times share the scanner's zone)."""
    if not value:
        return None
    text = str(value).split("+")[0].split("-")[0] if len(str(value)) > 14 else str(value)
    return _datetime(text[:8], text[8:] or "000000")


def injection_time(ds: Dataset) -> datetime | None:
    """Radiopharmaceutical Start DateTime (0018,1078), else Start Time (0018,1072) on the series date."""
    info = _radiopharmaceutical(ds)
    if info is None:
        return None
    start = _dt_value(getattr(info, "RadiopharmaceuticalStartDateTime", None))
    if start is not None:
        return start
    date = getattr(ds, "SeriesDate", None) or getattr(ds, "StudyDate", None)
    return _datetime(date, getattr(info, "RadiopharmaceuticalStartTime", None))


def reference_time(ds: Dataset) -> datetime | None:
    """The time images are decay-corrected to (Decay Correction = START)."""
    explicit = _dt_value(getattr(ds, "DecayCorrectionDateTime", None))
    if explicit is not None:
        return explicit
    return _datetime(getattr(ds, "SeriesDate", None), getattr(ds, "SeriesTime", None))


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    return seq[0] if seq else None


def suv_scale(ds: Dataset) -> SuvScale:
    """The SUVbw factor for one PET image (per slice: Decay Correction NONE makes it slice-dependent)."""
    units = str(getattr(ds, "Units", "") or "").upper()
    if units == "GML":
        return SuvScale(1.0, True, flags=("suv_stored_units_gml",))
    if units != "BQML":
        return SuvScale(1.0, False, flags=(f"suv_unavailable_units_{units.lower() or 'missing'}",))
    info = _radiopharmaceutical(ds)
    weight_kg = float(getattr(ds, "PatientWeight", 0) or 0)
    dose = float(getattr(info, "RadionuclideTotalDose", 0) or 0) if info is not None else 0.0
    half_life = float(getattr(info, "RadionuclideHalfLife", 0) or 0) if info is not None else 0.0
    missing = [
        name
        for name, value in (("weight", weight_kg), ("dose", dose), ("half_life", half_life))
        if not value or value <= 0
    ]
    if missing:
        return SuvScale(1.0, False, flags=tuple(f"suv_unavailable_no_{name}" for name in missing))
    correction = str(getattr(ds, "DecayCorrection", "") or "").upper()
    if correction == "ADMIN":
        return SuvScale(weight_kg * 1000.0 / dose, True, decay_s=0.0)
    injected = injection_time(ds)
    if correction == "NONE":
        reference = _datetime(
            getattr(ds, "AcquisitionDate", None) or getattr(ds, "SeriesDate", None),
            getattr(ds, "AcquisitionTime", None),
        )
        flags: tuple[str, ...] = ("suv_decay_to_acquisition_time",)
    else:
        reference = reference_time(ds)
        flags = () if correction == "START" else ("suv_decay_correction_assumed_start",)
    if injected is None or reference is None:
        return SuvScale(1.0, False, flags=("suv_unavailable_no_times",))
    decay_s = (reference - injected).total_seconds()
    if decay_s < 0:
        return SuvScale(1.0, False, flags=("suv_unavailable_injection_after_scan",))
    decayed_dose = dose * math.pow(2.0, -decay_s / half_life)
    return SuvScale(weight_kg * 1000.0 / decayed_dose, True, decay_s=decay_s, flags=flags)
