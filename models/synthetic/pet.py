"""FDG PET phantom in SUV (body weight): pelvis to head with physiological uptake and hot lesions.

Background uptake (before blur and noise): fat 0.3, muscle / soft tissue 0.7, lungs 0.4, blood pool 1.8,
marrow 1.5, spleen 1.8, liver 2-3, kidneys 3-5, myocardium 2-9 (variable, as in non-fasted patients),
brain 7-10, bladder 15-40. Lesions are spheres with SUVmax 4-15 in the training range. The volume is blurred
(scanner resolution, ~6 mm FWHM) and carries count noise that grows with uptake.

Axes (z, y, x) as for the CT phantom: slice 0 most inferior (pelvis), row 0 anterior, column 0 patient right.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.synthetic.case import Drawn, Lesion, fill_volume_boxes
from models.synthetic.raster import blur, smooth_noise3d

DEFAULT_SIZE = 128
DEFAULT_DEPTH = 96
FOV_MM = 512.0
Z_COVERAGE_MM = 768.0
F18_HALF_LIFE_S = 6586.2

LESION_MM = (10.0, 40.0)
LESION_MM_OOR = ((6.0, 9.0), (45.0, 60.0))
LESION_SUV = (4.0, 15.0)
LESION_SUV_OOR = ((2.5, 3.8), (16.0, 25.0))
BODY_SCALE = (0.92, 1.06)
BODY_SCALE_OOR = ((0.8, 0.86), (1.1, 1.16))
PREVALENCE = 0.6  # probability of at least one lesion

# Heights (fraction of the volume, 0 = pelvis, 1 = vertex).
LUNG_T = (0.52, 0.8)
LIVER_T = (0.4, 0.53)
HEART_T = 0.6


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _band(rng: np.random.Generator, bands: tuple[tuple[float, float], ...]) -> float:
    return _uniform(rng, bands[int(rng.integers(len(bands)))])


class _Body:
    """Coordinates and organ masks of one PET volume."""

    def __init__(self, size: int, depth: int, rng: np.random.Generator, out_of_range: bool) -> None:
        self.size, self.depth, self.rng = size, depth, rng
        self.sp = FOV_MM / size
        self.dz = Z_COVERAGE_MM / depth
        self.scale = _band(rng, BODY_SCALE_OOR) if out_of_range else _uniform(rng, BODY_SCALE)
        c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) * self.sp
        self.x = c[None, None, :]
        self.y = c[None, :, None]
        self.t = ((np.arange(depth, dtype=np.float32) + 0.5) / depth)[:, None, None]
        self.z_mm = self.t * Z_COVERAGE_MM
        s = self.scale
        self.lung_c = {"right": (-70.0 * s, 5.0), "left": (72.0 * s, 5.0)}
        self.lung_ax = (50.0 * s, 78.0 * s)
        self.label_map = np.zeros((depth, size, size), dtype=np.uint8)
        self.lesions: list[Lesion] = []

    def body_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Half-widths (x, y) of the body outline along z: pelvis, abdomen, chest, neck, head."""
        t = self.t[:, 0, 0]
        s = self.scale
        ax = np.interp(t, [0.0, 0.25, 0.5, 0.78, 0.8, 0.86, 0.87, 1.0], [170, 160, 150, 165, 60, 60, 78, 60]) * s
        ay = np.interp(t, [0.0, 0.25, 0.5, 0.78, 0.8, 0.86, 0.87, 1.0], [110, 105, 105, 108, 55, 55, 95, 70]) * s
        return ax[:, None, None], ay[:, None, None]

    def lung(self, side: str) -> np.ndarray:
        lx, ly = self.lung_c[side]
        prof = self.lung_profile(self.t)
        rho2 = ((self.x - lx) / (self.lung_ax[0] * prof)) ** 2 + ((self.y - ly) / (self.lung_ax[1] * prof)) ** 2
        dome = LUNG_T[0] + 0.06 * np.clip(1.0 - ((self.x - lx) / self.lung_ax[0]) ** 2, 0.0, 1.0)
        return (rho2 < 1.0) & (self.t > dome) & (self.t < LUNG_T[1])

    def lung_profile(self, t: np.ndarray) -> np.ndarray:
        return 0.35 + 0.65 * np.sqrt(np.clip((LUNG_T[1] - t) / 0.1, 0.0, 1.0))

    def ellipsoid(self, cx: float, cy: float, t0: float, ax: float, ay: float, at: float) -> np.ndarray:
        """Boolean ellipsoid; evaluated only on the slab of slices it can reach (organs are short in z)."""
        out = np.zeros((self.depth, self.size, self.size), dtype=bool)
        ks = np.flatnonzero(np.abs(self.t[:, 0, 0] - t0) < at)
        if ks.size:
            slab = slice(int(ks[0]), int(ks[-1]) + 1)
            inplane = ((self.x[0] - cx) / ax) ** 2 + ((self.y[0] - cy) / ay) ** 2
            out[slab] = inplane[None] + ((self.t[slab] - t0) / at) ** 2 < 1.0
        return out

    def lobe(self, side: str, t: float, y_mm: float) -> str:
        frac = (t - LUNG_T[0]) / (LUNG_T[1] - LUNG_T[0])
        anterior = y_mm < self.lung_c[side][1]
        if side == "right":
            if frac > 0.62:
                return "right_upper_lobe"
            return "right_middle_lobe" if frac > 0.3 and anterior else "right_lower_lobe"
        return "left_upper_lobe" if frac > 0.5 or (frac > 0.3 and anterior) else "left_lower_lobe"


