"""Lesion diameters on the source grid (``inference.measure``): equivalent diameters of outlines redrawn from
the acquired values, on drawn discs and spheres of known size."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_agent.inference.measure import equivalent_diameter, source_diameter


def _bump(shape: tuple[int, ...], spacing: float, diameter: float) -> np.ndarray:
    """A smooth lesion on a dim background whose edge lies at half its peak (as PET reports delineate it):
    values in [0, 1], centred off the pixel grid."""
    centre = [n / 2 + 0.37 for n in shape]
    grids = np.meshgrid(*[(np.arange(n) - c) * spacing for n, c in zip(shape, centre, strict=True)], indexing="ij")
    d = np.sqrt(sum(g * g for g in grids))
    r = diameter / 2
    inner = 0.9 * (1 - 0.5 * (np.minimum(d, r) / r) ** 2)
    rim = 0.45 * np.exp(-(((d - r) / (2 * spacing)) ** 2))
    return np.maximum(np.where(d <= r, inner, rim), 0.05).astype(np.float32)


def _coarse(mask: np.ndarray, cell: int) -> np.ndarray:
    """A mask as a model grid ``cell`` times coarser sees it, mapped back by nearest neighbour (blocks)."""
    index = tuple(slice(cell // 2, None, cell) for _ in mask.shape)
    small = mask[index]
    for axis in range(mask.ndim):
        small = np.repeat(small, cell, axis=axis)
    return small[tuple(slice(0, n) for n in mask.shape)]


@pytest.mark.parametrize("diameter", [6.0, 11.3, 24.6])
def test_a_disc_is_measured_to_half_a_pixel(diameter: float) -> None:
    values = _bump((64, 64), 1.0, diameter)
    # the network's mask, a little short of the edge, on a model grid 2 x coarser than the source (as for
    # radiographs, CT and PET)
    coarse = _coarse(values >= 0.55, 2)
    measured = source_diameter(values, coarse, (1.0, 1.0), 0.5)
    assert measured is not None and abs(measured - diameter) < 0.5, measured
    blocky = equivalent_diameter(coarse, (1.0, 1.0))
    assert blocky is not None and abs(blocky - diameter) > abs(measured - diameter)


def test_a_sphere_is_measured_by_its_volume() -> None:
    values = _bump((40, 64, 64), 1.0, 17.0)
    coarse = _coarse(values >= 0.55, 2)
    measured = source_diameter(values, coarse, (1.0, 1.0, 1.0), 0.5)
    assert measured is not None and abs(measured - 17.0) < 0.5, measured


def test_anisotropic_pixels_count_their_area() -> None:
    mask = np.zeros((10, 40), bool)
    mask[2:6, 4:20] = True  # 4 x 16 pixels of 2 x 0.5 mm = 64 mm²
    assert equivalent_diameter(mask, (2.0, 0.5)) == pytest.approx(2 * np.sqrt(64 / np.pi))


def test_nothing_to_measure() -> None:
    values = _bump((32, 32), 1.0, 8.0)
    assert equivalent_diameter(np.zeros((4, 4), bool), (1.0, 1.0)) is None
    assert source_diameter(values, np.zeros_like(values, dtype=bool), (1.0, 1.0), 0.5) is None
    assert source_diameter(values, np.ones((16, 16), bool), (1.0, 1.0), 0.5) is None  # another grid's mask
