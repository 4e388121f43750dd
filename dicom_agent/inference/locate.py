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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

DEFAULT_LUNG_FIELD = (0.12, 0.77)  # apex and base, fractions of the radiograph height (PA, phantoms)
LUNG_HU = -400.0
BODY_HU = -500.0


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
