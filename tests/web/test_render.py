"""Rendering arithmetic: SUV body-weight factor and window presets (values checked by hand)."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest

from dicom_agent.web.render import Frame, suv_factor, window_for


def pet_header(weight: float | None = 70.0) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.SeriesTime = "080000"
    if weight is not None:
        ds.PatientWeight = weight
    info = pydicom.Dataset()
    info.RadionuclideTotalDose = 370e6
    info.RadionuclideHalfLife = 6586.2
    info.RadiopharmaceuticalStartTime = "070000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    return ds


def test_suv_factor_decays_the_dose_to_scan_start() -> None:
    decayed = 370e6 * math.pow(2.0, -3600 / 6586.2)
    assert suv_factor(pet_header()) == pytest.approx(70_000 / decayed)
    # 1000 Bq/mL in a 70 kg patient one hour after 370 MBq of F-18: SUV ~0.276
    assert 1000 * (suv_factor(pet_header()) or 0) == pytest.approx(0.2763, abs=1e-3)


def test_no_suv_without_weight_or_units() -> None:
    assert suv_factor(pet_header(weight=None)) is None
    ds = pet_header()
    ds.Units = "CNTS"
    assert suv_factor(ds) is None


def test_ct_presets_are_hounsfield_windows() -> None:
    frame = Frame(values=np.zeros((2, 2), np.float32), modality="CT", window=(40, 400), invert=False)
    assert window_for(frame, "lung") == (-1350.0, 150.0)
    assert window_for(frame, "mediastinum") == (-125.0, 225.0)
    assert window_for(frame, "default") == (-160.0, 240.0)  # the file's own window


def test_age_in_queue_in_both_languages() -> None:
    from datetime import UTC, datetime, timedelta

    from dicom_agent.web.templating import format_age

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert format_age(now - timedelta(minutes=90), "en", now) == "1 h 30 min"
    assert format_age(now - timedelta(minutes=90), "zh", now) == "1 小时 30 分钟"
    assert format_age(now - timedelta(days=3), "en", now) == "3 d"
    assert format_age(now - timedelta(seconds=5), "en", now) == "5 s"
    assert format_age(None) == ""


def test_suv_of_the_pet_sample_matches_its_ground_truth() -> None:
    """The committed PET phantom states each lesion's SUVmax; our SUVbw of its stored Bq/mL must agree."""
    import json
    from pathlib import Path

    from dicom_agent.web.render import load_frame

    sample = Path(__file__).resolve().parents[2] / "samples" / "pet"
    truth = json.loads((sample / "ground_truth.json").read_text(encoding="utf-8"))
    for lesion in truth["lesions"]:
        peak = max(
            float(load_frame(sample / f"IM{s['instance_number']:04d}.dcm").values.max()) for s in lesion["slices"]
        )
        assert peak == pytest.approx(lesion["attrs"]["suv_max"], rel=0.05), lesion["location"]