def _background(body: _Body) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Physiological SUV map and the organ masks lesions are placed in."""
    rng, s = body.rng, body.scale
    x, y, t = body.x, body.y, body.t
    ax, ay = body.body_axes()
    rho = np.sqrt((x / ax) ** 2 + ((y - 5.0) / ay) ** 2)
    suv = np.zeros((body.depth, body.size, body.size), dtype=np.float32)
    inside = rho < 1.0
    suv[inside] = 0.7
    suv[inside & (rho > 0.9) & (t < 0.8)] = 0.3  # subcutaneous fat
    lungs = {side: body.lung(side) for side in ("right", "left")}
    lung_any = lungs["right"] | lungs["left"]
    suv[lung_any] = 0.4
    mediastinum = (((x - 4.0) / (28.0 * s)) ** 2 + ((y + 15.0 * s) / (80.0 * s)) ** 2 < 1.0) & (t > 0.5) & (t < 0.8)
    suv[mediastinum] = 1.8  # blood pool
    heart_outer = body.ellipsoid(22 * s, -22 * s, HEART_T, 58 * s, 48 * s, 0.07)
    heart_inner = body.ellipsoid(22 * s, -22 * s, HEART_T, 40 * s, 32 * s, 0.045)
    suv[heart_outer] = _uniform(rng, (2.0, 9.0))  # myocardium
    suv[heart_inner] = 1.8  # ventricular blood
    for side in lungs:
        lungs[side] &= ~heart_outer & ~mediastinum
    liver = body.ellipsoid(-55 * s, -5 * s, 0.465, 95 * s, 85 * s, 0.07) & inside
    suv[liver] = _uniform(rng, (2.0, 3.0))
    suv[body.ellipsoid(80 * s, 35 * s, 0.45, 35 * s, 45 * s, 0.045)] = 1.8  # spleen
    for kx in (-55 * s, 55 * s):  # kidneys: hot cortex around a cooler hilum
        suv[body.ellipsoid(kx, 45 * s, 0.36, 28 * s, 35 * s, 0.055)] = _uniform(rng, (3.0, 5.0))
        suv[body.ellipsoid(kx, 45 * s, 0.36, 12 * s, 15 * s, 0.03)] = 6.0
    bowel = (t > 0.2) & (t < 0.4) & inside & (rho < 0.75)
    suv[bowel] += 0.6 * smooth_noise3d(rng, suv.shape, (8, 10, 10))[bowel]
    suv[body.ellipsoid(0, -30 * s, 0.085, 50 * s, 40 * s, 0.045)] = _uniform(rng, (15.0, 40.0))  # bladder
    spine = (x**2 + (y - 75 * s) ** 2 < (16 * s) ** 2) & (t > 0.12) & (t < 0.84)
    suv[spine] = 1.5  # marrow
    brain = body.ellipsoid(0, 0, 0.935, 62 * s, 78 * s, 0.06)
    suv[brain] = _uniform(rng, (5.0, 7.0))
    cortex = brain & ~body.ellipsoid(0, 0, 0.935, 50 * s, 64 * s, 0.045)
    suv[cortex] = _uniform(rng, (7.0, 10.0))
    liver_core = body.ellipsoid(-55 * s, -5 * s, 0.465, 75 * s, 65 * s, 0.05) & inside
    return suv, {
        "right": lungs["right"],
        "left": lungs["left"],
        "mediastinum": mediastinum & ~heart_outer,
        "liver": liver_core,
    }


def _bbox(body: _Body, center: tuple[float, float, float], reach: float) -> tuple[slice, slice, slice]:
    """Index box of the voxels within ``reach`` mm of a centre (z, y, x mm)."""
    out = []
    for axis_mm, c in ((body.z_mm[:, 0, 0], center[0]), (body.y[0, :, 0], center[1]), (body.x[0, 0, :], center[2])):
        idx = np.flatnonzero(np.abs(axis_mm - c) <= reach)
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return out[0], out[1], out[2]


def _dist(body: _Body, box: tuple[slice, slice, slice], center: tuple[float, float, float]) -> np.ndarray:
    zc, yc, xc = center
    dz = body.z_mm[box[0], :, :] - zc
    dy = body.y[:, box[1], :] - yc
    dx = body.x[:, :, box[2]] - xc
    return np.sqrt(dz * dz + dy * dy + dx * dx)


def _place_lesion(body: _Body, organs: dict[str, np.ndarray], diameter: float, suv_max: float) -> Lesion | None:
    rng = body.rng
    r = diameter / 2.0
    where = ("right", "left", "right", "left", "mediastinum", "liver")
    for _ in range(40):
        organ = where[int(rng.integers(len(where)))]
        region = organs[organ] & (body.label_map == 0)
        idx = np.flatnonzero(region)
        if idx.size == 0:
            continue
        k, i, j = np.unravel_index(int(idx[int(rng.integers(idx.size))]), region.shape)
        zc, yc, xc = float(body.z_mm[k, 0, 0]), float(body.y[0, i, 0]), float(body.x[0, 0, j])
        box = _bbox(body, (zc, yc, xc), r * 1.2 + body.sp)
        dist_box = _dist(body, box, (zc, yc, xc))
        mask = np.zeros(region.shape, dtype=bool)
        mask[box] = dist_box <= r
        if not mask.any() or not region[mask].all():
            continue
        zs, ys, _ = np.nonzero(mask)
        if organ in ("right", "left"):
            location = body.lobe(organ, float((zs.mean() + 0.5) / body.depth), float(body.y[0, round(ys.mean()), 0]))
            laterality: str | None = organ
        else:
            location, laterality = organ, None
        lesion = Lesion(
            "hypermetabolic_lesion",
            location,
            laterality,
            round(diameter, 1),
            attrs={"suv_target": round(suv_max, 1), "center_vox": (int(k), int(i), int(j))},
        )
        fill_volume_boxes(lesion, mask, True)
        body.lesions.append(lesion)
        body.label_map[mask] = len(body.lesions)
        lesion.attrs["_box"] = box
        lesion.attrs["_dist"] = dist_box
        return lesion
    return None


def render(rng: np.random.Generator, size: int, depth: int, out_of_range: bool, patient: dict[str, Any]) -> Drawn:
    """Draw one FDG PET volume in SUV; returns image (float32), spacing, mask, lesions, meta."""
    body = _Body(size, depth, rng, out_of_range)
    suv, organs = _background(body)
    if rng.random() < PREVALENCE:
        for _ in range(int(rng.choice([1, 1, 2, 2, 3, 4]))):
            diameter = _band(rng, LESION_MM_OOR) if out_of_range else _uniform(rng, LESION_MM)
            peak = _band(rng, LESION_SUV_OOR) if out_of_range else _uniform(rng, LESION_SUV)
            _place_lesion(body, organs, diameter, peak)
    # Scanner resolution blurs the physiological background; lesions are drawn after it with their own soft
    # rim so that the SUVmax stays in the stated range (no partial-volume loss for small lesions).
    suv = blur(suv, passes=2, axes=(1, 2))
    suv = blur(suv, passes=1, axes=(0,))
    for lesion in body.lesions:
        box, dist = lesion.attrs.pop("_box"), lesion.attrs.pop("_dist")
        r = 0.5 * float(lesion.size_mm or 1.0)
        peak = float(lesion.attrs["suv_target"])
        inner = peak * (1.0 - 0.5 * (np.minimum(dist, r) / r) ** 2)
        rim = 0.5 * peak * np.exp(-(((dist - r) / 3.0) ** 2))
        profile = np.where(dist <= r, inner, rim)
        suv[box] = np.maximum(suv[box], profile)
    noise = rng.standard_normal(suv.shape, dtype=np.float32) * np.float32(0.1) * np.sqrt(np.maximum(suv, 0.0))
    suv = np.maximum(suv + blur(noise, passes=1, axes=(1, 2)), 0.0).astype(np.float32)
    for i, lesion in enumerate(body.lesions):
        lesion.attrs["suv_max"] = round(float(suv[body.label_map == i + 1].max()), 1)
    weight = float(patient["weight_kg"])
    dose = round(3.7e6 * weight * float(rng.uniform(0.9, 1.1)), -5)  # ~3.7 MBq/kg
    return Drawn(
        image=suv,
        spacing=(body.dz, body.sp, body.sp),
        mask=body.label_map,
        lesions=body.lesions,
        meta={
            "body_scale": round(body.scale, 3),
            "injected_dose_bq": dose,
            "injection_delay_s": int(rng.integers(3300, 4200)),
            "half_life_s": F18_HALF_LIFE_S,
            "radiopharmaceutical": "Fluorodeoxyglucose F^18^",
            "z_coverage_mm": Z_COVERAGE_MM,
        },
    )
