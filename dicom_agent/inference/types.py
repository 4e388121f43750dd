"""The infer → encode contract: what any model adapter returns for a study (design notes, "Model interface").

Coordinates follow DICOM 2D SCOORD conventions: (column, row) floats with (0, 0) the top-left corner of the
top-left pixel, on the exact source image (and frame, for multi-frame). Masks are per source image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_agent.dicom.codes import Code

LANGUAGES: tuple[str, ...] = ("en", "zh")  # every text the model writes or reads: English, Chinese


@dataclass(frozen=True)
class SeriesInput:
    """One stored source series handed to a model: its files (absolute paths inside the storage root)."""

    series_instance_uid: str
    modality: str
    files: list[Path]
    body_part: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class StudyInput:
    """What an adapter's ``predict`` receives: the study's selected series, already routed."""

    study_instance_uid: str
    series: list[SeriesInput]
    languages: tuple[str, ...] = LANGUAGES


@dataclass(frozen=True)
class ImageRef:
    """One source image (or one frame of a multi-frame image) that a box or key image points to."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None  # 1-based, multi-frame only


@dataclass(frozen=True)
class Box:
    """An axis-aligned box on one source image, in source pixel coordinates."""

    image: ImageRef
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    def polyline(self) -> list[tuple[float, float]]:
        """The closed 5-point POLYLINE of the SR (first point = last point)."""
        return [(self.x0, self.y0), (self.x1, self.y0), (self.x1, self.y1), (self.x0, self.y1), (self.x0, self.y0)]


@dataclass
class Mask:
    """A binary mask on the source grid of one series: ``pixels[i]`` belongs to ``images[i]``."""

    series_instance_uid: str
    images: list[ImageRef]
    pixels: np.ndarray  # bool, shape (len(images), rows, cols)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[0] != len(self.images):
            raise ValueError("mask pixels must be (n_images, rows, cols) aligned with images")
        self.pixels = self.pixels.astype(bool, copy=False)

    def volume_voxels(self) -> int:
        return int(self.pixels.sum())


@dataclass
class Finding:
    """One coded finding of the model with its evidence and bilingual text."""

    label: str  # key in the manifest's label set, e.g. "nodule"
    code: Code  # SNOMED CT / RadLex
    name_en: str
    name_zh: str
    probability: float  # 0..1
    present: bool  # probability >= the label's threshold
    critical: bool = False  # a triage class (e.g. pneumothorax)
    finding_site: Code | None = None
    location: str | None = None  # key, e.g. "right_upper_zone"
    location_en: str | None = None
    location_zh: str | None = None
    laterality: str | None = None  # "right" | "left" | "bilateral" | None
    size_mm: float | None = None
    volume_mm3: float | None = None
    suv_max: float | None = None  # PET: highest SUVbw (g/ml) of the lesion's source voxels
    boxes: list[Box] = field(default_factory=list)
    mask: Mask | None = None
    size_on: int | None = None  # index into ``boxes``: the box on the image where ``size_mm`` was measured
    suv_on: int | None = None  # index into ``boxes``: the box on the image holding the SUVmax voxel
    text_en: str | None = None  # one sentence rendered from the structured result
    text_zh: str | None = None
    flags: list[str] = field(default_factory=list)  # e.g. "decoder_disagrees"


@dataclass(frozen=True)
class ModelIdentity:
    """Algorithm identity written into every SR/SEG (name, version, who made it, which bundle exactly)."""

    name: str
    version: str
    manufacturer: str
    bundle_sha256: str
    description: str = ""  # e.g. "trained on synthetic phantoms; not for clinical use"


@dataclass
class StudyFindings:
    """Everything one model run produced for one study."""

    study_instance_uid: str
    model: ModelIdentity
    findings: list[Finding]
    impression: dict[str, str]  # language ("en", "zh") -> impression text rendered from the findings
    narrative: dict[str, str] = field(default_factory=dict)  # optional decoder text per language
    key_images: list[ImageRef] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)  # the source series the model used
    flags: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def present(self) -> list[Finding]:
        return [f for f in self.findings if f.present]
