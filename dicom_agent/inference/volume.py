"""CT and PET series from stored files to the model's volume grid, keeping the exact way back (SimpleITK).

Slices are ordered by their position along the slice normal (Image Position/Orientation Patient, PS3.3
C.7.6.2.1.1), never by Instance Number, and each slice keeps its SOP Instance UID. Pixel values get each
slice's own Modality LUT (rescale), then HU for CT or SUVbw for PET (:mod:`suv`). The source stack becomes a
SimpleITK image with its true geometry, is reoriented to the canonical LPS frame (index i → patient left,
j → posterior, k → superior: axial slices, image left = patient right) and resampled onto the model's
depth × size × size grid (a series finer than the model's training volumes block-averaged to their resolution
first). Results on that grid go back through the same geometry: masks by nearest-neighbour
resampling onto the source grid, boxes by mapping their corners to source pixels of the right source slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.suv import suv_scale
from dicom_agent.inference.types import ImageRef

log = logging.getLogger(__name__)

CT_AIR_HU = -1024.0


@dataclass(frozen=True)
class VolumeGrid:
    """The model's input grid: ``depth`` slices of ``size`` × ``size``; spacing ``None`` = fit the series extent."""

    depth: int
    size: int
    spacing_mm: tuple[float, float, float] | None = None  # (x, y, z)
    keep_aspect: bool = True  # False: each axis stretched to fit (a model trained "fit-to-grid")
    # (x, y, z): how many times finer than the grid the training volumes were; a finer series is block-averaged
    # to that first (``cell_blocks``). None: resampled as it is.
    drawn: tuple[float, float, float] | None = None
    # (x, y, z): also resample the series onto a grid this many times finer than the model's (same extent), for
    # inputs computed there (CT's dot channel, ``blobs``). None: no such copy
    fine: tuple[float, float, float] | None = None


@dataclass
class Volume:
    """A series on the model grid plus the geometry that maps results back to each source slice."""

    values: np.ndarray  # float32 (depth, size, size): HU (CT) or SUV (PET) on the model grid, canonical LPS
    unit: str  # "HU" | "SUV" | "stored"
    slices: list[ImageRef]  # source slices in position order: index k of the source grid
    source: sitk.Image  # geometry (and values) of the source stack, in position order
    model: sitk.Image  # geometry of the model grid (values = ``values``)
    flags: list[str] = field(default_factory=list)
    fine: np.ndarray | None = None  # float32 (z, y, x): the same values on ``VolumeGrid.fine``'s grid
    fine_spacing: tuple[float, float, float] | None = None  # (z, y, x) mm of ``fine``

    @property
    def source_shape(self) -> tuple[int, int, int]:
        cols, rows, depth = self.source.GetSize()
        return depth, rows, cols

    @property
    def source_spacing(self) -> tuple[float, float, float]:
        """(x = column, y = row, z = slice) spacing in mm."""
        sx, sy, sz = self.source.GetSpacing()
        return float(sx), float(sy), float(sz)

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        sx, sy, sz = self.model.GetSpacing()
        return float(sx), float(sy), float(sz)

    def mask_to_source(self, mask: np.ndarray) -> np.ndarray:
        """A model-grid mask (depth, size, size) resampled by nearest neighbour onto the source grid (k, rows, cols)."""
        if mask.shape != self.values.shape:
            raise ValueError(f"mask shape {mask.shape} is not the model grid {self.values.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
        image.CopyInformation(self.model)
        back = sitk.Resample(image, self.source, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(back).astype(bool)

    def box_to_source(self, k: float, x0: float, y0: float, x1: float, y1: float) -> tuple[int, tuple[float, ...]]:
        """A box on model slice ``k`` (SCOORD pixel edges) → (source slice index, box on that slice's pixel grid).

        Exact for series acquired in any orientation whose axes the reorientation only permutes or flips
        (axial, sagittal, coronal stacks); the box is the bounding box of the mapped corners.
        """
        corners = [(x, y) for x in (x0, x1) for y in (y0, y1)]
        src = [
            self.source.TransformPhysicalPointToContinuousIndex(
                self.model.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, float(k)))
            )
            for x, y in corners
        ]
        xs = [c[0] + 0.5 for c in src]
        ys = [c[1] + 0.5 for c in src]
        depth, rows, cols = self.source_shape
        index = int(np.clip(round(float(np.mean([c[2] for c in src]))), 0, depth - 1))
        box = (
            float(np.clip(min(xs), 0, cols)),
            float(np.clip(min(ys), 0, rows)),
            float(np.clip(max(xs), 0, cols)),
            float(np.clip(max(ys), 0, rows)),
        )
        return index, box

    def peak_in(self, source_mask: np.ndarray) -> tuple[float, int] | None:
        """The highest source value inside a source-grid mask and the source slice holding it: a PET lesion's
        SUVmax is read on the acquired voxels, never on the resampled model grid (which averages the peak away)."""
        values = sitk.GetArrayViewFromImage(self.source)
        inside = np.flatnonzero(source_mask) if source_mask.shape == values.shape else np.empty(0, dtype=np.intp)
        if inside.size == 0:
            return None
        flat = int(inside[np.argmax(values.ravel()[inside])])
        return float(values.flat[flat]), flat // (values.shape[1] * values.shape[2])

    def model_slice_of_source(self, index: int) -> float:
        """The (continuous) model slice a source slice's centre lands on: for lesion-slice bookkeeping."""
        _, rows, cols = self.source_shape
        point = self.source.TransformContinuousIndexToPhysicalPoint(((cols - 1) / 2, (rows - 1) / 2, float(index)))
        return float(self.model.TransformPhysicalPointToContinuousIndex(point)[2])


