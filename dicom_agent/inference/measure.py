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

Where a label's lesions are small against the pixels (a 10 mm PET lesion is four 4 × 4 × 8 mm voxels) counting
whole voxels cannot state the millimetre, so the outline may also be counted **between the samples**
(``decoding.size_subvoxel``): the values linearly interpolated onto cells of about a millimetre, each part's cells
at or above the same level — the isocontour of the interpolated image, as PET volumetry with partial-volume
interpolation measures. Chosen per label on the same validation phantoms: on hard-edged CT nodules it gains nothing.

A CT voxel reads the mean density of what it holds, so a solid lesion's edge voxels read between lung and soft
tissue in proportion to how much of the lesion they hold. Measured by **partial-volume analysis**
(``decoding.size_partial_volume``, after Kuhnigk et al., IEEE TMI 2006): each voxel of the outline and of the shell
one voxel around it counts the share of solid tissue its value says it holds, between the surrounding parenchyma
(the median of a ring beyond the shell) and solid tissue (a reference density the manifest gives per label). On
5 mm slices a 6 mm nodule is three voxels: a whole-voxel count steps 0.6 mm at a time, the shares do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_agent.inference.onnx_runner import DELINEATION_REACH, delineate, grow_once, grown_box, mask_components
from dicom_agent.inference.volume import window

# the largest nodule: a rounded opacity over 30 mm is a mass (Fleischner Society glossary, Hansell et al. 2008)
NODULE_MAX_MM = 30.0
SUBVOXEL_MM = 1.0  # the cell an interpolated outline is counted on (about; a whole fraction of each pixel)
SUBVOXEL_MAX_SPLIT = 8  # at most this many cells per pixel along an axis: 8³ cells per voxel bound the memory
# A shell voxel lies past the outline, its centre outside the lesion: it holds under half of it. One that reads more
# is another structure touching the lesion (a vessel, the chest wall) and counts nothing.
SHELL_MAX_SHARE = 0.55
PARENCHYMA_RING = 2  # voxels beyond the shell whose median value is the surrounding parenchyma


def equivalent_diameter(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Diameter (mm) of the circle (2D mask) or sphere (3D mask) with the mask's area or volume; ``spacing`` is
    the pixel size in mm along each axis of ``mask``. None for an empty mask."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None
    return diameter_of(count * math.prod(float(s) for s in spacing), mask.ndim)


def diameter_of(measure: float, ndim: int) -> float:
    """Diameter (mm) of the circle (``ndim`` 2) or sphere (3) whose area or volume is ``measure`` (mm², mm³)."""
    if ndim == 2:
        return 2.0 * math.sqrt(measure / math.pi)
    return (6.0 * measure / math.pi) ** (1.0 / 3.0)


def _upsampled(values: np.ndarray, splits: Sequence[int]) -> np.ndarray:
    """``values`` linearly interpolated onto ``splits[axis]`` cells per pixel along each axis, each cell sampled at
    its centre (pixel centres at integer indices; cells past the outermost centres take the edge value)."""
    out = values.astype(np.float32)
    for axis, split in enumerate(splits):
        if split == 1:
            continue
        n = out.shape[axis]
        at = np.clip((np.arange(n * split) + 0.5) / split - 0.5, 0.0, n - 1.0)
        lo = np.floor(at).astype(np.intp)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1] * out.ndim
        shape[axis] = -1
        w = (at - lo).astype(np.float32).reshape(shape)
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, hi, axis=axis) * w
    return out


def interpolated_measure(values: np.ndarray, outline: np.ndarray, spacing: Sequence[float], fraction: float) -> float:
    """Area or volume (mm², mm³) of an outline counted between the samples: each connected part of ``outline``,
    grown by one pixel, split into cells of about ``SUBVOXEL_MM`` whose linearly interpolated value is at or above
    ``fraction`` of the part's brightest pixel. A lesion edge that falls between two pixel centres is then placed
    where the values cross the level, not at either centre."""
    splits = [min(max(1, math.ceil(float(s) / SUBVOXEL_MM - 1e-6)), SUBVOXEL_MAX_SPLIT) for s in spacing]
    cell = math.prod(float(s) / n for s, n in zip(spacing, splits, strict=True))
    labels = mask_components(outline)
    total = 0
    for part_id in np.unique(labels[outline]):
        part = labels == part_id
        box = grown_box(np.argwhere(part), part.shape, 1)
        near = grow_once(part[box])
        level = fraction * float(values[box][part[box]].max())
        fine = _upsampled(values[box], splits) >= level
        for axis, split in enumerate(splits):
            near = np.repeat(near, split, axis=axis)
        total += int(np.count_nonzero(fine & near))
    return total * cell


