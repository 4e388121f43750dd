"""CT/PET series: ordering by position, canonical orientation, resampling, and the exact way back to source slices."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from dicom_agent.inference.volume import VolumeGrid, boxes_from_mask, load_volume
from tests.runtime import dicom_factory

GRID = VolumeGrid(depth=24, size=64)  # z resampled 2.5 → 2.08 mm, in-plane 0.8 → 1.0 mm
STRETCH = VolumeGrid(depth=24, size=64, keep_aspect=False)
SLICES = range(8, 13)  # the cube occupies source slices 8..12 (in position order)
ROWS, COLS = slice(20, 36), slice(30, 50)


def _cube_volume() -> tuple[np.ndarray, np.ndarray]:
    values = np.full((20, 64, 80), -800.0)
    truth = np.zeros(values.shape, dtype=bool)
    truth[SLICES.start : SLICES.stop, ROWS, COLS] = True
    values[truth] = 400.0
    return values, truth


def _write_shuffled(tmp_path: Path, orientation: tuple[float, ...]) -> tuple[list[Path], list[str], np.ndarray]:
    values, truth = _cube_volume()
    numbers = list(range(1, 21))
    random.Random(7).shuffle(numbers)  # instance numbers unrelated to position
    written = dicom_factory.series(tmp_path / "ct", values, orientation=orientation, instance_numbers=numbers)
    uids = [str(ds.SOPInstanceUID) for _, ds in written]  # in position order
    files = [path for path, _ in written]
    random.Random(3).shuffle(files)  # handed over in no particular order
    return files, uids, truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("grid", [GRID, STRETCH], ids=["letterbox", "stretch"])
@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0)],  # axial; and columns toward patient right, slices running feet-ward
    ids=["axial", "mirrored-descending"],
)
def test_ct_cube_maps_back_to_its_source_slices_and_pixels(
    tmp_path: Path, orientation: tuple[float, ...], grid: VolumeGrid
) -> None:
    files, uids, truth = _write_shuffled(tmp_path, orientation)
    volume = load_volume(files, grid)
    assert volume.values.shape == (grid.depth, grid.size, grid.size)
    assert volume.unit == "HU"
    assert [ref.sop_instance_uid for ref in volume.slices] == uids  # ordered by position, not number or file order
    assert np.allclose(volume.model.GetDirection(), np.eye(3).flatten())  # canonical LPS on the model side

    model_mask = volume.values > -200.0  # half-way between lung and cube
    source_mask = volume.mask_to_source(model_mask)
    assert source_mask.shape == truth.shape
    assert _dice(source_mask, truth) > 0.85
    carrying = {volume.slices[k].sop_instance_uid for k in np.flatnonzero(source_mask.any(axis=(1, 2)))}
    assert carrying <= {uids[k] for k in range(SLICES.start - 1, SLICES.stop + 1)}
    assert {uids[k] for k in range(SLICES.start + 1, SLICES.stop - 1)} <= carrying

    tol_px = max(volume.model_spacing[:2]) / volume.source_spacing[0]  # one model pixel in source pixels
    for k in np.flatnonzero(model_mask.any(axis=(1, 2))):
        rows = np.flatnonzero(model_mask[k].any(axis=1))
        cols = np.flatnonzero(model_mask[k].any(axis=0))
        index, box = volume.box_to_source(float(k), cols[0], rows[0], cols[-1] + 1.0, rows[-1] + 1.0)
        assert SLICES.start - 1 <= index <= SLICES.stop
        assert np.allclose(box, (COLS.start, ROWS.start, COLS.stop, ROWS.stop), atol=tol_px), (box, tol_px)


def test_boxes_from_source_mask_are_per_slice_bounding_boxes() -> None:
    _, truth = _cube_volume()
    boxes = boxes_from_mask(truth)
    assert [k for k, _ in boxes] == list(SLICES)
    assert all(box == (30.0, 20.0, 50.0, 36.0) for _, box in boxes)


def _pet(tmp_path: Path, extra: dict[str, object], slopes: list[float] | None = None):
    from pydicom.dataset import Dataset

    activity = np.full((6, 32, 32), 5000.0)  # Bq/ml
    activity[2:4, 10:14, 10:14] = 40000.0
    info = Dataset()
    info.RadionuclideTotalDose = 370e6  # Bq
    info.RadionuclideHalfLife = 6586.2  # s, F-18
    info.RadiopharmaceuticalStartTime = "100000"
    fields = {
        "Units": "BQML",
        "DecayCorrection": "START",
        "PatientWeight": 70.0,
        "SeriesTime": "110000",
        "RadiopharmaceuticalInformationSequence": [info],
        **extra,
    }
    written = dicom_factory.series(
        tmp_path / "pet",
        activity,
        modality="PT",
        rescale=(2.0, 0.0),
        extra=fields,
        slice_slopes=slopes,
        spacing=(4.0, 4.0, 4.0),
    )
    return [p for p, _ in written], activity


def test_pet_suv_matches_hand_computation(tmp_path: Path) -> None:
    """SUVbw = C · W / (D · 2^(−Δt/T½)): 5000 Bq/ml, 70 kg, 370 MBq, 3600 s after injection, F-18."""
    files, _ = _pet(tmp_path, {}, slopes=[2.0, 4.0, 2.0, 2.0, 8.0, 2.0])  # per-slice rescale must be honoured
    volume = load_volume(files, VolumeGrid(depth=6, size=32))
    decayed = 370e6 * 2.0 ** (-3600.0 / 6586.2)
    expected_background = 5000.0 * 70_000.0 / decayed
    expected_lesion = 40000.0 * 70_000.0 / decayed
    assert volume.unit == "SUV" and not volume.flags
    source = volume.source
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(source)
    assert array[0, 0, 0] == pytest.approx(expected_background, rel=1e-3)
    assert array[1, 0, 0] == pytest.approx(expected_background, rel=1e-3)  # slope 4 slice
    assert array[2, 11, 11] == pytest.approx(expected_lesion, rel=1e-3)
    # by hand: 2^(-3600/6586.2) = 0.6846; 5000 · 70000 / (370e6 · 0.6846) = 1.382, a plausible background SUV
    assert expected_background == pytest.approx(1.382, abs=0.001)
    assert volume.values.max() == pytest.approx(expected_lesion, rel=0.05)


def test_pet_admin_decay_correction_uses_undecayed_dose(tmp_path: Path) -> None:
    files, _ = _pet(tmp_path, {"DecayCorrection": "ADMIN"})
    volume = load_volume(files, VolumeGrid(depth=6, size=32))
    import SimpleITK as sitk

    assert sitk.GetArrayFromImage(volume.source)[0, 0, 0] == pytest.approx(5000.0 * 70_000.0 / 370e6, rel=1e-3)


def test_pet_without_weight_falls_back_to_stored_values_and_says_so(tmp_path: Path) -> None:
    files, _ = _pet(tmp_path, {"PatientWeight": None})
    volume = load_volume(files, VolumeGrid(depth=6, size=32))
    import SimpleITK as sitk

    assert volume.unit == "stored"
    assert "suv_unavailable_no_weight" in volume.flags
    assert sitk.GetArrayFromImage(volume.source)[0, 0, 0] == pytest.approx(5000.0, rel=1e-3)
