"""Chest CT phantom in Hounsfield units: body wall and fat, lungs with vessels, heart and great vessels, airways,
spine and ribs, liver and stomach under the diaphragm; lesions: nodules, masses, consolidation with air
bronchograms, pleural effusion.

Calibration (before noise): air -1000, lung parenchyma about -850, fat -100, soft tissue / blood 40, liver 55,
fluid 10, cortical bone 700 (cancellous 250). Axes (z, y, x): slice 0 is the most inferior; row 0 anterior;
column 0 patient right. Anatomy is analytic in millimetres so any in-plane size or depth gives the same patient.
"""

from __future__ import annotations

import math

import numpy as np

from models.synthetic.case import Drawn, Lesion, fill_volume_boxes
from models.synthetic.raster import smooth_noise3d

DEFAULT_SIZE = 128
DEFAULT_DEPTH = 64
FOV_MM = 350.0
Z_COVERAGE_MM = 320.0  # upper abdomen to thoracic inlet; slice spacing = coverage / depth

HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_LIVER, HU_FLUID, HU_BONE, HU_CANCELLOUS = -1000, -850, -100, 40, 55, 10, 700, 250

NODULE_MM = (6.0, 30.0)
NODULE_MM_OOR = (3.0, 5.5)
MASS_MM = (32.0, 65.0)
MASS_MM_OOR = (70.0, 85.0)
CONSOLIDATION_MM = (35.0, 80.0)
CONSOLIDATION_MM_OOR = (85.0, 110.0)
EFFUSION_MM = (10.0, 45.0)  # largest thickness
EFFUSION_MM_OOR = (50.0, 70.0)
BODY_SCALE = (0.92, 1.06)
BODY_SCALE_OOR = ((0.8, 0.86), (1.1, 1.16))
BRONCHOGRAMS = (4, 7)  # air-filled bronchi drawn through a consolidation
BRONCHUS_RADIUS_MM = (2.0, 3.0)  # at the hilar side; tapering to 60 % at the far side
PREVALENCE = {"nodule": 0.4, "mass": 0.15, "consolidation": 0.2, "pleural_effusion": 0.22}

LUNG_T = (0.12, 0.95)  # lungs span this fraction of the volume (base recesses to apex)
LESION_T = (0.3, 0.85)  # heights of focal lesion centres in the training range
LESION_T_OOR = ((0.86, 0.92), (0.2, 0.29))  # out-of-range nodules: lung apex or base


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