def partial_volume_measure(values: np.ndarray, outline: np.ndarray, spacing: Sequence[float], solid: float) -> float:
    """Area or volume (mm², mm³) of the solid tissue an outline holds, by partial-volume analysis: each pixel of
    ``outline`` and of the shell one pixel around it counts its share between the parenchyma around it (the median
    of a ring ``PARENCHYMA_RING`` pixels wide beyond the shell) and ``solid`` (same units as ``values``); shell
    pixels reading over ``SHELL_MAX_SHARE`` belong to something else and count nothing. 0 where ``solid`` is not
    above the parenchyma (nothing to measure against) or the ring is empty."""
    grown = grow_once(outline)
    shell = grown & ~outline
    ring = grown
    for _ in range(PARENCHYMA_RING):
        ring = grow_once(ring)
    ring &= ~grown
    if not ring.any():
        return 0.0
    background = float(np.median(values[ring]))
    if solid <= background:
        return 0.0
    share = np.clip((values - background) / (solid - background), 0.0, 1.0)
    edge = share[shell]
    total = float(share[outline].sum()) + float(edge[edge <= SHELL_MAX_SHARE].sum())
    return total * math.prod(float(s) for s in spacing)


def source_diameter(
    values: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    fraction: float,
    reach: int = DELINEATION_REACH,
    subvoxel: bool = False,
    solid: float | None = None,
) -> float | None:
    """Equivalent diameter (mm) of a lesion outlined on the source grid: ``mask`` (the lesion's source-grid mask)
    redrawn from ``values`` (same shape, the model's intensity window in [0, 1], or unwindowed values at or above
    0) at ``fraction`` of its peak, at most ``reach`` pixels past the mask; with ``subvoxel``, that outline counted
    between the samples (:func:`interpolated_measure`); with ``solid`` (solid tissue in the units of ``values``),
    by partial-volume analysis (:func:`partial_volume_measure`). None when the grids disagree or the mask is
    empty."""
    if values.shape != mask.shape or not mask.any():
        return None
    outline = delineate(values, mask, fraction, reach)
    if solid is not None:
        measure = partial_volume_measure(values, outline, spacing, solid)
    elif subvoxel:
        measure = interpolated_measure(values, outline, spacing, fraction)
    else:
        return equivalent_diameter(outline, spacing)
    return diameter_of(measure, mask.ndim) if measure > 0 else None


@dataclass(frozen=True)
class SourceGrid:
    """Where an image's lesion sizes are measured: its source values, their pixel spacing (mm per axis of the
    values) and the model's intensity window for them (None: measured on the values as they are, as radiograph
    display values in [0, 1] and PET SUVs, whose window's top is a display range, not where uptake ends)."""

    values: np.ndarray
    spacing: tuple[float, ...]
    window: tuple[float, float] | None = None

    def diameter(
        self,
        mask: np.ndarray,
        fraction: float,
        reach: int = DELINEATION_REACH,
        subvoxel: bool = False,
        solid: float | None = None,
    ) -> float | None:
        """:func:`source_diameter` of a source-grid ``mask``; ``solid`` is in source units (HU) and needs a window
        (None without one). Only the mask's bounding box, grown by the outline's reach (and a pixel for
        ``subvoxel``, the shell and ring for ``solid``), is windowed: a CT of 512² × 300 voxels is 300 MB as
        float32, a lesion a few hundred kB."""
        if self.values.shape != mask.shape or not mask.any() or (solid is not None and self.window is None):
            return None
        margin = 1 + PARENCHYMA_RING if solid is not None else int(subvoxel)
        box = grown_box(np.argwhere(mask), mask.shape, reach + margin)
        crop = self.values[box]
        values = window(crop, *self.window) if self.window is not None else np.asarray(crop, dtype=np.float32)
        if solid is not None and self.window is not None:
            solid = float(window(np.asarray(solid, dtype=np.float32), *self.window))
        return source_diameter(values, mask[box], self.spacing, fraction, reach, subvoxel, solid)
