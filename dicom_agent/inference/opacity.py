"""What a radiograph opacity looks like: the shape and texture that tell a nodule, a mass and a consolidation apart.

The network's nodule, mass and consolidation channels often fire on one opacity of a chest radiograph, and its
classifier ranks a mass against a consolidation poorly (bundle 0.19.0, 300 validation radiographs: box AP@0.5
over the three labels together 0.941, per label 0.924 / 0.805 / 0.664, session 38). A radiologist tells them
apart by the opacity itself: a nodule is a small round opacity (the Fleischner Society glossary: up to 3 cm), a mass
a larger one, round and homogeneous with a defined margin; a consolidation is ill-defined, irregular, elongated
along the lobe, inhomogeneous (aerated lung and air bronchograms within it).

:func:`opacity_features` measures that on the model input inside a box: the opacity's outline at half its contrast
over the box's surroundings (elongation, roundness, how much of its Feret circle it fills), how flat its inside is
and how much fine texture it holds (against its contrast), and the box's width and height. A
:class:`RegionModel` (multinomial logistic regression, fitted on validation phantoms by ``models.decoding`` and
stored in the manifest under ``decoding.region_model``) turns those into the probability of each focal label, and
:func:`weigh_by_opacity` multiplies each focal box's score by its label's probability relative to the likeliest
one, raised to the model's ``power``: a box whose opacity looks like its own label keeps its score, one whose
opacity looks like another label's ranks lower. The rule reorders boxes; it never adds or removes a finding the
classifier called.

On the phantoms this is a convention of how they are drawn as much as a sign (``models/synthetic/cxr.py``: masses
lobulated discs, consolidations a noisy ellipse with patchy density); on real radiographs the same descriptors are
the clinical ones, but real masses can be irregular and real consolidations round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:  # the runner imports this module
    from dicom_agent.inference.onnx_runner import DetectedBox

FEATURES = ("log_elongation", "flatness", "fill", "texture", "roundness", "log_width", "log_height")
RING_PX = 4  # the box's surroundings, whose median is the background the opacity's contrast is read against
MIN_OUTLINE_PX = 3  # an outline smaller than this measures nothing: its shape features are missing (NaN)


def high_pass(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``image`` minus its Gaussian blur (separable, reflected at the edges): the fine texture."""
    radius = int(3 * sigma) + 1
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    blurred = np.asarray(image, np.float64)
    for axis in (0, 1):
        padded = np.pad(blurred, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        n = blurred.shape[axis]
        blurred = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return np.asarray(image, np.float64) - blurred


def opacity_features(image: np.ndarray, texture: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The :data:`FEATURES` of the opacity inside ``box`` (x0, y0, x1, y1 on ``image``'s pixel grid); ``texture``
    is :func:`high_pass` of ``image``. A feature that cannot be measured (no outline) is NaN."""
    rows, cols = image.shape
    left, top, right, bottom = (round(float(v)) for v in box)
    x0, y0 = min(max(left, 0), cols - 2), min(max(top, 0), rows - 2)
    x1, y1 = min(max(right, x0 + 2), cols), min(max(bottom, y0 + 2), rows)
    out = np.full(len(FEATURES), np.nan)
    out[5], out[6] = math.log(x1 - x0), math.log(y1 - y0)
    ry0, rx0 = max(y0 - RING_PX, 0), max(x0 - RING_PX, 0)
    around = image[ry0 : y1 + RING_PX, rx0 : x1 + RING_PX]
    inside = np.zeros(around.shape, bool)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = True
    background = float(np.median(around[~inside] if (~inside).any() else around))
    patch = image[y0:y1, x0:x1]
    contrast = max(float(np.percentile(patch, 90)) - background, 1e-3)
    half = (patch - background) > 0.5 * contrast
    if half.sum() < MIN_OUTLINE_PX:
        return out
    outline = _largest_component(half)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(_image(outline))
    core = _eroded(outline)
    fine = texture[y0:y1, x0:x1][core if core.sum() >= MIN_OUTLINE_PX else outline]
    feret = _feret_diameter(outline)
    out[0] = math.log(max(shape.GetElongation(1), 1e-3))
    # a faint box's contrast is near zero: its ratios are clipped to the range an opacity's take
    out[1] = min(max(float(np.percentile(patch[outline] - background, 25)) / contrast, -1.0), 1.0)
    out[2] = float(outline.sum()) / (math.pi / 4 * feret**2 + 1e-6)
    out[3] = min(float(fine.std()) / contrast, 1.0)
    out[4] = shape.GetRoundness(1)
    return out


@dataclass(frozen=True)
class RegionModel:
    """Multinomial logistic regression from :func:`opacity_features` to the focal ``labels``: features standardised
    by ``mean`` and ``std`` (a missing one counts as the mean), ``weights`` (features + 1 bias) x labels."""

    labels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    power: float = 1.0

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, labels) probabilities of the (N, features) rows."""
        z = np.nan_to_num((np.atleast_2d(features) - self.mean) / self.std)
        logits = np.concatenate([z, np.ones((len(z), 1))], axis=1) @ self.weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "features": list(FEATURES),
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
            "weights": [[round(float(v), 6) for v in row] for row in self.weights],
            "power": self.power,
        }

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> RegionModel:
        if tuple(entry["features"]) != FEATURES:
            raise ValueError(f"region model measured on {entry['features']}, this runtime measures {FEATURES}")
        return cls(
            labels=tuple(entry["labels"]),
            mean=np.asarray(entry["mean"], np.float64),
            std=np.asarray(entry["std"], np.float64),
            weights=np.asarray(entry["weights"], np.float64),
            power=float(entry["power"]),
        )


def weigh_by_opacity(boxes: list[DetectedBox], image: np.ndarray, model: RegionModel) -> list[DetectedBox]:
    """``boxes`` (one radiograph, model grid) with each box of the model's labels scored times (its label's
    probability / the likeliest label's) ** ``model.power``: the opacity in it looks like that label or not."""
    focal = [b for b in boxes if b.label in model.labels]
    if not focal:
        return boxes
    texture = high_pass(image)
    probs = model.probabilities(np.stack([opacity_features(image, texture, b.corners) for b in focal]))
    factors = {
        id(b): (p[model.labels.index(b.label)] / p.max()) ** model.power for b, p in zip(focal, probs, strict=True)
    }
    return [replace(b, score=b.score * float(factors[id(b)])) if id(b) in factors else b for b in boxes]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask``; of equal ones, the first in raster order (as SimpleITK's
    ConnectedComponent + RelabelComponent choose, in numpy: a filter call costs milliseconds on any patch)."""
    from dicom_agent.inference.onnx_runner import mask_components  # the runner imports this module

    labels = mask_components(mask).reshape(-1)
    found = labels[labels > 0]
    keys, sizes = np.unique(found, return_counts=True)
    first = np.full(len(keys), labels.size)
    np.minimum.at(first, np.searchsorted(keys, found), np.flatnonzero(labels > 0))
    best = keys[np.lexsort((first, -sizes))[0]]
    return (labels == best).reshape(mask.shape)


def _feret_diameter(mask: np.ndarray) -> float:
    """The largest distance between two pixel centres of ``mask`` (pixels), taken over its border pixels, where
    the farthest pair lies (SimpleITK's Feret diameter, which costs more than the rest of the features together)."""
    border = mask & ~_eroded(mask, outside=False)
    points = np.argwhere(border).astype(np.float64)
    gaps = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((gaps**2).sum(axis=-1).max()))


def _eroded(mask: np.ndarray, outside: bool = True) -> np.ndarray:
    """``mask`` eroded by the 3 x 3 square, the image's outside counting as ``outside`` (foreground by default, as
    in SimpleITK's BinaryErode of radius 1)."""
    p = np.pad(mask, 1, constant_values=outside)
    rows, cols = mask.shape
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= p[dy : dy + rows, dx : dx + cols]
    return out


def _image(mask: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
