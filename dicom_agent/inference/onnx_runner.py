"""Runs an exported model bundle (``models/bundled/``) with ONNX Runtime: encoders, heads, greedy decoding.

The bundle is three ONNX graphs plus a tokenizer, described by ``manifest.json`` (see ``docs/model.md``):

- ``enc2d``  image (N,1,S,S) float32 in [0,1]                         -> heads + decoder memory of radiographs
- ``enc3d``  volume (N,D,s,s) float32 in [0,1], modality (N,) int64   -> per-slice heads, slice relevance, memory
- ``dec_step`` input_ids (N,t) int64, cross_k/cross_v, past_k/past_v (+ past_ids (N,P) int64 with the copy head)
  -> last logits (N,V), present_k/present_v

This module only needs numpy, onnxruntime and tokenizers: it never imports ``models/`` (torch), so a worker
loads it in a few hundred milliseconds. Preprocessing from DICOM (windowing, resampling) is the caller's job;
the manifest's ``inputs`` section says exactly what the graphs expect.

Threads: ORT's intra-op thread pool spins by default, which on a shared 2-core machine inflated other work
5–9× in the feasibility run; sessions here set ``intra_op_num_threads`` explicitly and disable spinning.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dicom_agent.inference.opacity import RegionModel, weigh_by_opacity

log = logging.getLogger(__name__)

MODALITY_INDEX = {"cxr": 0, "ct": 1, "pet": 2}
RIVAL_IOU = 0.1  # boxes of two focal labels overlapping more than this lie on one lesion (``demote_rivals``)
SUPPORT_PERCENTILE = 90  # of a label's segmentation probability over its box: the support a box is weighed by
OUTLINE_MIN_IOU = 0.3  # a peak's box takes the outline of its label's mask component overlapping it this much


class BundleError(RuntimeError):
    """The bundle is missing, altered (hash mismatch) or inconsistent with its manifest."""


@dataclass(frozen=True)
class LabelSpec:
    """One finding the bundle can report (from the manifest's label set)."""

    key: str
    code_value: str
    code_scheme: str
    code_meaning: str
    name_en: str
    name_zh: str
    modalities: tuple[str, ...]
    threshold: float
    critical: bool = False
    focal: bool = True
    outlined: bool = True  # manifest ``outlined``: trained with masks; others get none (no SEG segment, no side)


@dataclass(frozen=True)
class DetectedBox:
    """A detected box in MODEL pixel coordinates of one image (or one slice ``z`` of a volume).

    (x0, y0) top-left, (x1, y1) bottom-right, columns/rows in the model grid of side ``image_size`` (2D)
    or ``slice_size`` (volume slices); the caller scales back to the source grid.
    """

    label: str
    score: float
    x0: float
    y0: float
    x1: float
    y1: float
    z: int | None = None

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1), as :func:`box_iou` takes a box."""
        return self.x0, self.y0, self.x1, self.y1


@dataclass
class DecoderFeatures:
    """Cross-attention keys/values of ONE image or volume: each (layers, 1, heads, M, dh) float32."""

    cross_k: np.ndarray
    cross_v: np.ndarray


@dataclass
class Result2D:
    """Outputs of ``run_2d`` for one radiograph (model grid S×S, S = manifest config image_size).

    - ``probabilities``: label key -> probability of presence (0..1), all labels of the bundle
    - ``present``: label keys whose probability >= the label's threshold (manifest) and that apply to CXR
    - ``boxes``: boxes of present labels, best first (model pixel coords): CenterNet peaks, or the mask's
      components for labels whose manifest ``decoding.box_source`` says "mask"
    - ``masks``: label key -> bool (S,S) for present labels (segmentation probability >= the label's
      manifest threshold, ``BundleRunner.mask_threshold_of``)
    - ``mask_probs``: float32 (L,S,S) segmentation probabilities, label order of ``BundleRunner.labels``
    - ``features``: decoder cross K/V for ``generate``
    - ``cores``: for present labels masked below ``decoding.mask_threshold``, the mask at that threshold:
      the confident core sizes are measured on (a faint threshold draws the best overlap, not the extent:
      radiograph effusion heights came out twice the truth)
    """

    probabilities: dict[str, float]
    present: list[str]
    boxes: list[DetectedBox]
    masks: dict[str, np.ndarray]
    mask_probs: np.ndarray
    embedding: np.ndarray
    features: DecoderFeatures
    cores: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Result3D:
    """Outputs of ``run_3d`` for one volume (model grid D×s×s; D = config depth, s = config slice_size).

    - ``probabilities`` / ``present``: as in :class:`Result2D`, for the volume's modality
    - ``slice_probabilities``: float32 (D,L) per-slice label probabilities
    - ``relevance``: float32 (D,) softmax slice relevance (UniMedI-style attention; sums to 1)
    - ``top_slices``: indices of the k most relevant slices (they feed the decoder), most relevant first
    - ``boxes``: per-slice boxes (``z`` set) of present labels
    - ``masks``: label key -> bool (D,s,s) for present labels
    - ``mask_probs``: float32 (D,L,s,s)
    - ``cores``: as in :class:`Result2D`, (D,s,s)
    """

    probabilities: dict[str, float]
    present: list[str]
    slice_probabilities: np.ndarray
    relevance: np.ndarray
    top_slices: list[int]
    boxes: list[DetectedBox]
    masks: dict[str, np.ndarray]
    mask_probs: np.ndarray
    embedding: np.ndarray
    features: DecoderFeatures
    extra: dict[str, Any] = field(default_factory=dict)
    cores: dict[str, np.ndarray] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def decode_centernet(
    heat: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    labels: Sequence[str],
    side: int,
    min_score: float,
    max_per_label: int = 5,
) -> list[DetectedBox]:
    """CenterNet decoding (Zhou et al. 2019): 3×3 local maxima of per-label heatmaps (L,h,w) above ``min_score``.

    ``size`` (2,h,w) is box width/height as a fraction of the image side, ``offset`` (2,h,w) the sub-cell centre
    offset in cells; the grid stride is ``side / w``.
    """
    n_labels, gh, gw = heat.shape
    stride = side / gw
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    neigh = np.max(np.stack([padded[:, dy : dy + gh, dx : dx + gw] for dy in range(3) for dx in range(3)]), axis=0)
    boxes: list[DetectedBox] = []
    for li in range(n_labels):
        peaks = np.argwhere((heat[li] >= neigh[li]) & (heat[li] >= min_score))
        scored = sorted(((float(heat[li, i, j]), int(i), int(j)) for i, j in peaks), reverse=True)[:max_per_label]
        for score, i, j in scored:
            cx = (j + float(offset[0, i, j])) * stride
            cy = (i + float(offset[1, i, j])) * stride
            w = max(float(size[0, i, j]), 0.0) * side
            h = max(float(size[1, i, j]), 0.0) * side
            x0, y0 = max(cx - w / 2, 0.0), max(cy - h / 2, 0.0)
            x1, y1 = min(cx + w / 2, float(side)), min(cy + h / 2, float(side))
            boxes.append(DetectedBox(labels[li], score, x0, y0, x1, y1))
    boxes.sort(key=lambda b: -b.score)
    return boxes


def mask_components(mask: np.ndarray) -> np.ndarray:
    """Face-connected component labels of a boolean mask of any rank (0 = background; 4-connected in 2D): each
    pixel takes the largest label among itself and its neighbours until nothing changes; the labels end as the
    largest flat index (+1) of each component. A label is also a pointer to a pixel of the same component holding
    a label at least as large, so after each round the pointers are followed, doubling (pointer jumping): without
    it a component took as many rounds as its span (20 s for a mask filling a 96 x 128 x 128 PET, now 0.4 s).
    numpy only: this module stays free of SimpleITK (the adapter's 3D components use it)."""
    lab = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    inside = mask.reshape(-1)
    while True:
        p = np.pad(lab, 1)
        shifted = [p[inner]]
        for axis in range(mask.ndim):
            for window in (slice(None, -2), slice(2, None)):
                shifted.append(p[(*inner[:axis], window, *inner[axis + 1 :])])
        grown = np.where(mask, np.maximum.reduce(shifted), 0)
        flat = grown.reshape(-1)  # a view: jumping writes into grown
        own = flat[inside]
        while not np.array_equal(jumped := flat[own - 1], own):
            flat[inside] = own = jumped
        if np.array_equal(grown, lab):
            return lab
        lab = grown


def grow_once(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its face neighbours (one step of binary dilation; nothing wraps around an edge)."""
    grown = mask.copy()
    for axis in range(mask.ndim):
        for step in (1, -1):
            grown |= np.roll(mask, step, axis=axis) & _not_wrapped(mask.shape, axis, step)
    return grown


def grow_from_seeds(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` face-connected to a seed (morphological reconstruction, any number of axes):
    hysteresis, as in edge detection, with the seeds from a high threshold and the mask from a low one."""
    out = seeds & mask
    while True:
        grown = grow_once(out) & mask
        if np.array_equal(grown, out):
            return out
        out = grown


def threshold_mask(prob: np.ndarray, level: float, seed: float | None = None) -> np.ndarray:
    """``prob >= level``; with ``seed`` above ``level``, only the parts holding a value >= ``seed``."""
    mask = prob >= level
    return grow_from_seeds(prob >= seed, mask) if seed is not None and level < seed else mask


DELINEATION_REACH = 2  # pixels around a lesion's mask searched for its peak and its half-peak extent


def grown_box(coords: np.ndarray, shape: tuple[int, ...], reach: int = DELINEATION_REACH) -> tuple[slice, ...]:
    """The bounding box of ``coords`` (N, ndim) grown by ``reach`` on every side, clipped to ``shape``: the only
    place a lesion's outline can reach, so its work stays inside it."""
    return tuple(
        slice(max(int(lo) - reach, 0), min(int(hi) + 1 + reach, n))
        for lo, hi, n in zip(coords.min(axis=0), coords.max(axis=0), shape, strict=True)
    )


def delineate(image: np.ndarray, mask: np.ndarray, fraction: float, reach: int = DELINEATION_REACH) -> np.ndarray:
    """Each connected part of a focal label's ``mask`` redrawn from the model input ``image`` (same shape, in
    [0, 1]): the pixels within ``reach`` of the part at or above ``fraction`` of the brightest of them, connected to
    the part's own such pixels. The half-maximum rule of lesion delineation (PET volumes at 41-50 % of SUVmax; CT
    nodule volumetry between lung and solid tissue): the network says where a lesion is, its intensities say where
    it ends. A part with none of its own pixels at that level, or on a black image, is kept as the network drew
    it."""
    out = np.zeros_like(mask)
    labels = mask_components(mask)
    coords, owner = np.argwhere(mask), labels[mask]
    for k in np.unique(owner):
        box = grown_box(coords[owner == k], mask.shape, reach)
        part, pixels = labels[box] == k, image[box]
        near = part
        for _ in range(reach):
            near = grow_once(near)
        level = fraction * float(pixels[near].max())
        drawn = grow_from_seeds(part & (pixels >= level), near & (pixels >= level)) if level > 0 else part
        out[box] |= drawn if drawn.any() else part
    return out


def fluid_only(
    image: np.ndarray, mask: np.ndarray, level: float, band: tuple[float, float] | None = None
) -> np.ndarray:
    """A fluid finding's ``mask`` (a CT pleural effusion) without the voxels of the model input ``image`` below
    ``level``: fluid is water-dense, and a mask that runs onto aerated lung (−850 HU) past the fluid's edge is
    wrong there. With ``band`` (the model-input range of water density, water ± a few tens of HU) the voxels
    denser than the band go too (chest wall muscle: 40 HU, as dense as fluid to the eye in a lung window) and the
    water-dense voxels face-adjacent to what is kept join it: the network's mask strays across the fluid's border
    with the wall, a voxel out on one side and a voxel short on the other. Collapsed lung as dense as fluid stays.
    A band narrower than the image's voxel noise (:func:`voxel_noise` over half the band's width) cannot sort
    voxels by density and is not applied. A connected part with no voxel kept is kept as drawn, so the rule never
    removes a finding."""
    if band is not None and voxel_noise(image) > (band[1] - band[0]) / 2:
        band = None
    dense = mask & (image >= level)
    if band is not None:
        dense &= image <= band[1]
    labels = mask_components(mask)
    undense = mask & ~np.isin(labels, np.unique(labels[dense]))
    if band is not None:
        dense |= grow_once(dense) & (image >= band[0]) & (image <= band[1])
    return dense | undense


def voxel_noise(image: np.ndarray) -> float:
    """The image's noise as a standard deviation, in its own units: the median absolute difference between
    neighbouring voxels along rows, scaled to a Gaussian's sigma (1.4826 / sqrt 2). Edges are few, so the median
    reads the noise, not the anatomy; flat air outside the body lowers it."""
    return float(1.4826 * np.median(np.abs(np.diff(image, axis=-1))) / np.sqrt(2.0))


def _not_wrapped(shape: tuple[int, ...], axis: int, step: int) -> np.ndarray:
    """False on the edge ``np.roll`` wrapped around to (so growth never jumps across the image)."""
    keep = np.ones(shape[axis], bool)
    keep[0 if step == 1 else -1] = False
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.reshape(view)


def mask_component_boxes(prob: np.ndarray, mask: np.ndarray, label: str, weight: float) -> list[DetectedBox]:
    """One box per connected component of ``mask`` (h,w): the box of what the mask shows, scored by the
    component's peak probability in ``prob`` times ``weight`` (the label's image or volume probability)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    # label only the mask's bounding region: it runs on every slice of every volume inside the worker
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1]
    lab = mask_components(crop)
    boxes = []
    for k in np.unique(lab[crop]):
        ys, xs = np.nonzero(lab == k)
        peak = float(prob[ys + r0, xs + c0].max()) * weight
        x0, y0, x1, y1 = float(xs.min() + c0), float(ys.min() + r0), float(xs.max() + 1 + c0), float(ys.max() + 1 + r0)
        boxes.append(DetectedBox(label, peak, x0, y0, x1, y1))
    return boxes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) on one image (also the evaluation's box matching)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def demote_rivals(boxes: list[DetectedBox], focal: set[str], factor: float) -> list[DetectedBox]:
    """``boxes`` (one image or slice) with each focal box's score times ``factor`` where a box of another focal
    label overlaps it (IoU > ``RIVAL_IOU``) with a higher score: one lesion lights up the nodule, mass and
    consolidation channels at once, and the runtime reports the leader there (``bundle_adapter._claim_by_score``),
    so the others rank below the lesions their label leads. Scores are compared as given, not as demoted. Bundle
    0.18.0, 300 validation radiographs: consolidation AP@0.5 0.562 -> 0.678 at 0.7, its false boxes the ones on
    masses."""
    out = []
    for b in boxes:
        beaten = b.label in focal and any(
            r.label in focal and r.label != b.label and r.score > b.score and box_iou(r.corners, b.corners) > RIVAL_IOU
            for r in boxes
        )
        out.append(replace(b, score=b.score * factor) if beaten else b)
    return out


def _label_slot(ndim: int, axis: int, index: int) -> tuple[int | slice, ...]:
    """The index of one label's plane in an array of rank ``ndim`` whose label axis is ``axis``."""
    return tuple(index if a == axis else slice(None) for a in range(ndim))


def _box_window(box: DetectedBox) -> tuple[slice, slice]:
    """The rows and columns of the pixels ``box`` touches, at least one of each (a box under a pixel reads it)."""
    r0, c0 = int(box.y0), int(box.x0)
    return slice(r0, max(int(np.ceil(box.y1)), r0 + 1)), slice(c0, max(int(np.ceil(box.x1)), c0 + 1))


def seg_support(seg: np.ndarray, box: DetectedBox, index: int) -> float:
    """How surely the label's own segmentation shows a lesion inside ``box``: the 90th percentile of its
    probability over the box (``seg`` (L,h,w), label ``index``). A CenterNet peak the segmentation does not back
    lies on nothing; :func:`label_share`, a ratio between the focal labels, cannot tell that (bundle 0.19.1, 600
    validation radiographs: of the consolidation boxes scoring over 0.1, 38 % touched a drawn lesion; many of the
    rest lay on the soft tissue beside and below the lungs)."""
    values = seg[(index, *_box_window(box))].ravel()
    # np.percentile's linear interpolation by partial sort: it runs on every box of every slice of a volume
    rank = SUPPORT_PERCENTILE / 100 * (values.size - 1)
    low = int(rank)
    high = min(low + 1, values.size - 1)
    ordered = np.partition(values, (low, high))
    return float(ordered[low] + (rank - low) * (ordered[high] - ordered[low]))


def outline_by_mask(
    boxes: list[DetectedBox], seg: np.ndarray, masks: np.ndarray, labels: Collection[str], label_keys: Sequence[str]
) -> list[DetectedBox]:
    """``boxes`` with each box of ``labels`` drawn as the outline of its label's mask component (``masks`` (L,h,w),
    ``seg`` the probabilities) that overlaps it most, where that overlap is at least ``OUTLINE_MIN_IOU``; scores
    unchanged, so the CenterNet peak still ranks it. A consolidation's peak sits on the right place but its size
    regression misses the irregular outline the mask follows (on bundle 0.19.2's validation radiographs, 8 of 46
    drawn consolidations had no box at IoU 0.5), while its mask components rank worse than the peaks."""
    components: dict[str, list[DetectedBox]] = {}
    out = []
    for box in boxes:
        if box.label in labels:
            if box.label not in components:
                li = label_keys.index(box.label)
                components[box.label] = mask_component_boxes(seg[li], masks[li], box.label, 1.0)
            overlap, best = max(
                ((box_iou(c.corners, box.corners), c) for c in components[box.label]),
                key=lambda pair: pair[0],
                default=(0.0, None),
            )
            if best is not None and overlap >= OUTLINE_MIN_IOU:
                box = replace(box, x0=best.x0, y0=best.y0, x1=best.x1, y1=best.y1)
        out.append(box)
    return out


def label_share(seg: np.ndarray, box: DetectedBox, index: int, rivals: Sequence[int]) -> float:
    """How much of the focal evidence inside ``box`` is its own label's: the label's mean segmentation
    probability over the box (``seg`` (L,h,w), label ``index``) divided by the highest such mean among
    ``rivals`` (the kind's focal labels, itself included). 1 where the label leads, less where another focal
    label's mask covers the same place more strongly: on radiographs one lesion often lights up the nodule,
    mass and consolidation channels at once, and those look-alike boxes outranked true ones (on bundle 0.8.0's
    300 validation radiographs 28 of the mass boxes ranked above 90 % recall lay on consolidations, 24 on
    nodules)."""
    means = seg[(slice(None), *_box_window(box))].reshape(seg.shape[0], -1).mean(axis=1)
    return float(means[index] / max(float(means[list(rivals)].max()), 1e-6))


class BundleRunner:
    """Loads a bundle by its manifest (verifying every file's sha256) and runs it with ONNX Runtime.

    ``device``: ``"auto"`` (CUDA when onnxruntime-gpu sees a GPU, else CPU), ``"cuda"`` (same, but logs a
    warning when it has to fall back) or ``"cpu"``. ``threads``: intra-op threads (default: min(2, cores)).

    Attributes: ``manifest`` (dict), ``labels`` (list[LabelSpec], the order of every label axis),
    ``config`` (network sizes: image_size, slice_size, depth, top_k, ...), ``providers`` (what runs),
    ``bundle_sha256`` (sha256 of manifest.json, which pins every file by hash).
    """

    def __init__(
        self, model_dir: str | Path, device: str = "auto", threads: int | None = None, verify: bool = True
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        manifest_path = self.model_dir / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"no manifest.json in {self.model_dir}")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        self.bundle_sha256 = sha256_file(manifest_path)
        files = self.manifest["files"]
        if verify:
            for name, entry in files.items():
                path = self.model_dir / entry["path"]
                if not path.is_file():
                    raise BundleError(f"bundle file {name} missing: {path}")
                if sha256_file(path) != entry["sha256"]:
                    raise BundleError(f"bundle file {name} does not match its manifest sha256: {path}")
        self.config: dict[str, int] = self.manifest["config"]
        self.labels = [
            LabelSpec(
                key=lab["key"],
                code_value=lab["code"]["value"],
                code_scheme=lab["code"]["scheme"],
                code_meaning=lab["code"]["meaning"],
                name_en=lab["name_en"],
                name_zh=lab["name_zh"],
                modalities=tuple(lab["modalities"]),
                threshold=float(lab["threshold"]),
                critical=bool(lab.get("critical", False)),
                focal=bool(lab.get("focal", True)),
                outlined=bool(lab.get("outlined", True)),
            )
            for lab in self.manifest["labels"]
        ]
        self.label_keys = [lab.key for lab in self.labels]
        decoding = self.manifest.get("decoding", {})
        self.box_min_score = float(decoding.get("box_min_score", 0.3))
        # per (kind, label) decision thresholds chosen by F1 on validation phantoms of the exported graphs
        # (models.decoding); labels not listed use the label's own (chosen in training, pooled over kinds)
        self.thresholds: dict[str, dict[str, float]] = {
            kind: {key: float(t) for key, t in per_label.items()}
            for kind, per_label in decoding.get("thresholds", {}).items()
        }
        self.mask_threshold = float(decoding.get("mask_threshold", 0.5))
        # per (kind, label) segmentation thresholds chosen by Dice on validation phantoms (models.decoding);
        # labels not listed use ``mask_threshold``
        self.mask_thresholds: dict[str, dict[str, float]] = {
            kind: {key: float(t) for key, t in per_label.items()}
            for kind, per_label in decoding.get("mask_thresholds", {}).items()
        }
        # where each (kind, label)'s boxes come from: "heatmap" (CenterNet, the default) or "mask" (components
        # of the segmentation), chosen per label on validation phantoms at export (models.evaluate)
        self.box_source: dict[str, dict[str, str]] = decoding.get("box_source", {})
        # per kind, the factor a focal box's score is multiplied by where another focal label's box scores higher
        # on the same place (``demote_rivals``), chosen by box mAP on validation phantoms; kinds not listed: none
        self.rival_factor: dict[str, float] = {kind: float(f) for kind, f in decoding.get("rival_factor", {}).items()}
        # per kind, the power of its segmentation's support (``seg_support``) a focal box's score is multiplied
        # by, chosen by box mAP on validation phantoms; kinds not listed: none
        self.support_power: dict[str, float] = {kind: float(p) for kind, p in decoding.get("support_power", {}).items()}
        # per kind, the model that reads from a focal box's opacity which focal label it looks like
        # (``opacity.weigh_by_opacity``), fitted on validation phantoms; kinds not listed: none
        self.region_models: dict[str, RegionModel] = {
            kind: RegionModel.from_manifest(entry) for kind, entry in decoding.get("region_model", {}).items()
        }
        # per kind, the labels whose CenterNet boxes take the outline of the mask component they overlap
        # (``outline_by_mask``), chosen by box AP on validation phantoms; kinds not listed: none
        self.box_outline: dict[str, set[str]] = {
            kind: set(keys) for kind, keys in decoding.get("box_outline", {}).items()
        }
        # per kind, the non-focal labels whose masks do not tell the side (too few of the sides they gave on
        # validation phantoms were right): reported without one
        self.unsided: dict[str, set[str]] = {kind: set(keys) for kind, keys in decoding.get("unsided", {}).items()}
        # per (kind, focal label), the fraction of a lesion's peak input intensity that outlines it (``delineate``),
        # chosen by Dice on validation phantoms; labels not listed keep the network's mask
        self.delineation: dict[str, dict[str, float]] = {
            kind: {key: float(f) for key, f in per_label.items()}
            for kind, per_label in decoding.get("delineation", {}).items()
        }
        # per (kind, fluid label), the model-input level below which its mask's voxels are aerated lung, not fluid
        # (``fluid_only``), chosen by Dice on validation phantoms; labels not listed keep their mask
        self.fluid: dict[str, dict[str, float]] = {
            kind: {key: float(level) for key, level in per_label.items()}
            for kind, per_label in decoding.get("fluid", {}).items()
        }
        # per (kind, fluid label), the model-input range of water density (``fluid_only``'s ``band``): voxels denser
        # than it leave the mask, water-dense ones beside it join; chosen by Dice on validation phantoms
        self.fluid_band: dict[str, dict[str, tuple[float, float]]] = {
            kind: {key: (float(lo), float(hi)) for key, (lo, hi) in per_label.items()}
            for kind, per_label in decoding.get("fluid_band", {}).items()
        }
        # per (kind, round focal label), the fraction at which a lesion is outlined on the source grid to measure
        # its equivalent diameter (``inference.measure``), chosen on validation phantoms; labels not listed are
        # measured on the model grid
        self.size_fraction: dict[str, dict[str, float]] = {
            kind: {key: float(f) for key, f in per_label.items()}
            for kind, per_label in decoding.get("size_fraction", {}).items()
        }
        # and how many source pixels past the mapped mask that outline may reach (DELINEATION_REACH if not listed)
        self.size_reach: dict[str, dict[str, int]] = {
            kind: {key: int(r) for key, r in per_label.items()}
            for kind, per_label in decoding.get("size_reach", {}).items()
        }
        # and the labels whose outline is counted between the samples (``measure.interpolated_measure``): lesions
        # a few voxels across, whose whole-voxel count misses the millimetre
        self.size_subvoxel: dict[str, set[str]] = {
            kind: set(labels) for kind, labels in decoding.get("size_subvoxel", {}).items()
        }
        # and the labels measured by partial-volume analysis (``measure.partial_volume_measure``), with the density
        # of solid tissue (source units, HU) their voxels' shares are read against
        self.size_solid: dict[str, dict[str, float]] = {
            kind: {key: float(v) for key, v in per_label.items()}
            for kind, per_label in decoding.get("size_partial_volume", {}).items()
        }

        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            log.warning("DEVICE=cuda but ONNX Runtime has no CUDAExecutionProvider; running on CPU")
        providers: list[Any] = ["CPUExecutionProvider"]
        if want_cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": 0}))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sessions = {
            name: ort.InferenceSession(str(self.model_dir / files[name]["path"]), so, providers=providers)
            for name in ("enc2d", "enc3d", "dec_step")
        }
        self.providers = self.sessions["enc2d"].get_providers()
        # a decoder with the copy head (bundles from 0.9.0) takes the tokens of its cached positions
        self.copy_head = any(i.name == "past_ids" for i in self.sessions["dec_step"].get_inputs())
        # a volume graph with CT's fine-grid channels (manifest inputs.ct.dot) takes them as "dot": (N,K,D,s,s)
        # from 0.18.0, 0.17.0's one dot channel as (N,D,s,s)
        dot_input = next((i for i in self.sessions["enc3d"].get_inputs() if i.name == "dot"), None)
        self.takes_dot = dot_input is not None
        self.dot_stacked = dot_input is not None and len(dot_input.shape) == 5
        self.dot_channels = int(dot_input.shape[1]) if self.dot_stacked and dot_input is not None else 1
        # the kinds whose own fine-grid channels the graph reads (manifest inputs.<kind>.dot; PET from 0.19.0)
        self.fine_kinds = {kind for kind, spec in self.manifest.get("inputs", {}).items() if spec.get("dot")}
        log.info("model bundle %s %s on %s", self.manifest["name"], self.manifest["version"], self.providers[0])
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / files["tokenizer"]["path"]))
        special = self.manifest["special_tokens"]
        self._special: dict[str, int] = {k: int(v) for k, v in special.items()}
        self._byte_table = _unicode_to_byte()

    # ---- encoders -----------------------------------------------------------------------------------------
    def mask_threshold_of(self, kind: str, key: str) -> float:
        """The segmentation threshold of one label on one kind of image (manifest ``decoding``)."""
        return self.mask_thresholds.get(kind, {}).get(key, self.mask_threshold)

    def cores(self, kind: str, seg: np.ndarray, axis: int, present: Sequence[str]) -> dict[str, np.ndarray]:
        """Present labels masked below ``mask_threshold``: their mask at ``mask_threshold`` (see Result2D).
        Delineated labels keep theirs: the outline of a CT mass follows the soft tissue it touches (bundle 0.8.1,
        80 validation CTs: median relative size error of masses 0.20 measured on the outline, 0.09 on the core)."""
        return {
            key: np.take(seg, self.label_keys.index(key), axis=axis) >= self.mask_threshold
            for key in present
            if self.mask_threshold_of(kind, key) < self.mask_threshold
        }

    def outline(self, kind: str, masks: np.ndarray, image: np.ndarray, axis: int) -> np.ndarray:
        """``masks`` (label axis ``axis``) with each label of ``decoding.delineation`` redrawn by
        :func:`delineate` from the model input ``image`` (the masks' shape without the label axis), and each label
        of ``decoding.fluid`` kept to its fluid-dense voxels, within ``decoding.fluid_band`` where that lists it
        (:func:`fluid_only`)."""
        fractions, fluid = self.delineation.get(kind, {}), self.fluid.get(kind, {})
        if not fractions and not fluid:
            return masks
        out = masks.copy()
        for key, fraction in fractions.items():
            part = _label_slot(masks.ndim, axis, self.label_keys.index(key))
            out[part] = delineate(image, masks[part], fraction)
        bands = self.fluid_band.get(kind, {})
        for key, level in fluid.items():
            part = _label_slot(masks.ndim, axis, self.label_keys.index(key))
            out[part] = fluid_only(image, out[part], level, bands.get(key))
        return out

    def binarize(self, kind: str, seg: np.ndarray, axis: int, level: float | None = None) -> np.ndarray:
        """Segmentation probabilities -> masks, each label at its own threshold (or every label at ``level``,
        which calibration tries); ``axis`` is the label axis.

        A focal label masked below ``mask_threshold`` keeps only the parts that hold a pixel at or above it
        (hysteresis): its faint threshold draws a lesion's full extent, and faint blobs with no confident
        pixel are not lesions (at 0.02 they added findings in other lobes)."""
        shape = [1] * seg.ndim
        shape[axis] = len(self.label_keys)
        levels = np.asarray(
            [self.mask_threshold_of(kind, key) if level is None else level for key in self.label_keys], np.float32
        )
        masks = np.asarray(seg >= levels.reshape(shape))
        for li, lab in enumerate(self.labels):
            if lab.focal and levels[li] < self.mask_threshold:
                part = _label_slot(seg.ndim, axis, li)
                masks[part] = threshold_mask(seg[part], float(levels[li]), self.mask_threshold)
        return masks

    def threshold_of(self, kind: str, key: str) -> float:
        """The probability at which a label counts as present on one kind of image (manifest ``decoding``)."""
        spec = self.labels[self.label_keys.index(key)]
        return self.thresholds.get(kind, {}).get(key, spec.threshold)

    def _present(self, probs: np.ndarray, modality: str) -> list[str]:
        return [
            lab.key
            for lab, p in zip(self.labels, probs, strict=True)
            if modality in lab.modalities and float(p) >= self.threshold_of(modality, lab.key)
        ]

    def _outlined(self, present: Sequence[str]) -> list[str]:
        """The present labels that have masks: a label trained without any (cardiomegaly) still has a segmentation
        channel, whose stray pixels were reported as a "left" and a "right cardiomegaly" (bundle 0.10.1)."""
        outlined = {lab.key for lab in self.labels if lab.outlined}
        return [key for key in present if key in outlined]

    def run_2d(self, images: np.ndarray) -> list[Result2D]:
        """Radiographs ``images`` (N,S,S) float32 in [0,1] (manifest ``inputs.cxr``) -> one Result2D each."""
        images = np.asarray(images, dtype=np.float32)
        side = int(self.config["image_size"])
        if images.ndim != 3 or images.shape[1:] != (side, side):
            raise ValueError(f"run_2d expects (N,{side},{side}) float32, got {images.shape}")
        out = self._run("enc2d", {"image": images[:, None]})
        results = []
        for i in range(images.shape[0]):
            probs = out["probs"][i]
            present = self._present(probs, "cxr")
            seg = out["seg"][i]
            binary = self.outline("cxr", self.binarize("cxr", seg, axis=0), images[i], axis=0)
            heads = out["heatmap"][i], out["size"][i], out["offset"][i]
            boxes = self.boxes(
                "cxr", *heads, seg, probs, self.box_min_score, masks=binary, image=images[i], keep=present
            )
            masks = {k: binary[self.label_keys.index(k)] for k in self._outlined(present)}
            results.append(
                Result2D(
                    probabilities={k: float(p) for k, p in zip(self.label_keys, probs, strict=True)},
                    present=present,
                    boxes=boxes,
                    masks=masks,
                    mask_probs=seg,
                    embedding=out["image_embedding"][i],
                    features=DecoderFeatures(out["cross_k"][:, i : i + 1], out["cross_v"][:, i : i + 1]),
                    cores=self.cores("cxr", seg, 0, self._outlined(present)),
                )
            )
        return results

    def volume_feeds(self, volume: np.ndarray, modality: str, dot: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The volume graph's inputs for one volume (D,s,s): with fine-grid channels, a kind the manifest lists them
        for (``inputs.<kind>.dot``) must bring its own (K,D,s,s) (zeros there would read as "no lesion"; fewer than
        the graph's K are followed by zeros), another kind gets zeros whatever it brings."""
        feeds = {"volume": volume[None], "modality": np.array([MODALITY_INDEX[modality]], np.int64)}
        if self.takes_dot:
            if dot is None and modality in self.fine_kinds:
                raise ValueError(
                    f"this bundle's {modality} input takes fine-grid channels (inputs.{modality}.dot); none given"
                )
            k = self.dot_channels
            fine = np.zeros((k, *volume.shape), np.float32)
            if dot is not None and modality in self.fine_kinds:
                given = np.asarray(dot, np.float32).reshape(-1, *volume.shape)[:k]
                fine[: len(given)] = given
            feeds["dot"] = fine[None] if self.dot_stacked else fine[:1]
        return feeds

    def run_3d(self, volume: np.ndarray, modality: str, dot: np.ndarray | None = None) -> Result3D:
        """One volume ``volume`` (D,s,s) float32 in [0,1] (manifest ``inputs.ct`` / ``inputs.pet``), modality
        ``"ct"`` or ``"pet"``, CT's fine-grid channels where the bundle takes them (``volume_feeds``) -> Result3D.
        D must equal the manifest's depth (>= top_k)."""
        volume = np.asarray(volume, dtype=np.float32)
        side, depth = int(self.config["slice_size"]), int(self.config["depth"])
        if volume.shape != (depth, side, side):
            raise ValueError(f"run_3d expects ({depth},{side},{side}) float32, got {volume.shape}")
        if modality not in ("ct", "pet"):
            raise ValueError(f"run_3d modality must be ct or pet, got {modality!r}")
        out = self._run("enc3d", self.volume_feeds(volume, modality, dot))
        probs = out["probs"][0]
        present = self._present(probs, modality)
        seg = out["seg"][0]  # (D,L,s,s)
        binary = self.outline(modality, self.binarize(modality, seg, axis=1), volume, axis=1)
        boxes: list[DetectedBox] = []
        for z in range(depth):
            heads = out["heatmap"][0, z], out["size"][0, z], out["offset"][0, z]
            for b in self.boxes(modality, *heads, seg[z], probs, self.box_min_score, masks=binary[z], keep=present):
                boxes.append(DetectedBox(b.label, b.score, b.x0, b.y0, b.x1, b.y1, z=z))
        boxes.sort(key=lambda b: -b.score)
        masks = {k: binary[:, self.label_keys.index(k)] for k in self._outlined(present)}
        return Result3D(
            probabilities={k: float(p) for k, p in zip(self.label_keys, probs, strict=True)},
            present=present,
            slice_probabilities=out["slice_probs"][0],
            relevance=out["relevance"][0],
            top_slices=[int(z) for z in out["top_slices"][0]],
            boxes=boxes,
            masks=masks,
            mask_probs=seg,
            embedding=out["image_embedding"][0],
            features=DecoderFeatures(out["cross_k"], out["cross_v"]),
            cores=self.cores(modality, seg, 1, self._outlined(present)),
        )

    def boxes(
        self,
        kind: str,
        heat: np.ndarray,
        size: np.ndarray,
        offset: np.ndarray,
        seg: np.ndarray,
        probs: np.ndarray,
        min_score: float,
        max_per_label: int = 5,
        source: str | None = None,
        masks: np.ndarray | None = None,
        image: np.ndarray | None = None,
        keep: Collection[str] | None = None,
    ) -> list[DetectedBox]:
        """Boxes of every label on one image or slice, best first: CenterNet peaks (``min_score``, at most
        ``max_per_label``) or, for labels whose manifest ``box_source`` is "mask", the components of the
        segmentation at the mask threshold (the box then outlines the mask the SEG shows), falling back to the
        peaks where that mask is empty. ``source`` forces one way for all labels (export compares them).
        ``masks`` (L,h,w) bool: the image's masks as :meth:`binarize` made them (a volume's slice of its 3D
        masks); by default this image's own. Where the kind has several focal labels, a focal box's score is
        multiplied by its :func:`label_share`, so a box on another label's lesion ranks below the label's own; on a
        kind with a ``support_power``, by its :func:`seg_support` to that power, so a peak its own mask does not
        back ranks below one it does; on a kind with a region model and given its model-input ``image``, by what
        the opacity in it looks like (:func:`~dicom_agent.inference.opacity.weigh_by_opacity`). The boxes of the
        kind's ``box_outline`` labels then take their mask's outline (:func:`outline_by_mask`). ``keep``: only
        these labels' boxes are returned (and weighed); the others still demote their rivals."""
        sources = self.box_source.get(kind, {})
        if masks is None:
            masks = self.binarize(kind, seg, axis=0)
        peaks = decode_centernet(heat, size, offset, self.label_keys, seg.shape[-1], min_score, max_per_label)
        focal = [i for i, lab in enumerate(self.labels) if lab.focal and kind in lab.modalities]
        out: list[DetectedBox] = []
        for li, key in enumerate(self.label_keys):
            from_mask = []
            if (source or sources.get(key, "heatmap")) == "mask":
                from_mask = mask_component_boxes(seg[li], masks[li], key, float(probs[li]))
            found = from_mask or [b for b in peaks if b.label == key]
            if li in focal and len(focal) > 1:
                found = [replace(b, score=b.score * label_share(seg, b, li, focal)) for b in found]
            if li in focal and kind in self.support_power:
                power = self.support_power[kind]
                found = [replace(b, score=b.score * seg_support(seg, b, li) ** power) for b in found]
            out += found
        if kind in self.rival_factor:
            out = demote_rivals(out, {self.label_keys[li] for li in focal}, self.rival_factor[kind])
        if keep is not None:
            out = [b for b in out if b.label in keep]
        if image is not None and kind in self.region_models:
            out = weigh_by_opacity(out, image, self.region_models[kind])
        if kind in self.box_outline:  # after every weighing: the peak's own box ranks it, the mask outlines it
            out = outline_by_mask(out, seg, masks, self.box_outline[kind], self.label_keys)
        out.sort(key=lambda b: -b.score)
        return out

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))

    # ---- decoder ------------------------------------------------------------------------------------------
    @property
    def takes_findings(self) -> bool:
        """Whether the bundle's decoder was trained with the findings text in its prompt (manifest ``context``)."""
        return "context" in self.manifest["prompts"]

    @property
    def takes_uptake(self) -> bool:
        """Whether that findings text carried each PET lesion's SUVmax in training (manifest
        ``prompts.context_uptake``, since 0.10.0); older decoders get the text they were trained on."""
        return bool(self.manifest["prompts"].get("context_uptake", False))

    @property
    def takes_answer_forms(self) -> bool:
        """Whether that findings text worded each answer as its question asks it (counts, both sides, the largest
        alone, English sides after the name; manifest ``prompts.context_answer_forms``, since 0.13.0)."""
        return bool(self.manifest["prompts"].get("context_answer_forms", False))

    def prompt_ids(self, task: str, lang: str, question: str | None = None, findings: str | None = None) -> list[int]:
        """``<bos> <task> <lang> [findings text] instruction <sep>`` with the manifest's inference templates;
        ``findings`` is used only by bundles that take it."""
        if task not in ("report", "vqa") or lang not in ("en", "zh"):
            raise ValueError(f"unsupported task/lang {task}/{lang}")
        if task == "vqa" and not question:
            raise ValueError("vqa needs a question")
        prompts = self.manifest["prompts"]
        text = prompts[task][lang].format(question=question or "")
        if findings is not None and self.takes_findings:
            text = prompts["context"][lang].format(findings=findings, instruction=text)
        sp = self._special
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [sp["<bos>"], sp[f"<{task}>"], sp[f"<{lang}>"], *ids, sp["<sep>"]]

    def generate_ids(self, features: DecoderFeatures, prompt: list[int], max_tokens: int = 96) -> list[int]:
        """Greedy decoding with the KV cache: the prompt goes in one step with an empty past (length 0)."""
        cfg = self.config
        layers, heads, dh = cfg["dec_layers"], cfg["heads"], cfg["d"] // cfg["heads"]
        past_k = np.zeros((layers, 1, heads, 0, dh), np.float32)
        past_v = np.zeros_like(past_k)
        eos = self._special["<eos>"]
        budget = min(max_tokens, int(cfg["max_len"]) - len(prompt))
        ids = np.asarray([prompt], dtype=np.int64)
        out: list[int] = []
        sess = self.sessions["dec_step"]
        copies = self.copy_head
        seen = np.zeros((1, 0), np.int64)  # tokens of the cached positions, for a decoder that copies
        for _ in range(max(budget, 0)):
            feeds = {
                "input_ids": ids,
                "cross_k": features.cross_k,
                "cross_v": features.cross_v,
                "past_k": past_k,
                "past_v": past_v,
            }
            if copies:
                feeds["past_ids"] = seen
            logits, past_k, past_v = sess.run(["logits", "present_k", "present_v"], feeds)
            nxt = int(np.argmax(logits[0]))
            if nxt == eos:
                break
            out.append(nxt)
            seen = np.concatenate([seen, ids], axis=1)
            ids = np.asarray([[nxt]], dtype=np.int64)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text; special tokens skipped, an incomplete trailing UTF-8 sequence dropped."""
        specials = set(self._special.values())
        data = bytearray()
        for i in ids:
            if int(i) in specials:
                continue
            piece = self.tokenizer.id_to_token(int(i)) or ""
            data.extend(self._byte_table[ch] for ch in piece if ch in self._byte_table)
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(data), final=False)

    def generate(
        self,
        features: DecoderFeatures,
        task: str,
        lang: str,
        question: str | None = None,
        max_tokens: int = 96,
        findings: str | None = None,
    ) -> str:
        """Text for one image/volume: ``task`` "report" (narrative) or "vqa" (needs ``question``), ``lang``
        "en" or "zh", ``findings`` the rendered findings text the answer should bind to. Greedy, deterministic."""
        prompt = self.prompt_ids(task, lang, question, findings)
        return self.decode(self.generate_ids(features, prompt, max_tokens))


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte -> printable-unicode table of the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}
