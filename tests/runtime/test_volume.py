"""CT/PET series: ordering by position, canonical orientation, resampling, and the exact way back to source slices."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_agent.inference.volume import VolumeGrid, boxes_from_mask, cell_blocks, load_volume, to_model_grid
from models.preprocess import DRAWN, resize_3d
from tests.runtime import dicom_factory

GRID = VolumeGrid(depth=24, size=64)  # z resampled 2.5 → 2.08 mm, in-plane 0.8 → 1.0 mm
STRETCH = VolumeGrid(depth=24, size=64, keep_aspect=False)
# trained on volumes at the grid's resolution: in-plane the series (2.0-2.5x finer) is averaged 2 x 2 first
AVERAGED = VolumeGrid(depth=12, size=32, keep_aspect=False, drawn=(1.0, 1.0, 1.0))
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


@pytest.mark.parametrize("grid", [GRID, STRETCH, AVERAGED], ids=["letterbox", "stretch", "block-averaged"])
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


def _image(values: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    return image


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("ct", (64, 128, 128)),
        ("ct", (128, 256, 256)),
        ("ct", (97, 333, 290)),
        ("ct", (300, 512, 500)),
        ("pet", (96, 128, 128)),  # the PET phantoms: 8 mm slices averaged in threes
        ("pet", (100, 200, 200)),
    ],
)
def test_runtime_feeds_the_network_what_training_would_at_any_resolution(
    kind: str, shape: tuple[int, int, int]
) -> None:
    """The runtime's model grid (SimpleITK, physical geometry) equals the training preprocessing
    (``models.preprocess.resize_3d``, torch) on one volume, whether or not it is finer than the phantoms."""
    values = np.random.default_rng(0).uniform(-1000.0, 400.0, shape).astype(np.float32)
    grid = VolumeGrid(depth=32, size=64, keep_aspect=False, drawn=DRAWN[kind])
    volume = to_model_grid(_image(values, (0.7, 0.7, 1.0)), grid, "HU")
    assert np.abs(volume.values - resize_3d(values, 32, 64, DRAWN[kind])).max() < 0.01


def test_a_finer_series_is_first_brought_to_the_training_resolution() -> None:
    """A series 4x finer than the grid reaches the network as the same anatomy drawn 2x finer would (the
    phantoms' resolution): each model voxel the mean of its cell, not one point of it."""
    rng = np.random.default_rng(1)
    fine = rng.normal(40.0, 30.0, (64, 128, 128)).astype(np.float32)  # thin slices: noisy
    coarse = fine.reshape(32, 2, 64, 2, 64, 2).mean(axis=(1, 3, 5))
    coarse_image = _image(coarse, (1.4, 1.4, 2.0))
    coarse_image.SetOrigin((0.35, 0.35, 0.5))  # the centre of each 2 x 2 x 2 block of the fine voxels
    grid = VolumeGrid(depth=16, size=32, keep_aspect=False, drawn=(2.0, 2.0, 2.0))
    fine_image = _image(fine, (0.7, 0.7, 1.0))
    averaged = to_model_grid(fine_image, grid, "HU").values
    assert np.allclose(averaged, to_model_grid(coarse_image, grid, "HU").values, atol=1e-3)
    sampled = to_model_grid(fine_image, VolumeGrid(depth=16, size=32, keep_aspect=False), "HU").values
    assert averaged.std() < 0.6 * sampled.std()  # sampled directly, the thin-slice noise reaches the network


def test_cell_blocks_stop_at_the_training_resolution() -> None:
    thin = _image(np.zeros((300, 512, 512)), (0.7, 0.7, 1.0))  # a thin-slice chest CT
    reference = to_model_grid(thin, VolumeGrid(32, 64, keep_aspect=False), "HU").model
    assert cell_blocks(thin, reference, DRAWN["ct"]) == (4, 4, 4)  # 8x, 8x, 9.4x the grid; trained at 2x
    pet = _image(np.zeros((96, 128, 128)), (4.0, 4.0, 8.0))  # the PET phantoms' own resolution
    reference = to_model_grid(pet, VolumeGrid(32, 64, keep_aspect=False), "SUV").model
    assert cell_blocks(pet, reference, DRAWN["pet"]) == (1, 1, 3)  # 8 mm slices averaged in threes, as trained


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
