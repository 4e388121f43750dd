"""PA chest radiograph phantom: body, lungs, heart/mediastinum, ribs, clavicles, diaphragm, vessels, noise.

All anatomy is drawn analytically in normalised image coordinates (u = x / W, v = y / H) so one image costs a
few dozen vectorised numpy operations (about a millisecond at 128², a few at 256²). The display intensity
follows MONOCHROME2: bright = more attenuation (bone, soft tissue), dark = air (lungs, outside the body).

Orientation: PA view, image LEFT = patient RIGHT (PatientOrientation "L\\F").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.synthetic.case import Drawn, Lesion, box_from_mask
from models.synthetic.raster import grid2d, smooth_noise2d, soft_inside, upsample_axis
from models.terminology import LABELS

FOV_MM = 430.0  # a 43 cm detector
DEFAULT_SIZE = 256

# Training ranges (out_of_range=True samples outside them). Sizes are diameters / extents in mm.
NODULE_MM = (8.0, 30.0)
NODULE_MM_OOR = (4.0, 7.0)
MASS_MM = (32.0, 70.0)
MASS_MM_OOR = (75.0, 95.0)
CONSOLIDATION_MM = (35.0, 90.0)
CONSOLIDATION_MM_OOR = (95.0, 120.0)
EFFUSION_FRACTION = (0.14, 0.45)  # of the lung height
EFFUSION_FRACTION_OOR = (0.5, 0.62)
PNEUMOTHORAX_MM = (10.0, 35.0)
PNEUMOTHORAX_MM_OOR = (40.0, 55.0)
CTR_NORMAL = (0.38, 0.47)
CTR_ENLARGED = (0.54, 0.64)
CTR_ENLARGED_OOR = (0.66, 0.72)
BODY_SCALE = (0.94, 1.04)
BODY_SCALE_OOR = ((0.86, 0.9), (1.07, 1.1))
LESION_Q = (0.12, 0.88)  # vertical position of focal lesions within the lung (0 apex, 1 base)
LESION_Q_OOR = (0.03, 0.11)  # apical nodules
ROTATION_DEG = 3.0  # patient positioning: in-plane rotation within +-3 degrees
ROTATION_DEG_OOR = (4.0, 7.0)

# Probability that a case carries each finding (independently); about a third of cases come out normal.
PREVALENCE = {
    "nodule": 0.26,
    "mass": 0.10,
    "consolidation": 0.16,
    "pleural_effusion": 0.16,
    "pneumothorax": 0.10,
    "cardiomegaly": 0.16,
}


@dataclass(frozen=True)
class LungShape:
    """One lung field: lateral and medial edges (u), apex and base (v), diaphragm dome depth (fraction)."""

    side: str  # patient side: "right" (image left) or "left"
    u_lat: float
    u_med: float
    v_top: float
    v_base: float
    dome: float

    def coords(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_lat, q): p_lat = +1 at the lateral edge, -1 medial; q = 0 apex, 1 base."""
        uc = 0.5 * (self.u_lat + self.u_med)
        half = 0.5 * abs(self.u_lat - self.u_med)
        sign = 1.0 if self.u_lat > self.u_med else -1.0
        p_lat = sign * (u - uc) / half
        q = (v - self.v_top) / (self.v_base - self.v_top)
        return p_lat, q

    def signed_distance(self, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
        """Approximate signed distance in pixels (negative inside)."""
        p_lat, q = self.coords(u, v)
        half = 0.5 * abs(self.u_lat - self.u_med)
        qc = np.clip(q, 0.0, 1.0)
        width = np.where(p_lat > 0, np.sqrt(qc / 0.45), np.sqrt(qc / 0.1))
        width = np.minimum(width, 1.0)
        sd_side = (np.abs(p_lat) - width) * half
        base = 1.0 - self.dome * (1.0 - np.clip(p_lat, -1.0, 1.0) ** 2)
        sd_base = (q - base) * (self.v_base - self.v_top)
        sd_top = -q * (self.v_base - self.v_top)
        return np.maximum(np.maximum(sd_side, sd_base), sd_top) * size

    def lobe(self, q: float) -> str:
        """Lobe of a point at height q (radiographic zones: upper/mid/lower third)."""
        if self.side == "right":
            return "right_upper_lobe" if q < 1 / 3 else "right_middle_lobe" if q < 2 / 3 else "right_lower_lobe"
        return "left_upper_lobe" if q < 2 / 3 else "left_lower_lobe"


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


class _Canvas:
    """State of one radiograph being drawn: geometry, masks, lesions."""

    def __init__(self, size: int, rng: np.random.Generator, out_of_range: bool) -> None:
        self.size = size
        self.rng = rng
        self.oor = out_of_range
        self.spacing = FOV_MM / size
        if out_of_range:
            band = BODY_SCALE_OOR[int(rng.integers(2))]
            self.scale = _uniform(rng, band)
        else:
            self.scale = _uniform(rng, BODY_SCALE)
        s = self.scale
        self.cx = 0.5 + float(rng.uniform(-0.02, 0.02))
        v_top = 0.12 + float(rng.uniform(-0.015, 0.015))
        v_base = v_top + 0.64 * s
        if out_of_range:
            self.rotation_deg = _uniform(rng, ROTATION_DEG_OOR) * (1.0 if rng.random() < 0.5 else -1.0)
        else:
            self.rotation_deg = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        # Anatomy is drawn in a patient frame (u, v); the image grid is that frame rotated about the centre.
        x, y = grid2d(size, size)
        self._cos = math.cos(math.radians(self.rotation_deg))
        self._sin = math.sin(math.radians(self.rotation_deg))
        du, dv = x / size - 0.5, y / size - 0.5
        self.u = (0.5 + du * self._cos + dv * self._sin).astype(np.float32)
        self.v = (0.5 - du * self._sin + dv * self._cos).astype(np.float32)
        self.lungs = {
            "right": LungShape("right", self.cx - 0.375 * s, self.cx - 0.05, v_top, v_base + 0.01, 0.2),
            "left": LungShape("left", self.cx + 0.375 * s, self.cx + 0.06, v_top + 0.005, v_base + 0.025, 0.17),
        }
        self.label_map = np.zeros((size, size), dtype=np.uint8)
        self.lesions: list[Lesion] = []
        self.lesion_masks: list[np.ndarray] = []
        self.lung_sd = {side: lung.signed_distance(self.u, self.v, size) for side, lung in self.lungs.items()}
        self.lung_hard = {side: sd < 0 for side, sd in self.lung_sd.items()}

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Pixel coordinates (x, y) of a point given in the patient frame (inverse of the grid rotation)."""
        du, dv = u - 0.5, v - 0.5
        return (
            (0.5 + du * self._cos - dv * self._sin) * self.size,
            (0.5 + du * self._sin + dv * self._cos) * self.size,
        )

    def mm_to_u(self, mm: float) -> float:
        return mm / FOV_MM

    def heart(self, ctr: float) -> None:
        """Heart ellipse sized for a cardiothoracic ratio (width / inner thoracic width)."""
        thoracic = self.lungs["left"].u_lat - self.lungs["right"].u_lat
        hw = 0.5 * ctr * thoracic  # horizontal half-extent of the silhouette
        # An ellipse whose long axis runs from the right atrium (image left, up) to the apex (image right, down).
        tilt = math.radians(28.0)
        ratio = 0.72
        a = hw / math.sqrt(math.cos(tilt) ** 2 + (ratio * math.sin(tilt)) ** 2)
        b = ratio * a
        self.heart_hx = self.cx + 0.35 * hw
        base = 0.5 * (self.lungs["right"].v_base + self.lungs["left"].v_base)
        self.heart_hy = base - 0.2 * 0.64 * self.scale - 0.2 * b
        # Below its centre the heart merges into the diaphragm: no lower edge.
        du = self.u - self.heart_hx
        dv = np.minimum(self.v - self.heart_hy, 0.0)
        along = du * math.cos(tilt) + dv * math.sin(tilt)
        across = -du * math.sin(tilt) + dv * math.cos(tilt)
        d = np.sqrt((along / a) ** 2 + (across / b) ** 2)
        self.heart_sd = (d - 1.0) * b * self.size
        self.heart_hard = self.heart_sd < 0
        lung_any = self.lung_hard["right"] | self.lung_hard["left"]
        heart_cols = np.flatnonzero((self.heart_hard & (self.v < base)).any(axis=0))
        lung_cols = np.flatnonzero(lung_any.any(axis=0))
        self.ctr = float((heart_cols[-1] - heart_cols[0] + 1) / (lung_cols[-1] - lung_cols[0] + 1))
        self.heart_width_mm = float((heart_cols[-1] - heart_cols[0] + 1) * self.spacing)

    def free_lung(self, side: str) -> np.ndarray:
        """Lung pixels not behind the heart and not yet used by another finding."""
        return self.lung_hard[side] & ~self.heart_hard & (self.label_map == 0)

    def add(self, lesion: Lesion, mask: np.ndarray) -> None:
        self.lesions.append(lesion)
        self.lesion_masks.append(mask)
        self.label_map[mask] = len(self.lesions)


def _place_round(canvas: _Canvas, label: str, diameter_mm: float, lobulated: bool) -> tuple[Lesion, np.ndarray] | None:
    """A round (or lobulated) opacity fully inside one lung, clear of the heart and other findings."""
    rng = canvas.rng
    r_px = 0.5 * diameter_mm / canvas.spacing
    q_range = LESION_Q_OOR if canvas.oor and label == "nodule" else LESION_Q
    x, y = grid2d(canvas.size, canvas.size)
    for _ in range(40):
        side = "right" if rng.random() < 0.5 else "left"
        lung = canvas.lungs[side]
        q = _uniform(rng, q_range)
        p = float(rng.uniform(-0.85, 0.85))
        uc = 0.5 * (lung.u_lat + lung.u_med) + p * 0.5 * (lung.u_lat - lung.u_med)
        vc = lung.v_top + q * (lung.v_base - lung.v_top)
        cx, cy = canvas.to_image(uc, vc)
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        if lobulated:
            theta = np.arctan2(y - cy, x - cx)
            ph1, ph2 = rng.uniform(0, 2 * math.pi, 2)
            radius = r_px * (1.0 + 0.10 * np.sin(3 * theta + ph1) + 0.06 * np.sin(5 * theta + ph2))
        else:
            radius = np.full_like(dist, r_px)
        mask = dist <= radius
        if not mask.any() or not canvas.free_lung(side)[mask].all():
            continue
        q_c = (float(canvas.v[mask].mean()) - lung.v_top) / (lung.v_base - lung.v_top)
        lesion = Lesion(
            label=label,
            location=lung.lobe(q_c),
            laterality=side,
            size_mm=round(diameter_mm, 1),
            box=box_from_mask(mask),
            attrs={"center_px": (round(cx, 2), round(cy, 2))},
        )
        lesion.attrs["soft"] = soft_inside(dist - radius, 2.0 if lobulated else 1.2)  # masses: blurrier edge
        return lesion, mask
    return None


def _place_consolidation(canvas: _Canvas, extent_mm: float) -> tuple[Lesion, np.ndarray] | None:
    rng = canvas.rng
    _x, _y = grid2d(canvas.size, canvas.size)
    noise = smooth_noise2d(rng, (canvas.size, canvas.size), 14)
    for _ in range(30):
        side = "right" if rng.random() < 0.5 else "left"
        lung = canvas.lungs[side]
        q = _uniform(rng, (0.2, 0.85))
        p = float(rng.uniform(-0.3, 0.6))
        uc = 0.5 * (lung.u_lat + lung.u_med) + p * 0.5 * (lung.u_lat - lung.u_med)
        vc = lung.v_top + q * (lung.v_base - lung.v_top)
        ru = canvas.mm_to_u(extent_mm) * 0.5 * float(rng.uniform(0.8, 1.1))
        rv = canvas.mm_to_u(extent_mm) * 0.5 * float(rng.uniform(0.6, 1.0))
        e = ((canvas.u - uc) / ru) ** 2 + ((canvas.v - vc) / rv) ** 2
        field = 1.0 - e + 0.9 * (noise - 0.5)
        mask = (field > 0.2) & canvas.free_lung(side)
        if mask.sum() < max(12, 0.25 * math.pi * (extent_mm / canvas.spacing / 2) ** 2):
            continue
        box = box_from_mask(mask)
        assert box is not None
        size_mm = max(box[2] - box[0], box[3] - box[1]) * canvas.spacing
        q_c = (float(canvas.v[mask].mean()) - lung.v_top) / (lung.v_base - lung.v_top)
        lesion = Lesion("consolidation", lung.lobe(q_c), side, round(size_mm, 1), box=box)
        lesion.attrs["soft"] = np.clip((field - 0.2) / 0.25, 0.0, 1.0).astype(np.float32) * mask
        return lesion, mask
    return None


def _place_effusion(canvas: _Canvas, side: str, fraction: float) -> tuple[Lesion, np.ndarray] | None:
    lung = canvas.lungs[side]
    p_lat, q = lung.coords(canvas.u, canvas.v)
    # Meniscus: the fluid surface climbs the lateral chest wall (concave upwards).
    level = 1.0 - fraction - 0.25 * np.clip((p_lat + 0.4) / 1.4, 0.0, 1.0) ** 2
    sd = (level - q) * (lung.v_base - lung.v_top) * canvas.size
    mask = (sd < 0) & canvas.lung_hard[side] & (canvas.label_map == 0)
    if not mask.any():
        return None
    # Size: height of the fluid surface's lowest (medial) point above the costophrenic angle.
    height_mm = fraction * (lung.v_base - lung.v_top) * FOV_MM
    severity = "small" if fraction < 0.25 else "moderate" if fraction < 0.45 else "large"
    loc = "right_pleura" if side == "right" else "left_pleura"
    lesion = Lesion("pleural_effusion", loc, side, round(float(height_mm), 1), attrs={"severity": severity})
    # Hazy upper edge: the fluid layer thins towards the meniscus, so density builds up over a few pixels.
    haze = max(2.0, 0.03 * canvas.size)
    lesion.attrs["soft"] = np.clip(-sd / haze, 0.0, 1.0) * (canvas.lung_sd[side] < 1.0)
    return lesion, mask


def _place_pneumothorax(canvas: _Canvas, side: str, depth_mm: float) -> tuple[Lesion, np.ndarray] | None:
    lung = canvas.lungs[side]
    du = canvas.mm_to_u(depth_mm)
    shrink = -du if lung.u_lat > lung.u_med else du
    collapsed = LungShape(side, lung.u_lat + shrink, lung.u_med, lung.v_top + du, lung.v_base, lung.dome)
    sd_c = collapsed.signed_distance(canvas.u, canvas.v, canvas.size)
    _, q = lung.coords(canvas.u, canvas.v)
    mask = canvas.lung_hard[side] & (sd_c >= 0) & (q < 0.8) & (canvas.label_map == 0)
    if mask.sum() < 10:
        return None
    loc = "right_pleura" if side == "right" else "left_pleura"
    lesion = Lesion("pneumothorax", loc, side, round(depth_mm, 1))
    lesion.attrs["soft"] = mask.astype(np.float32)
    lesion.attrs["pleural_line"] = np.clip(1.0 - np.abs(sd_c) / 1.2, 0.0, 1.0) * (q < 0.8) * canvas.lung_hard[side]
    return lesion, mask


def _choose_findings(rng: np.random.Generator) -> dict[str, bool]:
    return {key: bool(rng.random() < p) for key, p in PREVALENCE.items()}


def render(seed_rng: np.random.Generator, size: int, out_of_range: bool) -> Drawn:
    """Draw one radiograph; returns image, spacing, mask, lesions and measured facts for the case."""
    rng = seed_rng
    canvas = _Canvas(size, rng, out_of_range)
    want = _choose_findings(rng)
    if want["cardiomegaly"]:
        ctr_target = _uniform(rng, CTR_ENLARGED_OOR if out_of_range else CTR_ENLARGED)
    else:
        ctr_target = _uniform(rng, CTR_NORMAL)
    canvas.heart(ctr_target)

    # Non-focal pleural findings first (they shape the lung), then focal opacities in the remaining lung.
    if want["pneumothorax"]:
        side = "right" if rng.random() < 0.5 else "left"
        depth = _uniform(rng, PNEUMOTHORAX_MM_OOR if out_of_range else PNEUMOTHORAX_MM)
        placed = _place_pneumothorax(canvas, side, depth)
        if placed:
            canvas.add(*placed)
    if want["pleural_effusion"]:
        sides = ["right", "left"] if rng.random() < 0.25 else ["right" if rng.random() < 0.5 else "left"]
        for side in sides:
            frac = _uniform(rng, EFFUSION_FRACTION_OOR if out_of_range else EFFUSION_FRACTION)
            placed = _place_effusion(canvas, side, frac)
            if placed:
                canvas.add(*placed)
    if want["mass"]:
        placed = _place_round(canvas, "mass", _uniform(rng, MASS_MM_OOR if out_of_range else MASS_MM), True)
        if placed:
            canvas.add(*placed)
    if want["consolidation"]:
        extent = _uniform(rng, CONSOLIDATION_MM_OOR if out_of_range else CONSOLIDATION_MM)
        placed = _place_consolidation(canvas, extent)
        if placed:
            canvas.add(*placed)
    if want["nodule"]:
        for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
            placed = _place_round(canvas, "nodule", _uniform(rng, NODULE_MM_OOR if out_of_range else NODULE_MM), False)
            if placed:
                canvas.add(*placed)
    if canvas.ctr > 0.5:
        canvas.lesions.append(
            Lesion("cardiomegaly", "heart", None, round(canvas.heart_width_mm, 1), attrs={"ctr": round(canvas.ctr, 2)})
        )
        canvas.lesion_masks.append(np.zeros((size, size), dtype=bool))

    image = _compose(canvas)
    for lesion in canvas.lesions:
        lesion.attrs.pop("soft", None)
        lesion.attrs.pop("pleural_line", None)
        assert LABELS[lesion.label].focal == (lesion.box is not None)
    return Drawn(
        image=image,
        spacing=(canvas.spacing, canvas.spacing),
        mask=canvas.label_map,
        lesions=canvas.lesions,
        meta={
            "ctr": round(canvas.ctr, 2),
            "body_scale": round(canvas.scale, 3),
            "rotation_deg": round(canvas.rotation_deg, 2),
            "view": "PA",
            "patient_orientation": ("L", "F"),
        },
    )


def _compose(canvas: _Canvas) -> np.ndarray:
    """Sum the anatomy and findings into display intensities (MONOCHROME2, [0, 1])."""
    rng = canvas.rng
    u, v, size = canvas.u, canvas.v, canvas.size
    s = canvas.scale
    h = np.abs(u - canvas.cx)

    effusion = np.zeros((size, size), np.float32)
    ptx = np.zeros((size, size), np.float32)
    pleural_line = np.zeros((size, size), np.float32)
    opacity = np.zeros((size, size), np.float32)
    for lesion in canvas.lesions:
        soft = lesion.attrs.get("soft")
        if soft is None:
            continue
        if lesion.label == "pleural_effusion":
            effusion = np.maximum(effusion, soft)
        elif lesion.label == "pneumothorax":
            ptx = np.maximum(ptx, soft)
            pleural_line = np.maximum(pleural_line, lesion.attrs["pleural_line"])
        else:
            amp = {"nodule": 0.24, "mass": 0.27, "consolidation": 0.22}[lesion.label]
            amp *= float(rng.uniform(0.85, 1.15))
            if lesion.label == "consolidation":  # patchy, with air bronchogram-like lucencies
                soft = soft * (0.55 + 0.6 * smooth_noise2d(rng, (size, size), 40))
            opacity += amp * soft

    # Body: soft tissue thicker in the middle; the neck is narrower than the chest.
    shoulder = np.clip((v - 0.0) / 0.13, 0.0, 1.0)
    body_w = 0.47 * s * (0.36 + 0.64 * shoulder * shoulder * (3.0 - 2.0 * shoulder))
    thickness = np.sqrt(np.clip(1.0 - (h / np.maximum(body_w, 1e-3)) ** 2, 0.0, 1.0))
    img = 0.03 + 0.55 * thickness

    lung_soft = np.maximum(soft_inside(canvas.lung_sd["right"], 1.5), soft_inside(canvas.lung_sd["left"], 1.5))
    aerated = lung_soft * (1.0 - effusion)
    img = img - 0.36 * aerated * (0.75 + 0.25 * thickness)
    img = img + 0.04 * effusion * lung_soft  # fluid is a little denser than the chest wall alone

    # Lung markings: vessels fanning out from each hilum, absent where the lung has collapsed (pneumothorax).
    # Computed on a half-resolution grid (the costly transcendental part) and upsampled: vessels are soft anyway.
    f = 2 if size >= 128 else 1
    uc, vc = u[::f, ::f], v[::f, ::f]
    coarse = uc.shape
    markings_c = np.zeros(coarse, np.float32)
    wobble = smooth_noise2d(rng, coarse, 10)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        hx = canvas.cx + sign * 0.11 * s
        hy = 0.46
        du, dv = uc - hx, vc - hy
        r = np.sqrt(du * du + dv * dv)
        theta = np.arctan2(dv, du * sign)
        streak = np.zeros_like(r)
        for k, w in ((float(rng.uniform(9, 12)), 1.0), (float(rng.uniform(19, 25)), 0.6)):
            phase = k * theta + 9.0 * w * wobble + 3.0 * r + float(rng.uniform(0, 6.28))
            c2 = (0.5 + 0.5 * np.cos(phase)) ** 2
            c8 = (c2 * c2) ** 2
            streak += w * c8 * c2  # cos^10: thin bright lines
        fade = np.exp(-r / 0.16)
        lung_c = canvas.lung_hard[side][::f, ::f]
        markings_c += lung_c * (0.075 * streak * fade + 0.1 * np.exp(-((r / 0.045) ** 2)))
    markings = markings_c if f == 1 else upsample_axis(upsample_axis(markings_c, size, 0), size, 1)
    texture = 0.035 * (smooth_noise2d(rng, (size, size), 28) - 0.5)
    img = img + (markings + texture) * aerated * (1.0 - ptx)
    img = img - 0.05 * ptx + 0.12 * pleural_line

    # Heart and mediastinum overlie the lungs: restore soft-tissue density where the heart covers lung.
    heart_soft = soft_inside(canvas.heart_sd, 1.5)
    knob = np.sqrt((u - (canvas.cx + 0.055)) ** 2 + (v - 0.3) ** 2)  # aortic knob
    heart_soft = np.maximum(heart_soft, soft_inside((knob - 0.035) * size, 1.5))
    img = img + 0.33 * heart_soft * lung_soft * (1.0 - effusion)
    # Trachea (air column) and spine (faint through the mediastinum).
    img = img - 0.13 * soft_inside((h - 0.02) * size, 2.0) * np.clip((0.37 - v) / 0.03, 0.0, 1.0) * (v > 0.0)
    img = img + 0.04 * soft_inside((h - 0.032) * size, 1.5) * (1.0 - 0.6 * lung_soft)
    # Gastric bubble under the left hemidiaphragm (image right).
    left = canvas.lungs["left"]
    gb = ((u - (canvas.cx + 0.2 * s)) / 0.06) ** 2 + ((v - (left.v_base + 0.035)) / 0.025) ** 2
    img = img - 0.12 * soft_inside((np.sqrt(gb) - 1.0) * 0.025 * size, 1.5) * (v > left.v_base - 0.005)

    # Posterior ribs: arcs leaving the spine, curving down at the chest wall; clavicles across the apices.
    thorax = (h > 0.045) & (h < 0.41 * s) & (v > 0.07) & (v < canvas.lungs["left"].v_base + 0.02)
    arc = -0.12 * h + 2.2 * np.clip(h - 0.2 * s, 0.0, None) ** 2
    phase = (v - arc - 0.1) / (0.058 * s)
    frac = phase - np.floor(phase)
    ribs = np.clip(1.0 - np.abs(frac - 0.3) / 0.13, 0.0, 1.0) * thorax * (phase > 0) * (phase < 10.5)
    phase_a = (v + 0.32 * h - 0.16) / (0.07 * s)  # anterior ribs run down towards the sternum
    frac_a = phase_a - np.floor(phase_a)
    ribs_a = np.clip(1.0 - np.abs(frac_a - 0.3) / 0.12, 0.0, 1.0) * thorax * (phase_a > 0) * (phase_a < 6.5)
    img = img + (0.075 * ribs + 0.03 * ribs_a) * (0.5 + 0.5 * lung_soft)
    clav_v = 0.1 + 0.35 * (h - 0.16) ** 2
    clav = np.clip(1.0 - np.abs(v - clav_v) / 0.014, 0.0, 1.0) * (h > 0.03) * (h < 0.3 * s)
    img = img + 0.1 * clav

    img = img + opacity * (0.6 + 0.4 * lung_soft)

    # Exposure and detector noise.
    gain = float(rng.uniform(0.9, 1.08))
    offset = float(rng.uniform(-0.02, 0.03))
    img = img * gain + offset
    img = img + rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.012)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
