"""Where a finding lies: side and lobe from its position on the canonical grid (no location head in the model).

Radiographs: image left = patient right; lung zones are thirds of the lung field's height (right: upper /
middle / lower zone → upper / middle / lower lobe; left: upper two thirds → upper lobe incl. lingula, lower third
→ lower lobe), the radiographic convention the project's phantoms follow. The lung field's vertical extent is
a manifest setting (``inputs.cxr.lung_field``, fractions of the image height), defaulting to the phantoms' PA
geometry.

CT: the lungs are segmented on the HU grid (air inside the body), per side; a lesion's height within its lung
(0 = base, 1 = apex) and whether it lies anterior to the lung's centre give the lobe (right: upper above 0.62,
middle anterior between 0.3 and 0.62, else lower; left: upper above 0.5 or anterior above 0.3, else lower).
These are approximations of the fissures; they are rules, not anatomy, and the docs say so.

PET (:class:`PetOrganMap`, on the SUV grid): rules on uptake, not anatomy, set and measured on the project's
FDG phantoms (``tests/runtime/test_pet_locate.py``). Body = SUV above 0.15 (in-plane smoothed; holes filled per
slice). Lungs = low uptake (SUV below 0.55) inside the body less its outer 16 mm (the subcutaneous fat ring
is low uptake too), the large connected regions only, split into sides at the body's midline; each lung
is its convex hull per slice, so a hot lesion in a lung (a hot hole or notch in the low-uptake region) stays
inside it. Lobe by the CT rule above (which is also the phantoms' rule), the height running from half a slice
below the lowest slice showing that lung (the bases are domes the first slice only grazes) to the highest one,
anterior = in front of the middle of the lung's front-to-back extent. Mediastinum = the body medial to both
lungs on the slices showing both, continued 25 mm below them. Liver = the largest hot region (SUV above 1.6)
centred on the patient's right within 200 mm below the right lung. A point in none of these takes the nearest
within 30 mm; farther away only its side is given. A series without SUV (no weight or dose) gets sides only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

DEFAULT_LUNG_FIELD = (0.12, 0.77)  # apex and base, fractions of the radiograph height (PA, phantoms)
LUNG_HU = -400.0
BODY_HU = -500.0
PET_BODY_SUV = 0.15
PET_LUNG_SUV = 0.55
PET_LIVER_SUV = 1.6
PET_WALL_MM = 16.0  # the body's rim left out of the lung search (subcutaneous fat is low uptake too)
PET_MIN_LUNG_FRACTION = 0.1  # low-uptake regions smaller than this fraction of the largest are not lung
PET_LIVER_SPAN_MM = 200.0
PET_NEAR_MM = 30.0
PET_LUNG_BASE_OFFSET = 0.5  # slices: the lung base lies below the lowest slice showing lung (its domes)
PET_MEDIASTINUM_BELOW_MM = 25.0


def side_of(x_fraction: float, midline: float = 0.5) -> str:
    """Canonical orientation: the image's left half is the patient's right."""
    return "right" if x_fraction < midline else "left"


def lobe(side: str, height: float, anterior: bool | None = None) -> str:
    """Lobe from the height within the lung (0 base … 1 apex) and, for CT, the anterior half."""
    if anterior is None:  # radiograph: zones by thirds
        if side == "right":
            return (
                "right_upper_lobe" if height > 2 / 3 else "right_middle_lobe" if height > 1 / 3 else "right_lower_lobe"
            )
        return "left_upper_lobe" if height > 1 / 3 else "left_lower_lobe"
    if side == "right":
        if height > 0.62:
            return "right_upper_lobe"
        return "right_middle_lobe" if height > 0.3 and anterior else "right_lower_lobe"
    return "left_upper_lobe" if height > 0.5 or (height > 0.3 and anterior) else "left_lower_lobe"


def cxr_location(
    x_fraction: float, y_fraction: float, lung_field: tuple[float, float] = DEFAULT_LUNG_FIELD
) -> tuple[str, str]:
    """(lobe key, side) of a point given as fractions of the canonical radiograph's width and height."""
    side = side_of(x_fraction)
    top, base = lung_field
    height = 1.0 - float(np.clip((y_fraction - top) / (base - top), 0.0, 1.0))
    return lobe(side, height), side