class _Volume:
    """Coordinates and anatomy masks of one CT volume."""

    def __init__(self, size: int, depth: int, rng: np.random.Generator, out_of_range: bool) -> None:
        self.size, self.depth, self.rng, self.oor = size, depth, rng, out_of_range
        self.sp = FOV_MM / size
        self.dz = Z_COVERAGE_MM / depth
        if out_of_range:
            self.scale = _uniform(rng, BODY_SCALE_OOR[int(rng.integers(2))])
        else:
            self.scale = _uniform(rng, BODY_SCALE)
        c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) * self.sp
        self.x = c[None, None, :]  # mm, + = patient left
        self.y = c[None, :, None]  # mm, + = posterior
        self.t = ((np.arange(depth, dtype=np.float32) + 0.5) / depth)[:, None, None]  # 0 inferior .. 1 superior
        self.z_mm = self.t * Z_COVERAGE_MM
        s = self.scale
        self.lung_c = {"right": (-72.0 * s, 5.0), "left": (74.0 * s, 5.0)}
        self.lung_ax = (52.0 * s, 82.0 * s)
        self.label_map = np.zeros((depth, size, size), dtype=np.uint8)
        self.lesions: list[Lesion] = []
        self.cover: dict[int, np.ndarray] = {}  # lesion index -> partial-volume share of each voxel (round lesions)
        self._build()

    def lung_profile(self, t: np.ndarray) -> np.ndarray:
        """In-plane scale of the lungs along z: narrowing towards the apex."""
        return 0.35 + 0.65 * np.sqrt(np.clip((LUNG_T[1] - t) / 0.3, 0.0, 1.0))

    def dome(self, side: str, rho2: np.ndarray) -> np.ndarray:
        """Height (t) of the diaphragm under a lung: highest centrally, lowest in the posterior recesses."""
        top = 0.33 if side == "right" else 0.3
        return LUNG_T[0] + (top - LUNG_T[0]) * np.clip(1.0 - rho2, 0.0, 1.0)

    def _build(self) -> None:
        s = self.scale
        x, y, t = self.x, self.y, self.t
        ax, ay = 160.0 * s, 108.0 * s
        rho_body = np.sqrt((x / ax) ** 2 + ((y - 8.0) / ay) ** 2)
        self.body = np.broadcast_to(rho_body < 1.0, (self.depth, self.size, self.size))
        self.rho_body = rho_body
        fat_mm = _uniform(self.rng, (6.0, 13.0))
        self.subcut = (rho_body > 1.0 - fat_mm / ay) & (rho_body < 1.0)
        self.lung: dict[str, np.ndarray] = {}
        self.below_dome: dict[str, np.ndarray] = {}
        prof = self.lung_profile(t)
        for side, (lx, ly) in self.lung_c.items():
            rho2 = ((x - lx) / (self.lung_ax[0] * prof)) ** 2 + ((y - ly) / (self.lung_ax[1] * prof)) ** 2
            dome = self.dome(side, ((x - lx) / self.lung_ax[0]) ** 2 + ((y - ly - 10.0) / self.lung_ax[1]) ** 2)
            inside = (rho2 < 1.0) & (t > dome) & (t < LUNG_T[1])
            self.lung[side] = inside
            self.below_dome[side] = t <= dome
        # Heart (ellipsoid, anterior and to the patient's left) cuts into the lungs.
        hz = (t - 0.36) / 0.17
        self.heart = ((x - 22.0 * s) / (62.0 * s)) ** 2 + ((y + 22.0 * s) / (50.0 * s)) ** 2 + hz**2 < 1.0
        fat = ((x - 22.0 * s) / (67.0 * s)) ** 2 + ((y + 22.0 * s) / (55.0 * s)) ** 2 + hz**2 < 1.0
        self.heart_fat = fat & ~self.heart
        mediastinum = self.mediastinum2d()[None]
        for side in self.lung:
            self.lung[side] &= ~(self.heart | self.heart_fat) & ~mediastinum

    def mediastinum2d(self) -> np.ndarray:
        s = self.scale
        return ((self.x[0] - 4.0) / (30.0 * s)) ** 2 + ((self.y[0] + 18.0 * s) / (82.0 * s)) ** 2 < 1.0

    def lobe(self, side: str, t: float, y_mm: float) -> str:
        frac = (t - LUNG_T[0]) / (LUNG_T[1] - LUNG_T[0])
        anterior = y_mm < self.lung_c[side][1]
        if side == "right":
            if frac > 0.62:
                return "right_upper_lobe"
            return "right_middle_lobe" if frac > 0.3 and anterior else "right_lower_lobe"
        return "left_upper_lobe" if frac > 0.5 or (frac > 0.3 and anterior) else "left_lower_lobe"

    def free_lung(self, side: str) -> np.ndarray:
        return self.lung[side] & (self.label_map == 0)

    def add(self, lesion: Lesion, mask: np.ndarray, focal: bool, cover: np.ndarray | None = None) -> None:
        """Records a placed lesion; ``cover``: its partial-volume share of each voxel (round lesions)."""
        fill_volume_boxes(lesion, mask, focal)
        if cover is not None:
            self.cover[len(self.lesions)] = cover
        self.lesions.append(lesion)
        self.label_map[mask] = len(self.lesions)


def _krange(vol: _Volume, t0: float, t1: float) -> slice:
    """Slices whose centre height t lies in [t0, t1]."""
    ts = vol.t[:, 0, 0]
    ks = np.flatnonzero((ts >= t0) & (ts <= t1))
    return slice(int(ks[0]), int(ks[-1]) + 1) if ks.size else slice(0, 0)


