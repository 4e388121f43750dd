"""The ground-truth records every phantom carries (re-exported by ``models.synthetic``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BoxTuple = tuple[float, float, float, float]  # (x0, y0, x1, y1) pixel coords, (0,0) = top-left corner of pixel (0,0)


@dataclass
class Lesion:
    """One finding drawn into the phantom.

    ``box`` is the tight box around the mask on the 2D image (CXR only). For volumes ``slices`` lists the slice
    indices (axis 0 of ``Case.image``) the finding's mask touches and ``slice_boxes`` the tight box per slice.
    Non-focal findings (``Label.focal`` False: effusion, pneumothorax, cardiomegaly) have no boxes; effusion and
    pneumothorax still have a mask (and ``slices`` in volumes); cardiomegaly has an empty mask.
    ``size_mm`` is the diameter (nodule, mass, hypermetabolic lesion), the largest extent (consolidation),
    on CXR the height of the fluid surface's lowest point above the costophrenic angle / on CT
    the largest thickness (effusion), the rim depth (pneumothorax), or the
    cardiac width (cardiomegaly).
    """

    label: str
    location: str | None
    laterality: str | None
    size_mm: float | None
    box: BoxTuple | None = None
    slices: list[int] = field(default_factory=list)
    slice_boxes: dict[int, BoxTuple] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # extra facts: severity, ctr, suv_max, center...


@dataclass
class QA:
    """A visual question-answer pair in one language; ``kind`` names its template family (see ``text``)."""

    lang: str
    question: str
    answer: str
    kind: str


@dataclass
class Case:
    """One synthetic study with everything needed to train and to check a model."""

    kind: str
    seed: int
    image: np.ndarray
    spacing: tuple[float, ...]
    mask: np.ndarray
    lesions: list[Lesion]
    labels: set[str]
    report: dict[str, str]
    qa: list[QA]
    meta: dict[str, Any]


@dataclass
class Drawn:
    """What a kind's renderer returns; ``make_case`` adds the patient, the reports and the questions."""

    image: np.ndarray
    spacing: tuple[float, ...]
    mask: np.ndarray
    lesions: list[Lesion]
    meta: dict[str, Any]


def box_from_mask(mask2d: np.ndarray) -> BoxTuple | None:
    """Tight box of a 2D boolean mask in pixel-corner coordinates: pixel (r, c) covers [c, c+1) x [r, r+1)."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def fill_volume_boxes(lesion: Lesion, lesion_mask: np.ndarray, focal: bool) -> None:
    """Set ``slices`` (and per-slice boxes for focal findings) from the lesion's 3D mask."""
    zs = np.flatnonzero(lesion_mask.any(axis=(1, 2)))
    lesion.slices = [int(z) for z in zs]
    if focal:
        boxes = {int(z): box_from_mask(lesion_mask[z]) for z in zs}
        lesion.slice_boxes = {z: b for z, b in boxes.items() if b is not None}