@dataclass
class LungMap:
    """Lung segmentation of a CT on the model grid (canonical LPS: z up, rows posterior, columns patient left)."""

    lungs: np.ndarray  # bool (D, H, W)
    midline: float  # column of the body's centre

    @classmethod
    def from_hu(cls, hu: np.ndarray) -> LungMap:
        body = hu > BODY_HU
        cols = np.flatnonzero(body.any(axis=(0, 1)))
        midline = float(cols.mean()) if cols.size else hu.shape[2] / 2.0
        air = sitk.GetImageFromArray((hu < LUNG_HU).astype(np.uint8))
        labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(air))
        outside = set(
            np.unique(
                np.concatenate(
                    [
                        labels[:, 0, :].ravel(),
                        labels[:, -1, :].ravel(),
                        labels[:, :, 0].ravel(),
                        labels[:, :, -1].ravel(),
                    ]
                )
            )
        )
        lungs = (labels > 0) & ~np.isin(labels, list(outside))
        return cls(lungs=lungs, midline=midline)

    def location(self, z: float, y: float, x: float) -> tuple[str | None, str]:
        """(lobe key or None when no lung is found on that side, side) of a model-grid point (index units)."""
        side = "right" if x < self.midline else "left"
        columns = np.arange(self.lungs.shape[2])
        half = columns < self.midline if side == "right" else columns >= self.midline
        lung = self.lungs[:, :, half]
        zs = np.flatnonzero(lung.any(axis=(1, 2)))
        if zs.size < 2:
            return None, side
        height = float(np.clip((z - zs[0]) / (zs[-1] - zs[0]), 0.0, 1.0))
        rows = np.nonzero(lung)[1]
        anterior = y < float(rows.mean())
        return lobe(side, height, anterior), side


def _smooth_inplane(values: np.ndarray) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 smoothing along rows and columns (edge-replicated): count noise off the masks."""
    out = np.asarray(values, dtype=np.float64)
    for axis in (1, 2):
        padded = np.concatenate([np.take(out, [0], axis), out, np.take(out, [-1], axis)], axis=axis)
        n = out.shape[axis]
        out = 0.25 * np.take(padded, range(n), axis) + 0.5 * out + 0.25 * np.take(padded, range(2, n + 2), axis)
    return out


def _per_slice(mask: np.ndarray, op: Callable[[sitk.Image], sitk.Image]) -> np.ndarray:
    """A 2D binary operation applied to each axial slice of a 3D mask."""
    out = np.zeros_like(mask, dtype=bool)
    for k in range(mask.shape[0]):
        if mask[k].any():
            out[k] = sitk.GetArrayFromImage(op(sitk.GetImageFromArray(mask[k].astype(np.uint8)))) > 0
    return out


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a 2D mask's pixel centres, rasterised (monotone chain; the mask itself is kept)."""
    points = sorted({(int(r), int(c)) for r, c in np.argwhere(mask)})
    if len(points) < 3:
        return mask.copy()

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    upper: list[tuple[int, int]] = []
    for chain, seq in ((lower, points), (upper, points[::-1])):
        for p in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
    hull = lower[:-1] + upper[:-1]
    if len(hull) < 3:
        return mask.copy()
    rows, cols = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    inside = np.ones(mask.shape, dtype=bool)
    for (r0, c0), (r1, c1) in zip(hull, hull[1:] + hull[:1], strict=True):
        inside &= (r1 - r0) * (cols - c0) - (c1 - c0) * (rows - r0) >= -1e-9
    return inside | mask


def _largest_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """The union of the 3D components (face-connected) at least ``min_fraction`` of the largest one's size."""
    if not mask.any():
        return mask.copy()
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    keep = np.flatnonzero(counts >= max(1, min_fraction * counts.max()))
    return np.isin(labels, keep)