def _paint(hu: np.ndarray, vol: _Volume, mask2d: np.ndarray, t0: float, t1: float, value: float) -> None:
    """Set an in-plane region to a value over a range of heights (fast: one 2D mask, a slab of slices)."""
    hu[_krange(vol, t0, t1), mask2d] = value


def _tube(hu: np.ndarray, vol: _Volume, cx: float, cy: float, r: float, t0: float, t1: float, value: float) -> None:
    """A vertical cylinder of tissue (vessel, airway) between heights t0 and t1."""
    _paint(hu, vol, ((vol.x - cx) ** 2 + (vol.y - cy) ** 2 < r * r)[0], t0, t1, value)


PARTIAL_VOLUME_SPLIT = 4  # sub-samples per voxel along each axis where a round lesion's share is counted


def _sphere_box(vol: _Volume, center: tuple[float, float, float], reach: float) -> tuple[np.ndarray, ...] | None:
    """Indices (z, y, x) of the voxels whose centres lie within ``reach`` mm of ``center`` along every axis."""
    zc, yc, xc = center
    zi = np.flatnonzero(np.abs(vol.z_mm[:, 0, 0] - zc) <= reach)
    yi = np.flatnonzero(np.abs(vol.y[0, :, 0] - yc) <= reach)
    xi = np.flatnonzero(np.abs(vol.x[0, 0, :] - xc) <= reach)
    return None if zi.size == 0 or yi.size == 0 or xi.size == 0 else (zi, yi, xi)


def _sphere_mask(vol: _Volume, center: tuple[float, float, float], radius_fn: object, r_max: float) -> np.ndarray:
    """Boolean mask of a (possibly lobulated) sphere: the voxels whose centre lies inside it; center (z_mm, y_mm,
    x_mm); computed inside its bbox."""
    zc, yc, xc = center
    mask = np.zeros(vol.label_map.shape, dtype=bool)
    box = _sphere_box(vol, center, r_max)
    if box is None:
        return mask
    zi, yi, xi = box
    dz = vol.z_mm[zi, 0, 0][:, None, None] - zc
    dy = vol.y[0, yi, 0][None, :, None] - yc
    dx = vol.x[0, 0, xi][None, None, :] - xc
    dist = np.sqrt(dz * dz + dy * dy + dx * dx)
    radius = radius_fn(dz, dy, dx, dist)  # type: ignore[operator]
    mask[zi[0] : zi[-1] + 1, yi[0] : yi[-1] + 1, xi[0] : xi[-1] + 1] = dist <= radius
    return mask


def _sphere_cover(vol: _Volume, center: tuple[float, float, float], radius_fn: object, r_max: float) -> np.ndarray:
    """Share of each voxel inside the same sphere, float32 in [0, 1], from ``PARTIAL_VOLUME_SPLIT``³ sub-samples
    per voxel. A scanner integrates over the voxel, so an edge voxel reads between lung and lesion; drawn hard-edged
    (inside or not by its centre) a sphere keeps no trace of where its edge falls within the voxel, and no reader
    can then state a 6 mm nodule to the mm on 2.7 x 2.7 x 5 mm voxels."""
    zc, yc, xc = center
    cover = np.zeros(vol.label_map.shape, dtype=np.float32)
    box = _sphere_box(vol, center, r_max + max(vol.dz, vol.sp))
    if box is None:
        return cover
    zi, yi, xi = box
    n = PARTIAL_VOLUME_SPLIT
    sub = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5  # sub-sample offsets, in voxels

    def offsets(centres: np.ndarray, step: float, at: float) -> np.ndarray:
        return ((centres[:, None] + sub[None, :] * step) - at).reshape(-1)

    dz = offsets(vol.z_mm[zi, 0, 0], vol.dz, zc)[:, None, None]
    dy = offsets(vol.y[0, yi, 0], vol.sp, yc)[None, :, None]
    dx = offsets(vol.x[0, 0, xi], vol.sp, xc)[None, None, :]
    dist = np.sqrt(dz * dz + dy * dy + dx * dx)
    inside = (dist <= radius_fn(dz, dy, dx, dist)).astype(np.float32)  # type: ignore[operator]
    share = inside.reshape(zi.size, n, yi.size, n, xi.size, n).mean(axis=(1, 3, 5))
    cover[zi[0] : zi[-1] + 1, yi[0] : yi[-1] + 1, xi[0] : xi[-1] + 1] = share
    return cover


