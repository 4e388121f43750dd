"""CT's fine-grid channels: the Hessian blob filter sets spheres apart from tubes, the dark-tube filter marks air
bronchi in dense tissue and not a solid mass, and the runtime computes from a DICOM geometry exactly what training
computes from a phantom array."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_agent.inference.blobs import (
    FINE_CHANNELS,
    _eigenvalues,
    dot_enhance,
    fine_channels,
    hessian_filters,
    max_to_grid,
    tube_enhance,
)
from dicom_agent.inference.volume import VolumeGrid, to_model_grid, window
from models.preprocess import CT_WINDOW, DEPTH, DRAWN, SLICE_SIZE, prepare_dot

SPACING = (5.0, 2.75, 2.75)  # (z, y, x) mm: the CT phantoms' grid


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


@pytest.mark.parametrize(
    ("shape", "spacing_xyz"),
    [
        ((64, 128, 128), (2.75, 2.75, 5.0)),  # the phantoms' grid
        ((128, 256, 256), (1.4, 1.4, 2.5)),  # twice as fine: block means first
        ((97, 333, 290), (1.2, 1.0, 3.3)),  # neither
    ],
)
def test_runtime_fine_channels_are_the_training_ones(
    shape: tuple[int, int, int], spacing_xyz: tuple[float, ...]
) -> None:
    """``to_model_grid`` with the manifest's fine grid, windowed and filtered as the adapter does, equals
    ``models.preprocess.prepare_dot`` on the same array (nodules of 6-14 mm in noisy lung)."""
    spacing_zyx = spacing_xyz[::-1]
    values, (z, y, x) = _lung(shape, spacing_zyx)
    extent = [n * s for n, s in zip(shape, spacing_zyx, strict=True)]
    for i, radius in enumerate((3.0, 5.0, 7.0)):
        centre = [e * f for e, f in zip(extent, (0.3 + 0.2 * i, 0.4, 0.35 + 0.15 * i), strict=True)]
        values[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] = 40.0
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing_xyz)
    grid = VolumeGrid(depth=DEPTH, size=SLICE_SIZE, keep_aspect=False, drawn=DRAWN["ct"], fine=DRAWN["ct"])
    volume = to_model_grid(image, grid, "HU")
    assert volume.fine is not None and volume.fine_spacing is not None
    runtime = fine_channels(window(volume.fine, *CT_WINDOW), volume.fine_spacing, volume.values.shape)
    training = prepare_dot(values, spacing_zyx)
    assert runtime.shape == training.shape == (len(FINE_CHANNELS), DEPTH, SLICE_SIZE, SLICE_SIZE)
    assert training[0].max() > 0.3  # the nodules are there
    assert np.abs(runtime - training).max() < 2e-3