def boxes_from_mask(mask: np.ndarray) -> list[tuple[int, tuple[float, float, float, float]]]:
    """Per-slice bounding boxes (SCOORD edges) of a source-grid mask: the boxes an SR draws on each slice."""
    out = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        rows = np.flatnonzero(mask[k].any(axis=1))
        cols = np.flatnonzero(mask[k].any(axis=0))
        out.append((int(k), (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))))
    return out


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def read_series(
    files: Sequence[Path], study_uid: str | None = None
) -> tuple[sitk.Image, list[ImageRef], str, list[str]]:
    """Decodes a single-frame CT/PET series into a float32 SimpleITK image in slice-position order.

    Returns the image (HU for CT, SUVbw for PET when computable, else the rescaled stored values), the
    source slice references, the unit, and flags for every assumption made.
    """
    if not files:
        raise PermanentInferenceError("empty series")
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:
            raise PermanentInferenceError(f"cannot read {Path(path).name}: {exc}") from exc
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise PermanentInferenceError("enhanced multi-frame volumes are not supported yet; send single-frame slices")
    try:
        normal = _normal(datasets[0])
        keyed = sorted(
            ((float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), i) for i, ds in enumerate(datasets))
        )
    except AttributeError as exc:
        raise PermanentInferenceError(f"series lacks Image Position/Orientation (Patient): {exc}") from exc
    flags: list[str] = []
    positions = np.asarray([p for p, _ in keyed])
    ordered = [datasets[i] for _, i in keyed]
    if len(set(np.round(positions, 3))) != len(positions):
        raise PermanentInferenceError("series has several slices at the same position (mixed acquisitions)")
    first = ordered[0]
    shape = (int(first.Rows), int(first.Columns))
    if any((int(ds.Rows), int(ds.Columns)) != shape for ds in ordered):
        raise PermanentInferenceError("series slices differ in size")
    steps = np.diff(positions)
    spacing_z = float(np.mean(steps)) if len(steps) else float(getattr(first, "SliceThickness", 1.0) or 1.0)
    if len(steps) and float(np.ptp(steps)) > 0.01 * spacing_z:
        flags.append("nonuniform_slice_spacing")
    modality = str(getattr(first, "Modality", "")).upper()
    stack = np.empty((len(ordered), *shape), dtype=np.float32)
    unit = "HU" if modality == "CT" else "stored"
    for k, ds in enumerate(ordered):
        values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
        if modality == "PT":
            scale = suv_scale(ds)
            values = values * scale.factor
            unit = "SUV" if scale.is_suv else "stored"
            flags.extend(f for f in scale.flags if f not in flags)
        stack[k] = values
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    direction = np.column_stack([iop[:3], iop[3:], normal])
    image = sitk.GetImageFromArray(stack)
    image.SetSpacing((col_spacing, row_spacing, spacing_z))
    image.SetOrigin(tuple(float(v) for v in first.ImagePositionPatient))
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    refs = [
        ImageRef(
            study_instance_uid=study_uid or str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )
        for ds in ordered
    ]
    return image, refs, unit, flags


def model_grid(oriented: sitk.Image, grid: VolumeGrid) -> sitk.Image:
    """The model's grid in the oriented frame: centred on the series, spacing fitted to its extent unless fixed.

    In-plane the longer physical side fills ``size`` (letterbox, square voxels); along z ``depth`` slices span
    the series. Model voxel centres sit at source continuous index ``c0 + i * m / s`` per axis.
    """
    size_src = np.asarray(oriented.GetSize(), dtype=float)
    spacing_src = np.asarray(oriented.GetSpacing(), dtype=float)
    extent = size_src * spacing_src
    if grid.spacing_mm is not None:
        spacing = np.asarray(grid.spacing_mm, dtype=float)
    elif grid.keep_aspect:
        inplane = max(extent[0], extent[1]) / grid.size
        spacing = np.asarray([inplane, inplane, extent[2] / grid.depth])
    else:
        spacing = extent / np.asarray([grid.size, grid.size, grid.depth], dtype=float)
    counts = np.asarray([grid.size, grid.size, grid.depth], dtype=float)
    pad = (counts * spacing - extent) / (2.0 * spacing_src)  # in source index units, each side
    c0 = -0.5 + spacing / (2.0 * spacing_src) - pad
    reference = sitk.Image([int(c) for c in counts], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(s) for s in spacing))
    reference.SetDirection(oriented.GetDirection())
    reference.SetOrigin(oriented.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in c0)))
    return reference