def _place_sphere(
    vol: _Volume, label: str, diameter: float, lobulated: bool
) -> tuple[Lesion, np.ndarray, np.ndarray] | None:
    """A nodule or mass in free lung: (lesion, mask, partial-volume cover), or None where none fits."""
    rng = vol.rng
    r = diameter / 2.0
    phases = rng.uniform(0, 2 * math.pi, 3)

    def radius_fn(dz: np.ndarray, dy: np.ndarray, dx: np.ndarray, dist: np.ndarray) -> np.ndarray:
        if not lobulated:
            return np.full_like(dist, r)
        theta = np.arctan2(dy, dx)
        phi = np.arctan2(dz, np.sqrt(dx * dx + dy * dy))
        return r * (1 + 0.1 * np.sin(3 * theta + phases[0]) + 0.07 * np.sin(4 * phi + phases[1]))

    for _ in range(40):
        side = "right" if rng.random() < 0.5 else "left"
        lx, ly = vol.lung_c[side]
        if vol.oor and label == "nodule":
            t = _uniform(rng, LESION_T_OOR[int(rng.integers(2))])
        else:
            t = _uniform(rng, LESION_T)
        prof = float(vol.lung_profile(np.array(t, dtype=np.float32)))
        xc = lx + float(rng.uniform(-0.8, 0.8)) * vol.lung_ax[0] * prof
        yc = ly + float(rng.uniform(-0.8, 0.8)) * vol.lung_ax[1] * prof
        zc = t * Z_COVERAGE_MM
        mask = _sphere_mask(vol, (zc, yc, xc), radius_fn, r * 1.2 + 1.0)
        if not mask.any() or not vol.free_lung(side)[mask].all():
            continue
        zs, ys, _ = np.nonzero(mask)
        t_c = float((zs.mean() + 0.5) / vol.depth)
        y_c = float(vol.y[0, round(ys.mean()), 0])
        hu = _uniform(rng, (20.0, 60.0)) if label == "nodule" else _uniform(rng, (30.0, 50.0))
        lesion = Lesion(
            label,
            vol.lobe(side, t_c, y_c),
            side,
            round(diameter, 1),
            attrs={"hu": round(hu), "center_vox": (round(zc / vol.dz - 0.5, 2), *_vox_xy(vol, yc, xc))},
        )
        return lesion, mask, _sphere_cover(vol, (zc, yc, xc), radius_fn, r * 1.2 + 1.0)
    return None


def _vox_xy(vol: _Volume, y_mm: float, x_mm: float) -> tuple[float, float]:
    return (round(y_mm / vol.sp + vol.size / 2 - 0.5, 2), round(x_mm / vol.sp + vol.size / 2 - 0.5, 2))


