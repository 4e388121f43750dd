"""Lesion diameters measured on the acquired pixels, not on the model grid.

The network sees a radiograph at 128² (3.4 mm pixels for a 43 cm detector) and a CT or PET at 32 × 64²
(5–8 mm in-plane, 10–24 mm between slices); a size read off that grid is off by a pixel or two, which is the
difference between nodule size categories (6 and 8 mm). So a round lesion is measured where the scanner sampled
it: its mask, mapped back onto the source grid, is redrawn from the source values by the delineation rule
(:func:`~dicom_agent.inference.onnx_runner.delineate`: the pixels near the mask at or above a fraction of its
brightest, connected to it) and its size is the **equivalent diameter** of that outline — the diameter of the
circle (radiograph) or sphere (volume) of the same area or volume, as in nodule volumetry. The fraction is a
per-label decoding setting (manifest ``decoding.size_fraction``) chosen on validation phantoms
(:func:`models.decoding.choose_size_fractions`); a label without one keeps the model-grid measurement. So is how far
the outline may grow past the mapped mask (``decoding.size_reach``, 2 source pixels unless the manifest says
otherwise): a CT mass against the chest wall grows into the wall's soft tissue, which no level separates from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_agent.inference.onnx_runner import DELINEATION_REACH, delineate, grown_box
from dicom_agent.inference.volume import window

# the largest nodule: a rounded opacity over 30 mm is a mass (Fleischner Society glossary, Hansell et al. 2008)
NODULE_MAX_MM = 30.0


def equivalent_diameter(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Diameter (mm) of the circle (2D mask) or sphere (3D mask) with the mask's area or volume; ``spacing`` is
    the pixel size in mm along each axis of ``mask``. None for an empty mask."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None
    measure = count * math.prod(float(s) for s in spacing)
    if mask.ndim == 2:
        return 2.0 * math.sqrt(measure / math.pi)
    return (6.0 * measure / math.pi) ** (1.0 / 3.0)


def source_diameter(
    values: np.ndarray, mask: np.ndarray, spacing: Sequence[float], fraction: float, reach: int = DELINEATION_REACH
) -> float | None:
    """Equivalent diameter (mm) of a lesion outlined on the source grid: ``mask`` (the lesion's source-grid mask)
    redrawn from ``values`` (same shape, the model's intensity window in [0, 1]) at ``fraction`` of its peak, at
    most ``reach`` pixels past the mask. None when the grids disagree or the mask is empty."""
    if values.shape != mask.shape or not mask.any():
        return None
    return equivalent_diameter(delineate(values, mask, fraction, reach), spacing)


@dataclass(frozen=True)
class SourceGrid:
    """Where an image's lesion sizes are measured: its source values, their pixel spacing (mm per axis of the
    values) and the model's intensity window for them (None: already in [0, 1], as radiograph display values)."""

    values: np.ndarray
    spacing: tuple[float, ...]
    window: tuple[float, float] | None = None

    def diameter(self, mask: np.ndarray, fraction: float, reach: int = DELINEATION_REACH) -> float | None:
        """:func:`source_diameter` of a source-grid ``mask``. Only the mask's bounding box, grown by the outline's
        reach, is windowed: a CT of 512² × 300 voxels is 300 MB as float32, a lesion a few hundred kB."""
        if self.values.shape != mask.shape or not mask.any():
            return None
        box = grown_box(np.argwhere(mask), mask.shape, reach)
        crop = self.values[box]
        values = window(crop, *self.window) if self.window is not None else crop
        return source_diameter(values, mask[box], self.spacing, fraction, reach)