@dataclass
class PetOrganMap:
    """Rule-based organ map of an FDG PET on the model grid (canonical LPS: z up, rows posterior, columns left).

    ``organs`` holds boolean masks keyed ``right`` and ``left`` (lungs), ``mediastinum`` and ``liver``.
    """

    organs: dict[str, np.ndarray]
    midline: float  # column of the body's centre
    spacing: tuple[float, float, float]  # (z, row, column) mm, for distances
    lung_extent: dict[str, tuple[float, float, float]]  # side → (base slice, apex slice, middle row)

    @classmethod
    def from_suv(cls, suv: np.ndarray, spacing: tuple[float, float, float]) -> PetOrganMap:
        """Organ map from SUV values (D, H, W); ``spacing`` (z, row, column) in mm."""
        smooth = _smooth_inplane(suv)
        body = _per_slice(smooth > PET_BODY_SUV, sitk.BinaryFillhole)
        cols = np.flatnonzero(body.any(axis=(0, 1)))
        midline = float(cols.mean()) if cols.size else suv.shape[2] / 2.0
        wall = [max(1, round(PET_WALL_MM / max(d, 1e-6))) for d in (spacing[2], spacing[1])]  # (x, y) pixels
        inner = _per_slice(body, lambda image: sitk.BinaryErode(image, wall, sitk.sitkBall, 0, 1))
        low = _largest_components((smooth < PET_LUNG_SUV) & inner, PET_MIN_LUNG_FRACTION)
        columns = np.arange(suv.shape[2])
        organs: dict[str, np.ndarray] = {}
        extent: dict[str, tuple[float, float, float]] = {}
        for side, half in (("right", columns < midline), ("left", columns >= midline)):
            lung = np.zeros_like(low)
            part = low & half[None, None, :]
            for k in np.flatnonzero(part.any(axis=(1, 2))):
                lung[k] = _convex_fill(part[k]) & half[None, :]
            organs[side] = lung
            zs = np.flatnonzero(lung.any(axis=(1, 2)))
            if zs.size:
                rows = np.flatnonzero(lung.any(axis=(0, 2)))
                middle_row = (float(rows[0]) + float(rows[-1])) / 2.0
                extent[side] = (float(zs[0]) - PET_LUNG_BASE_OFFSET, float(zs[-1]), middle_row)
        organs["mediastinum"] = cls._mediastinum(body, organs["right"], organs["left"], spacing[0])
        organs["liver"] = cls._liver(smooth, body, organs["right"], midline, spacing[0]) & ~organs["mediastinum"]
        return cls(organs=organs, midline=midline, spacing=spacing, lung_extent=extent)

    @staticmethod
    def _mediastinum(body: np.ndarray, right: np.ndarray, left: np.ndarray, dz: float) -> np.ndarray:
        """Body medial to both lungs on the slices showing both, continued ``PET_MEDIASTINUM_BELOW_MM`` lower."""
        out = np.zeros_like(body)
        columns = np.arange(body.shape[2])
        both = np.flatnonzero(right.any(axis=(1, 2)) & left.any(axis=(1, 2)))
        if not both.size:
            return out
        below = round(PET_MEDIASTINUM_BELOW_MM / max(dz, 1e-6))
        for k in range(max(0, int(both[0]) - below), int(both[-1]) + 1):
            edges = int(max(k, both[0]))  # below the lungs: the medial edges of the lowest slice showing both
            if edges not in both:
                continue
            medial_right = np.flatnonzero(right[edges].any(axis=0))[-1]
            medial_left = np.flatnonzero(left[edges].any(axis=0))[0]
            between = (columns > medial_right) & (columns < medial_left)
            out[k] = body[k] & between[None, :] & ~right[k] & ~left[k]
        return out

    @staticmethod
    def _liver(smooth: np.ndarray, body: np.ndarray, right_lung: np.ndarray, midline: float, dz: float) -> np.ndarray:
        out = np.zeros_like(body)
        zs = np.flatnonzero(right_lung.any(axis=(1, 2)))
        if not zs.size:
            return out
        base = int(zs[0])
        first = max(0, base - int(np.ceil(PET_LIVER_SPAN_MM / max(dz, 1e-6))))
        hot = (smooth[first:base] > PET_LIVER_SUV) & body[first:base]
        if not hot.any():
            return out
        labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(hot.astype(np.uint8))))
        best, best_count = 0, 0
        for label in range(1, int(labels.max()) + 1):
            where = np.nonzero(labels == label)
            if where[0].size > best_count and float(where[2].mean()) < midline:
                best, best_count = label, where[0].size
        if best:
            out[first:base] = labels == best
        return out

    def location(self, z: float, y: float, x: float) -> tuple[str | None, str | None]:
        """(location key, laterality) of a model-grid point (index units).

        In a lung: (lobe, side); mediastinum or liver: (organ, None); near none of them: (None, side).
        """
        side = "right" if x < self.midline else "left"
        point = np.asarray([z, y, x], dtype=float)
        index = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(point, self.organs["right"].shape, strict=True))
        organ = next((key for key, mask in self.organs.items() if mask[index]), None)
        if organ is None:
            best = PET_NEAR_MM
            scale = np.asarray(self.spacing, dtype=float)
            for key, mask in self.organs.items():
                coords = np.argwhere(mask)
                if coords.size:
                    distance = float(np.sqrt((((coords - point) * scale) ** 2).sum(axis=1)).min())
                    if distance <= best:
                        organ, best = key, distance
        if organ is None:
            return None, side
        if organ in ("mediastinum", "liver"):
            return organ, None
        low, high, middle_row = self.lung_extent[organ]
        height = float(np.clip((z - low) / max(high - low, 1e-6), 0.0, 1.0))
        return lobe(organ, height, y < middle_row), organ