def _place_consolidation(vol: _Volume, extent: float) -> tuple[Lesion, np.ndarray] | None:
    rng = vol.rng
    noise = smooth_noise3d(rng, vol.label_map.shape, (max(4, vol.depth // 6), 12, 12))
    for _ in range(30):
        side = "right" if rng.random() < 0.5 else "left"
        lx, ly = vol.lung_c[side]
        t = _uniform(rng, (0.25, 0.8))
        prof = float(vol.lung_profile(np.array(t, dtype=np.float32)))
        xc = lx + float(rng.uniform(-0.5, 0.5)) * vol.lung_ax[0] * prof
        yc = ly + float(rng.uniform(-0.5, 0.6)) * vol.lung_ax[1] * prof
        zc = t * Z_COVERAGE_MM
        rr = extent / 2
        e = ((vol.x - xc) / rr) ** 2 + ((vol.y - yc) / (rr * 0.9)) ** 2 + ((vol.z_mm - zc) / (rr * 0.8)) ** 2
        mask = ((1.0 - e + 0.8 * (noise - 0.5)) > 0.2) & vol.free_lung(side)
        if mask.sum() * vol.sp * vol.sp * vol.dz < 0.2 * (4 / 3) * math.pi * rr**3:
            continue
        zs, ys, xs = np.nonzero(mask)
        ext = max((np.ptp(xs) + 1) * vol.sp, (np.ptp(ys) + 1) * vol.sp, (np.ptp(zs) + 1) * vol.dz)
        t_c = float((zs.mean() + 0.5) / vol.depth)
        y_c = float(vol.y[0, round(ys.mean()), 0])
        lesion = Lesion("consolidation", vol.lobe(side, t_c, y_c), side, round(float(ext), 1), attrs={"hu": 25})
        return lesion, mask
    return None


def _air_bronchograms(hu: np.ndarray, vol: _Volume, region: np.ndarray) -> None:
    """Air bronchograms: bronchi that stay open through consolidated lung, drawn as air-filled tubes that enter the
    consolidation on its hilar side and fan out towards the periphery, inside it and short of its outline. On CT
    they are what tells consolidation (airspaces filled, airways open) from a solid mass; without them the
    phantom's consolidation was a soft-tissue blob of nearly a mass's density (about 45 HU lower: 0.03 of the
    model's CT window)."""
    rng = vol.rng
    zs, ys, xs = np.nonzero(region)
    box = (slice(zs.min(), zs.max() + 1), slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    zz = vol.z_mm[box[0], 0, 0][:, None, None]
    yy = vol.y[0, box[1], 0][None, :, None]
    xx = vol.x[0, 0, box[2]][None, None, :]
    sub = region[box]
    centre = np.array([float(vol.z_mm[zs, 0, 0].mean()), float(vol.y[0, ys, 0].mean()), float(vol.x[0, 0, xs].mean())])
    lx, ly = vol.lung_c["right" if centre[2] < 0 else "left"]
    hilum = np.array([0.55 * Z_COVERAGE_MM, ly - 10.0 * vol.scale, lx * 0.45])
    axis = (centre - hilum) / max(float(np.linalg.norm(centre - hilum)), 1e-6)
    coords = np.stack(np.broadcast_arrays(zz, yy, xx), axis=-1)[sub]  # (n, 3) mm of the region's voxels
    reach = float(np.abs((coords - centre) @ axis).max())
    start = centre - axis * reach
    air = np.zeros(coords.shape[0], dtype=bool)
    for _ in range(int(rng.integers(BRONCHOGRAMS[0], BRONCHOGRAMS[1] + 1))):
        direction = axis + rng.normal(0.0, 0.45, 3)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        seg = direction * 2.0 * reach
        along = np.clip((coords - start) @ seg / float(seg @ seg), 0.0, 1.0)
        dist = np.linalg.norm(coords - start - along[:, None] * seg, axis=1)
        air |= dist < _uniform(rng, BRONCHUS_RADIUS_MM) * (1.0 - 0.4 * along)
    inner = _eroded(sub)[sub]  # the consolidation's own outline stays solid
    inside = hu[box]  # a view: writing it writes ``hu``
    values = inside[sub]
    values[air & inner] = rng.uniform(-950.0, -850.0, int((air & inner).sum()))
    inside[sub] = values


def _eroded(mask: np.ndarray) -> np.ndarray:
    """``mask`` less its in-plane border voxels (4-neighbourhood)."""
    out = mask.copy()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, 0, :] = out[:, -1, :] = False
    out[:, :, 0] = out[:, :, -1] = False
    return out


def _place_effusion(vol: _Volume, side: str, thickness: float) -> tuple[Lesion, np.ndarray] | None:
    """Dependent (posterior) fluid layering in the pleural space, thickest at the base, tapering upwards."""
    _lx, ly = vol.lung_c[side]
    prof = vol.lung_profile(vol.t)
    back = ly + vol.lung_ax[1] * prof  # posterior edge of the lung at each height
    height_t = 0.12 + 0.35 * thickness / 70.0  # how far up the fluid climbs (fraction of the volume)
    local = thickness * np.clip(1.0 - (vol.t - LUNG_T[0]) / height_t, 0.0, 1.0)
    mask = vol.lung[side] & (vol.y > back - local) & (vol.label_map == 0)
    if mask.sum() < 20:
        return None
    per_slice_rows = [np.ptp(np.nonzero(mask[z])[0]) + 1 for z in np.flatnonzero(mask.any(axis=(1, 2)))]
    measured = float(max(per_slice_rows) * vol.sp)
    severity = "small" if measured < 20 else "moderate" if measured < 40 else "large"
    loc = "right_pleura" if side == "right" else "left_pleura"
    lesion = Lesion("pleural_effusion", loc, side, round(measured, 1), attrs={"severity": severity, "hu": HU_FLUID})
    return lesion, mask


def _vessels(vol: _Volume, hu: np.ndarray) -> None:
    """Pulmonary vessels: tapering tubes from each hilum towards the periphery.

    Points along each vessel are stamped at their nearest voxel with their radius, then dilated in-plane by
    shifted comparisons (a handful of whole-volume operations instead of a loop over points).
    """
    rng = vol.rng
    s = vol.scale
    step = 0.6 * min(vol.sp, vol.dz)
    pts: list[np.ndarray] = []
    for lx, ly in vol.lung_c.values():
        for _ in range(28):
            t_end = _uniform(rng, (0.2, 0.9))
            prof = float(vol.lung_profile(np.array(t_end, dtype=np.float32)))
            ang = _uniform(rng, (0, 2 * math.pi))
            start = np.array([0.55 * Z_COVERAGE_MM, ly - 10.0 * s, lx * 0.45])
            end = np.array(
                [
                    t_end * Z_COVERAGE_MM,
                    ly + math.sin(ang) * vol.lung_ax[1] * prof * 0.9,
                    lx + math.cos(ang) * vol.lung_ax[0] * prof * 0.9,
                ]
            )
            n = max(2, int(np.linalg.norm(end - start) / step))
            f = np.linspace(0.0, 1.0, n)[:, None]
            p = start + f * (end - start)
            radius = 4.0 * (1.0 - f[:, 0]) + 0.9
            pts.append(np.column_stack([p, radius]))
    allp = np.concatenate(pts)
    zi = (allp[:, 0] / vol.dz).astype(int)
    yi = np.floor(allp[:, 1] / vol.sp + vol.size / 2).astype(int)
    xi = np.floor(allp[:, 2] / vol.sp + vol.size / 2).astype(int)
    ok = (zi >= 0) & (zi < vol.depth) & (yi >= 0) & (yi < vol.size) & (xi >= 0) & (xi < vol.size)
    radius_px = np.zeros(hu.shape, dtype=np.float32)
    np.maximum.at(radius_px, (zi[ok], yi[ok], xi[ok]), (allp[ok, 3] / vol.sp).astype(np.float32))
    vessel = radius_px > 0
    reach = math.ceil(float(radius_px.max()))
    n = vol.size
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            d = math.hypot(dy, dx)
            if d == 0 or d > reach:
                continue
            src = radius_px[:, max(0, -dy) : n - max(0, dy), max(0, -dx) : n - max(0, dx)]
            vessel[:, max(0, dy) : n - max(0, -dy), max(0, dx) : n - max(0, -dx)] |= src >= d
    lung_any = vol.lung["right"] | vol.lung["left"]
    hu[vessel & lung_any] = HU_SOFT


def _anatomy(vol: _Volume) -> np.ndarray:
    """HU volume of the normal chest (before lesions and noise)."""
    rng, s = vol.rng, vol.scale
    x, y, t = vol.x[0], vol.y[0], vol.t  # in-plane grids (1, W) and (H, 1)
    depth, size = vol.depth, vol.size
    shape = (depth, size, size)
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    body2d = vol.rho_body[0] < 1.0
    _paint(hu, vol, body2d, 0.0, 1.0, HU_SOFT)
    _paint(hu, vol, vol.subcut[0], 0.0, 1.0, HU_FAT)
    # Upper abdomen under the domes: liver on the right, stomach (with a gas bubble) and spleen on the left.
    liver = vol.below_dome["right"] & ((x < 40.0 * s) & (vol.rho_body[0] < 0.92))[None]
    hu[liver] = HU_LIVER
    stomach2d = (((x - 70 * s) / 45) ** 2 + ((y + 20 * s) / 40) ** 2 < 1.0) & (x > 40 * s)
    stomach = vol.below_dome["left"] & stomach2d[None]
    hu[stomach] = 30.0
    hu[stomach & (y < -35 * s)[None] & (t > 0.18)] = HU_AIR
    # Mediastinum: fat, heart with epicardial fat, great vessels, airway.
    mediastinum = vol.mediastinum2d() & body2d
    _paint(hu, vol, mediastinum, 0.2, 1.0, -90.0)
    hu[vol.heart_fat] = HU_FAT
    hu[vol.heart] = HU_SOFT
    _tube(hu, vol, 24 * s, 52 * s, 12 * s, 0.0, 0.8, HU_SOFT)  # descending aorta
    _tube(hu, vol, 4 * s, -28 * s, 15 * s, 0.5, 0.8, HU_SOFT)  # ascending aorta
    outer = (x - 14 * s) ** 2 / (22 * s) ** 2 + (y - 12 * s) ** 2 / (48 * s) ** 2 < 1.0
    inner = (x - 14 * s) ** 2 / (10 * s) ** 2 + (y - 12 * s) ** 2 / (36 * s) ** 2 < 1.0
    _paint(hu, vol, outer & ~inner, 0.78, 0.84, HU_SOFT)  # aortic arch
    _tube(hu, vol, 18 * s, -40 * s, 13 * s, 0.52, 0.62, HU_SOFT)  # pulmonary trunk
    _tube(hu, vol, -26 * s, -20 * s, 9 * s, 0.5, 0.92, HU_SOFT)  # superior vena cava
    _tube(hu, vol, 0.0, 0.0, 10 * s, 0.62, 1.0, HU_SOFT)  # tracheal wall
    _tube(hu, vol, 0.0, 0.0, 8 * s, 0.62, 1.0, HU_AIR)  # trachea
    ks = _krange(vol, 0.5, 0.62)
    for k in range(ks.start, ks.stop):  # main bronchi diverge below the carina
        for sign in (-1.0, 1.0):
            bx = sign * (6 + (0.62 - float(t[k, 0, 0])) * 300) * s
            ring = (x - bx) ** 2 + y**2
            hu[k][ring < (7 * s) ** 2] = HU_SOFT
            hu[k][ring < (5 * s) ** 2] = HU_AIR
    # Lungs with a faint parenchymal texture, then vessels.
    lung_any = vol.lung["right"] | vol.lung["left"]
    texture = smooth_noise3d(rng, shape, (max(4, depth // 4), 24, 24))
    hu[lung_any] = (HU_LUNG + 40.0 * (texture - 0.5))[lung_any]
    _vessels(vol, hu)
    # Spine (cortex, cancellous bone, discs, canal) and sternum.
    vb = (x**2 + (y - 78 * s) ** 2) / (18 * s) ** 2
    _paint(hu, vol, vb < 1.0, 0.0, 1.0, HU_CANCELLOUS)
    _paint(hu, vol, (vb < 1.0) & (vb > 0.72), 0.0, 1.0, HU_BONE)
    discs = np.flatnonzero(((vol.z_mm[:, 0, 0] / 26.0) % 1.0) < 0.2)
    vy, vx = np.nonzero(vb < 1.0)
    hu[discs[:, None], vy[None, :], vx[None, :]] = 80.0
    canal = (x**2 + (y - 104 * s) ** 2) < (8 * s) ** 2
    lamina = ((x**2 + (y - 104 * s) ** 2) < (13 * s) ** 2) & (y > 100 * s)
    _paint(hu, vol, lamina & ~canal, 0.0, 1.0, HU_BONE)
    _paint(hu, vol, canal, 0.0, 1.0, 20.0)
    _paint(hu, vol, (x / (16 * s)) ** 2 + ((y + 88 * s) / (6 * s)) ** 2 < 1.0, 0.3, 0.85, HU_BONE)  # sternum
    _tube(hu, vol, 4 * s, 42 * s, 8 * s, 0.2, 0.95, HU_SOFT)  # oesophagus, with a little air
    _tube(hu, vol, 4 * s, 42 * s, 2.5 * s, 0.2, 0.95, HU_AIR)
    rho = vol.rho_body[0]
    phi2d = np.arctan2(x, -y)  # 0 anterior, +-pi posterior
    scapula = (rho > 0.87) & (rho < 0.905) & (np.abs(phi2d) > 1.9) & (np.abs(phi2d) < 2.6)
    _paint(hu, vol, scapula, 0.55, 0.97, HU_BONE)
    # Ribs: oblique bands around the chest wall just outside the lungs (each rib descends from back to front).
    band = (rho > 0.8) & (rho < 0.855) & (np.abs(x) > 25 * s)
    by, bx_ = np.nonzero(band)
    phi = np.arctan2(x[0, bx_], -y[by, 0])  # 0 anterior, +-pi posterior
    rib_phase = (vol.z_mm[:, 0, 0][:, None] + 38.0 * np.cos(phi)[None, :]) / 26.0
    rib = ((rib_phase % 1.0) < 0.28) & (vol.t[:, 0, 0] > 0.2)[:, None]
    kk, jj = np.nonzero(rib)
    hu[kk, by[jj], bx_[jj]] = HU_BONE
    return hu


def render(rng: np.random.Generator, size: int, depth: int, out_of_range: bool) -> Drawn:
    """Draw one chest CT; returns image (int16 HU), spacing, mask, lesions, meta."""
    vol = _Volume(size, depth, rng, out_of_range)
    s = vol.scale
    shape = (depth, size, size)
    hu = _anatomy(vol)

    # Lesions (placed on the anatomy; they never overlap).
    want = {key: bool(rng.random() < p) for key, p in PREVALENCE.items()}
    if want["pleural_effusion"]:
        sides = ["right", "left"] if rng.random() < 0.25 else ["right" if rng.random() < 0.5 else "left"]
        for side in sides:
            placed = _place_effusion(vol, side, _uniform(rng, EFFUSION_MM_OOR if out_of_range else EFFUSION_MM))
            if placed:
                vol.add(*placed, focal=False)
    if want["mass"]:
        sphere = _place_sphere(vol, "mass", _uniform(rng, MASS_MM_OOR if out_of_range else MASS_MM), True)
        if sphere:
            vol.add(sphere[0], sphere[1], focal=True, cover=sphere[2])
    if want["consolidation"]:
        placed = _place_consolidation(vol, _uniform(rng, CONSOLIDATION_MM_OOR if out_of_range else CONSOLIDATION_MM))
        if placed:
            vol.add(*placed, focal=True)
    if want["nodule"]:
        for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
            diameter = _uniform(rng, NODULE_MM_OOR if out_of_range else NODULE_MM)
            sphere = _place_sphere(vol, "nodule", diameter, False)
            if sphere:
                vol.add(sphere[0], sphere[1], focal=True, cover=sphere[2])
    for i, lesion in enumerate(vol.lesions):
        region = vol.label_map == i + 1
        if lesion.label == "consolidation":
            patchy = smooth_noise3d(rng, shape, (max(4, depth // 3), 20, 20))
            hu[region] = (-60.0 + 110.0 * patchy)[region]
            _air_bronchograms(hu, vol, region)
        elif i in vol.cover:  # partial volume: edge voxels read between the lung and the lesion
            share = vol.cover[i]
            hu += share * (float(lesion.attrs["hu"]) - hu)
        else:
            hu[region] = float(lesion.attrs["hu"])
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(12.0)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Drawn(
        image=image,
        spacing=(vol.dz, vol.sp, vol.sp),
        mask=vol.label_map,
        lesions=vol.lesions,
        meta={"body_scale": round(s, 3), "z_coverage_mm": Z_COVERAGE_MM},
    )
