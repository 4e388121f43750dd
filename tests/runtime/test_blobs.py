"""The fine-grid channels: the Hessian blob filter sets spheres apart from tubes, the dark-tube filter marks air
bronchi in dense tissue and not a solid mass, PET's hot-blob dot sets a liver lesion apart from the liver that the
model grid averages it into, and the runtime computes from a DICOM geometry exactly what training computes from a
phantom array."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_agent.inference.blobs import (
    PET_FINE_CHANNELS,
    _eigenvalues,
    dot_enhance,
    fine_channels,
    hessian_filters,
    max_to_grid,
    tube_enhance,
)
from dicom_agent.inference.volume import VolumeGrid, to_model_grid, window
from models.preprocess import (
    CHANNELS,
    CT_WINDOW,
    DEPTH,
    DRAWN,
    FINE,
    SLICE_SIZE,
    WINDOWS,
    prepare_dot,
    prepare_volume,
)

SPACING = (5.0, 2.75, 2.75)  # (z, y, x) mm: the CT phantoms' grid
PET_SPACING = (8.0, 4.0, 4.0)  # (z, y, x) mm: the PET phantoms' grid (96 slices of 128²)


def _lung(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Lung (-850 HU) with noise; returns the volume and the voxel coordinates in mm (z, y, x)."""
    rng = np.random.default_rng(5)
    values = rng.normal(-850.0, 15.0, shape).astype(np.float32)
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return values, np.stack(grids)


def test_a_nodule_outshines_a_vessel_of_the_same_radius() -> None:
    """A 10 mm sphere and a 10 mm-wide tube along z, both soft tissue in lung: on the model grid the intensity
    cannot tell them apart, the dot filter can."""
    shape = (64, 128, 128)
    values, (z, y, x) = _lung(shape, SPACING)
    sphere = (z - 160.0) ** 2 + (y - 120.0) ** 2 + (x - 100.0) ** 2 <= 5.0**2
    tube = (y - 220.0) ** 2 + (x - 250.0) ** 2 <= 5.0**2
    values[sphere | tube] = 40.0
    response = dot_enhance(window(values, *CT_WINDOW), SPACING)
    assert response[sphere].max() > 2.0 * response[tube].max()  # measured 2.9x
    assert response[sphere].max() > 4.0 * response[~(sphere | tube)].max()


def test_air_bronchi_in_consolidation_mark_it_and_a_solid_mass_stays_dark() -> None:
    """Two soft-tissue balls of 60 mm in lung (edges partial-volumed, as the phantoms' are), one crossed by 6 mm
    air tubes (bronchograms), one solid: the dark-tube filter answers inside the first and hardly inside the
    second; the lung side of the solid ball's wall (a dark shell, not a tube, but stepped by 5 mm slices) answers
    at about a third of the bronchi."""
    shape = (64, 128, 128)
    values, (z, y, x) = _lung(shape, SPACING)
    to_consolidation = np.sqrt((z - 160.0) ** 2 + (y - 120.0) ** 2 + (x - 100.0) ** 2)
    to_mass = np.sqrt((z - 160.0) ** 2 + (y - 240.0) ** 2 + (x - 250.0) ** 2)
    for distance in (to_consolidation, to_mass):
        cover = np.clip((30.0 - distance) / 2.75 + 0.5, 0.0, 1.0)
        values += cover * (40.0 - values)
    consolidation, mass = to_consolidation <= 30.0, to_mass <= 30.0
    for dy in (-12.0, 0.0, 12.0):  # bronchi along x through the consolidation, short of its outline
        bronchus = ((z - 160.0) ** 2 + (y - 120.0 - dy) ** 2 <= 3.0**2) & (np.abs(x - 100.0) < 20)
        values[bronchus] = -900.0
    windowed = window(values, *CT_WINDOW)
    response = tube_enhance(windowed, SPACING)
    shell = ~mass & (to_mass <= 36.0)
    assert response[consolidation].max() > 10.0 * response[mass].max()
    assert response[consolidation].max() > 2.0 * response[shell].max()  # measured 2.7x
    both = hessian_filters(windowed, SPACING, {"dot": (2.0, 3.0), "tube": (2.0, 3.0)})
    assert np.array_equal(both["tube"], response)  # shared scales give each filter what it gives alone
    assert np.array_equal(both["dot"], dot_enhance(windowed, SPACING, (2.0, 3.0)))


def test_eigenvalues_match_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b, c, d, e, f = rng.normal(0.0, 1.0, (6, 500))
    matrices = np.stack([np.stack([a, d, e], -1), np.stack([d, b, f], -1), np.stack([e, f, c], -1)], -2)
    expected = np.linalg.eigvalsh(matrices)
    low, high = _eigenvalues(a, b, c, d, e, f)
    np.testing.assert_allclose(low, expected[:, 0], atol=1e-9)
    np.testing.assert_allclose(high, expected[:, 2], atol=1e-9)