def cell_blocks(oriented: sitk.Image, reference: sitk.Image, drawn: Sequence[float]) -> tuple[int, int, int]:
    """Per axis (x, y, z), how many source voxels to average into one before the linear resampling, so that a
    series finer than the model's training volumes first comes to their resolution: the model spacing over the
    source spacing, divided by how many times finer than the grid the training volumes were drawn (``drawn``),
    rounded down. The network learnt on those volumes resampled linearly; a thin-slice series sampled directly
    would feed it one point per cell instead, its noise undamped and a small nodule on the grid or not by where
    it falls. A series no finer than the training volumes is left as it is."""
    ratios = np.asarray(reference.GetSpacing(), dtype=float) / np.asarray(oriented.GetSpacing(), dtype=float)
    x, y, z = (max(1, int(r / d + 1e-6)) for r, d in zip(ratios, drawn, strict=True))
    return x, y, z


def block_mean(image: sitk.Image, blocks: Sequence[int]) -> sitk.Image:
    """``image`` with each block of ``blocks`` (x, y, z) voxels replaced by their mean, at the same physical place
    (the far edge padded with copies of its last voxels, so nothing of the series is dropped)."""
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    pad = [-n % k for n, k in zip(image.GetSize(), blocks, strict=True)]
    padded = sitk.ZeroFluxNeumannPad(image, [0, 0, 0], pad) if any(pad) else image
    return sitk.BinShrink(padded, [int(k) for k in blocks])


def load_volume(files: Sequence[Path], grid: VolumeGrid, study_uid: str | None = None) -> Volume:
    """Reads, orders, reorients (LPS) and resamples a CT/PET series onto the model grid (linear interpolation)."""
    source, refs, unit, flags = read_series(files, study_uid)
    return to_model_grid(source, grid, unit, refs, flags)


def to_model_grid(
    source: sitk.Image,
    grid: VolumeGrid,
    unit: str,
    slices: list[ImageRef] | None = None,
    flags: list[str] | None = None,
) -> Volume:
    """A decoded source stack (as :func:`read_series` returns it) reoriented (LPS) and resampled onto the grid."""
    oriented = sitk.DICOMOrient(source, "LPS")
    reference = model_grid(oriented, grid)
    fill = CT_AIR_HU if unit == "HU" else 0.0
    blocks = (1, 1, 1) if grid.drawn is None else cell_blocks(oriented, reference, grid.drawn)
    sampled = source
    if any(k > 1 for k in blocks):
        log.debug("averaging %s source voxels per block before resampling", "x".join(map(str, blocks)))
        sampled = block_mean(oriented, blocks)
    resampled = sitk.Resample(sampled, reference, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(resampled).astype(np.float32)
    volume = Volume(
        values=values,
        unit=unit,
        slices=slices if slices is not None else [],
        source=source,
        model=resampled,
        flags=flags if flags is not None else [],
    )
    if grid.fine is not None:
        finer = finer_grid(reference, grid.fine)
        # the fine grid's own resolution: CT's is the model's training resolution (the same blocks), PET's keeps
        # the acquired slices its model input averages
        fine_blocks = cell_blocks(oriented, reference, grid.fine)
        on_fine = sampled if fine_blocks == blocks else block_mean(oriented, fine_blocks)
        fine = sitk.Resample(on_fine, finer, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
        volume.fine = sitk.GetArrayFromImage(fine).astype(np.float32)
        x, y, z = finer.GetSpacing()
        volume.fine_spacing = (z, y, x)
    return volume


def finer_grid(reference: sitk.Image, factors: Sequence[float]) -> sitk.Image:
    """``reference`` (the model grid) with each voxel split into ``factors`` (x, y, z) voxels: same extent, the
    finer voxels tiling each model voxel."""
    f = np.asarray(factors, dtype=float)
    finer = sitk.Image([round(n * k) for n, k in zip(reference.GetSize(), f, strict=True)], sitk.sitkFloat32)
    finer.SetSpacing(tuple(float(v) for v in np.asarray(reference.GetSpacing(), dtype=float) / f))
    finer.SetDirection(reference.GetDirection())
    finer.SetOrigin(reference.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in -0.5 + 0.5 / f)))
    return finer


def window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of [low, high] to [0, 1], clipped: HU windows for CT, an SUV range for PET."""
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