def test_max_to_grid_covers_every_voxel() -> None:
    values = np.zeros((7, 10, 9), np.float32)
    values[6, 9, 8] = 3.0  # the last voxel of each axis falls in the last cell
    values[0, 0, 0] = 1.0
    pooled = max_to_grid(values, (3, 4, 4))
    assert pooled.shape == (3, 4, 4)
    assert pooled[-1, -1, -1] == 3.0 and pooled[0, 0, 0] == 1.0 and pooled.sum() == 4.0
    exact = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    assert np.array_equal(max_to_grid(exact, (2, 2, 2)), exact.reshape(2, 2, 2, 2, 2, 2).max(axis=(1, 3, 5)))


def _warm_liver(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """A PET body (SUV 0.7) with a liver (2.5) holding a 15 mm lesion of SUVmax 5.5 (the phantoms' profile: half
    the peak at its edge), Poisson-like noise; returns the values, the lesion and the liver 30 mm or more from it."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    values = np.full(shape, 0.7, np.float32)
    liver = ((z - 380.0) / 90.0) ** 2 + ((y - 256.0) / 90.0) ** 2 + ((x - 180.0) / 100.0) ** 2 <= 1.0
    values[liver] = 2.5
    distance = np.sqrt((z - 372.0) ** 2 + (y - 250.0) ** 2 + (x - 170.0) ** 2)
    lesion = distance <= 7.5
    values = np.maximum(values, np.where(lesion, 5.5 * (1.0 - 0.5 * (distance / 7.5) ** 2), 0.0)).astype(np.float32)
    values += rng.normal(0.0, 0.15, shape).astype(np.float32) * np.sqrt(values)
    return values, lesion, liver & (distance > 30.0)


def test_a_liver_lesion_stands_out_in_the_pet_dot_and_not_on_the_model_grid() -> None:
    """On the model grid's 24 mm slices a 15 mm lesion of SUVmax 5.5 in a liver of 2.5 is hardly brighter than the
    liver (measured 1.17x its brightest voxel); PET's hot-blob dot, computed on the acquired 8 mm slices and
    max-pooled, sets it apart (2.4x)."""
    values, lesion, liver = _warm_liver((96, 128, 128), PET_SPACING)
    dot, image = prepare_dot(values, PET_SPACING, "pet"), prepare_volume(values, "pet")
    assert dot.shape == (len(PET_FINE_CHANNELS), DEPTH, SLICE_SIZE, SLICE_SIZE)
    grid = (DEPTH, SLICE_SIZE, SLICE_SIZE)
    at = max_to_grid(lesion.astype(np.float32), grid) > 0
    rest = (max_to_grid(liver.astype(np.float32), grid) > 0) & ~at
    assert image[at].max() < 1.3 * image[rest].max()
    assert dot[0][at].max() > 2.0 * dot[0][rest].max()


@pytest.mark.parametrize(
    ("kind", "shape", "spacing_xyz"),
    [
        ("ct", (64, 128, 128), (2.75, 2.75, 5.0)),  # the phantoms' grid
        ("ct", (128, 256, 256), (1.4, 1.4, 2.5)),  # twice as fine: block means first
        ("ct", (97, 333, 290), (1.2, 1.0, 3.3)),  # neither
        ("pet", (96, 128, 128), (4.0, 4.0, 8.0)),  # the phantoms' grid: the fine grid keeps its slices
        ("pet", (250, 200, 200), (2.6, 2.6, 3.1)),  # finer: block means first (two slices in z)
    ],
)
def test_runtime_fine_channels_are_the_training_ones(
    kind: str, shape: tuple[int, int, int], spacing_xyz: tuple[float, ...]
) -> None:
    """``to_model_grid`` with the manifest's fine grid, windowed and filtered as the adapter does, equals
    ``models.preprocess.prepare_dot`` on the same array (CT: nodules of 6-14 mm in noisy lung; PET: a lesion in
    a warm liver)."""
    spacing_zyx = spacing_xyz[::-1]
    if kind == "ct":
        values, (z, y, x) = _lung(shape, spacing_zyx)
        extent = [n * s for n, s in zip(shape, spacing_zyx, strict=True)]
        for i, radius in enumerate((3.0, 5.0, 7.0)):
            centre = [e * f for e, f in zip(extent, (0.3 + 0.2 * i, 0.4, 0.35 + 0.15 * i), strict=True)]
            values[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] = 40.0
    else:
        values = _warm_liver(shape, spacing_zyx)[0]
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing_xyz)
    grid = VolumeGrid(depth=DEPTH, size=SLICE_SIZE, keep_aspect=False, drawn=DRAWN[kind], fine=FINE[kind])
    volume = to_model_grid(image, grid, "HU" if kind == "ct" else "SUV")
    assert volume.fine is not None and volume.fine_spacing is not None
    channels, (lo, hi) = CHANNELS[kind], WINDOWS[kind]
    runtime = fine_channels(window(volume.fine, lo, hi), volume.fine_spacing, volume.values.shape, channels)
    training = prepare_dot(values, spacing_zyx, kind)
    assert runtime.shape == training.shape == (len(channels), DEPTH, SLICE_SIZE, SLICE_SIZE)
    assert training[0].max() > (0.3 if kind == "ct" else 0.05)  # the lesions are there (PET's: 0.1)
    assert np.abs(runtime - training).max() < 2e-3
