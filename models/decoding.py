"""How the exported graphs' raw outputs become masks and boxes: per-label settings chosen on validation phantoms.

Run on the exported graphs (ONNX Runtime, exactly what the node runs), at export and by ``dicom-agent model
calibrate`` (which needs no checkpoint, so a committed bundle can be re-calibrated):

- ``mask_thresholds``: per kind and label, the segmentation threshold with the best mean Dice on the
  validation cases showing that label (a focal label's faint parts count only where they touch a pixel at the
  default threshold: hysteresis, ``BundleRunner.binarize``). A fixed 0.5 left thin or faint findings empty:
  on bundle 0.6.0's 300 validation radiographs pneumothorax Dice was 0.000 at 0.5 and 0.262 at 0.02,
  effusion 0.514 and 0.668 at 0.05, masses 0.703 and 0.759 at 0.02.
- ``delineation``: per kind and focal label, the fraction of a lesion's peak input intensity that outlines it
  (``onnx_runner.delineate``: the half-maximum rule of PET and CT lesion delineation) where that beats the
  network's own mask (as thresholded above) by ``MASK_MARGIN`` mean Dice on the validation cases showing the
  label. Bundle 0.8.1 (0.8.0's graphs), 300 validation cases per kind: PET lesions 0.673 -> 0.791 at 0.5, CT
  nodules 0.399 -> 0.499, masses 0.761 -> 0.779, consolidations 0.612 -> 0.714 (each at 0.5), radiograph nodules
  0.803 -> 0.872 (0.7) and masses 0.871 -> 0.904 (0.6). The phantoms draw a lesion as a
  smooth bump whose edge lies near half its peak (PET lesions exactly at half), so the rule suits them by
  construction; on real images it is the clinical convention, not a guarantee.
- ``fluid`` and ``fluid_band``: per fluid label (the CT pleural effusion), the model-input level below which its
  mask's voxels are aerated lung (session 23), then the water-density band within which it is kept (voxels denser
  than it leave the mask, water-dense ones beside it join: ``onnx_runner.fluid_only``), each where it gains
  ``MASK_MARGIN`` mean Dice. Bundle 0.12.0, 300 validation CTs: the level alone 0.573, within water ± 30 HU 0.738
  (the masks strayed onto the chest wall, 40 HU in the phantoms, and short of the fluid, 10 HU). Since session 35
  the band is tried at the label's best level even where that level alone gained too little (bundle 0.18.0: the
  network's masks 0.571, level 0.4 alone 0.581, within water ± 30 HU 0.746).
- ``box_source``: per kind and focal label, "mask" where boxes from the segmentation's components (as masked
  above) reach a higher AP@0.5 than the CenterNet peaks, else the peaks (the default). AP on a few dozen
  lesions is noisy: 150 validation cases chose masks for radiograph nodules (AP 0.578 vs 0.533), 300 chose the
  peaks (0.588 vs 0.506), hence 300 by default.
- ``rival_factor``: per kind, the factor a focal box's score is multiplied by where another focal label's box
  scores higher on the same place (``onnx_runner.demote_rivals``), where that gains ``BOX_SOURCE_MARGIN`` box
  mAP@0.5. Bundle 0.18.0, 300 validation radiographs: mAP 0.794 -> 0.832 at 0.7 (consolidation AP 0.562 -> 0.678:
  its false boxes lay on masses); CT 0.500 -> 0.502 at best and PET unchanged, so none for them.
- ``region_model``: per kind of ``REGION_KINDS`` (radiographs), a multinomial logistic regression from the shape
  and texture of the opacity in a focal box to the focal label it looks like (``opacity.weigh_by_opacity``: a box
  whose opacity looks like another label's ranks lower), fitted on the boxes of ``REGION_CASES_FACTOR`` x the
  calibration's validation phantoms that lie on a drawn lesion, with the power of its factor chosen by box mAP@0.5
  on the calibration's cases; kept where that gains ``BOX_SOURCE_MARGIN``. Bundle 0.19.0's graphs, 300 validation
  radiographs: mAP 0.798 -> 0.885 at power 1 (held out 0.782 -> 0.873; docs/model.md).
- ``support_power``: per kind, the power of a focal box's support by its label's own segmentation (the 90th
  percentile of its probability over the box, ``onnx_runner.seg_support``) its score is multiplied by, where that
  gains ``BOX_SOURCE_MARGIN`` box mAP@0.5, chosen last (with the rival factor and the region model in place: what
  is left above true boxes then is peaks on nothing; session 40). Bundle 0.19.1, 300 validation radiographs: mAP
  0.885 -> 0.909 at power 0.5 (consolidation 0.779 -> 0.827: CenterNet peaks on the soft tissue beside and below
  the lungs, where the consolidation channel is faint but no other focal label's is); CT 0.435 -> 0.456 at power 2;
  PET 0.562 -> 0.565, so none.
- ``box_outline``: per kind, the focal labels whose CenterNet boxes are drawn as the outline of the mask component
  they overlap (``onnx_runner.outline_by_mask``; the peak still ranks the box), where that gains
  ``BOX_SOURCE_MARGIN`` box AP@0.5; labels whose boxes come from their masks are not tried. Measured on every
  case the calibration draws for the kind (900 radiographs: on 300-case sets it moved consolidation AP -0.011 to
  +0.09; session 41). Bundle 0.19.2, 900 validation radiographs: consolidation AP 0.822 -> 0.870.
- ``size_fraction``: per kind and round focal label (nodule, mass, PET lesion: the phantoms draw their sizes as
  diameters), the fraction of a lesion's peak at which the runtime outlines it on the *source* grid to measure its
  equivalent diameter (``inference.measure``), where that states the phantom's largest lesion to the whole mm
  more often than the model-grid measurement by ``SIZE_MARGIN``. Chosen by :func:`choose_size_fractions`, which
  runs the node's adapter on phantoms written as DICOM (the source grid is only there). Bundle 0.10.0's graphs,
  100 validation cases per kind (largest lesion stated to the mm, model grid → chosen): radiograph nodules 0.19 →
  0.52 (at 0.6), masses 0.10 → 0.80 (0.6); CT nodules 0.00 → 0.38 (0.7), masses 0.13 → 0.33 (0.5); PET lesions
  0.04 → 0.22 (0.5). Since bundle 0.11.0 also how far past the mapped mask the outline may grow (``size_reach``, 0–2
  source pixels; 2 unless listed): 0.11.0's network finds CT masses against the chest wall, and an outline that
  may grow 2 pixels takes in the wall's soft tissue (every level alike: 20–60 HU against 40 HU).
  Since session 29 also whether the outline is counted between the samples (``size_subvoxel``: the values
  interpolated onto ~1 mm cells, ``measure.interpolated_measure``) and levels 0.45 and 0.55 besides; PET SUVs are
  measured unclipped. Bundle 0.14.0's graphs, 300 validation cases per kind (0.14.0's choice → 0.14.1's): PET
  lesions 0.420 → 0.701 (0.45 between the samples), CT nodules 0.337 → 0.380 (0.55 within 0 px, between), CT masses
  0.205 → 0.308 (0.6 within 0 px, between), radiograph nodules 0.517 (0.6, whole pixels, unchanged), radiograph
  masses model grid 0 → 0.591 (0.6; 22 cases, too few among 100 before).
  Since session 31 also by partial-volume analysis (``size_partial_volume``: each voxel's share of solid tissue,
  ``measure.partial_volume_measure``; CT only, the phantoms' nodules and masses drawn with partial volume since
  then). Bundle 0.16.0's graphs, 300 validation cases (best whole pixels → between → partial volume): CT nodules
  0.398 → 0.398 → 0.409 (0.45 within 1 px), masses 0.262 → 0.286 → 0.357 (0.3 within 0 px).
- ``thresholds``: per kind and label, the probability at which the label counts as present: the best F1 on the
  validation cases (the threshold training chooses is pooled over the kinds a label applies to, and radiographs
  and CT are not calibrated alike). Bundle 0.10.1's graphs, 300 validation cases per kind, F1 pooled → per kind:
  radiograph nodules 0.880 → 0.911 (0.25 → 0.43), masses 0.688 → 0.747, pneumothorax 0.866 → 0.915, cardiomegaly
  0.963 → 1.000; CT masses 0.617 → 0.627, effusion 0.901 → 0.919.
- ``unsided``: per kind, the non-focal labels (effusion, pneumothorax) whose masks do not tell the side: on
  the validation cases showing the label, fewer than ``SIDE_MIN_PRECISION`` of the sides the runtime would
  state from the mask are right. Such a finding is reported without a side rather than on a guessed or on
  both sides (a faint pneumothorax mask spreads over both lungs; CT effusion masks miss the fluid).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dicom_agent.inference.onnx_runner import DELINEATION_REACH, box_iou, delineate, fluid_only
from dicom_agent.inference.opacity import FEATURES, RegionModel, high_pass, opacity_features
from models.dataset import Sample, in_chunks, make_samples, sample_pool
from models.evaluate import decode, dice, raw_outputs, structured_metrics
from models.labels import KINDS, LABEL_KEYS, label_mask
from models.preprocess import CT_WINDOW
from models.terminology import LABELS
from models.train import VAL_SEED, best_f1_threshold

log = logging.getLogger(__name__)

MASK_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MASK_MIN_CASES = 5  # fewer validation cases showing a label keep the default threshold
MASK_MARGIN = 0.01  # mean Dice a threshold must gain over the default to replace it
MASK_MIN_DICE = 0.1  # below this at every level the masks miss the finding: no threshold is worth choosing
SIDE_MIN_PRECISION = 0.75  # a non-focal label states a side only if 3 in 4 of its validation sides were right
DELINEATION_LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7)
# labels that are fluid by definition, on the kinds whose input intensity is density (CT HU), and the model-input
# levels below which their masks' voxels may be taken for aerated lung (0.3-0.6 of the -1000..400 HU window)
FLUID_LABELS = {"ct": ("pleural_effusion",)}
FLUID_LEVELS = (0.3, 0.4, 0.5, 0.6)
# half-widths (HU) of the water-density bands tried for those labels (``fluid_only``'s ``band``: water ± this),
# on the CT window the model input maps to [0, 1]: fluid 0-20 HU, chest wall muscle 40-60 HU
FLUID_BAND_HU = (20.0, 25.0, 30.0, 35.0)
BOX_SOURCES = ("heatmap", "mask")
BOX_SOURCE_MARGIN = 0.02  # AP@0.5 a mask-derived box must gain over the CenterNet peaks to be chosen
# powers tried for a focal box's segmentation support (``onnx_runner.seg_support``)
SUPPORT_POWERS = (0.5, 1.0, 2.0)
# factors tried for a focal box beaten on its place by another focal label's (``demote_rivals``); 1 = none
RIVAL_FACTORS = (0.85, 0.7, 0.5, 0.35)
# kinds whose focal boxes are weighed by what their opacity looks like (``opacity.weigh_by_opacity``), the
# validation phantoms its region model is fitted on (the calibration's cases and the next ones: in the exploration
# before it, a model fitted on 300 radiographs labelled 0.955 of their boxes and 0.923 of another 300's, one
# fitted on 900 0.934 of both), and the powers tried for its factor
REGION_KINDS = ("cxr",)
REGION_CASES_FACTOR = 3  # x the calibration's cases (300 -> 900)
REGION_MIN_BOXES = 5  # fewer boxes on a label's drawn lesions (a smoke model's) fit no model
REGION_POWERS = (0.5, 1.0, 2.0)
REGION_L2 = 0.01  # ridge penalty of the region model's fit, on standardised features
SIZE_LEVELS = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
# source pixels past the mapped mask a size outline may reach; the runtime's DELINEATION_REACH (2) is the default
SIZE_REACHES = (0, 1, 2)
# how the outline is counted (``inference.measure``): by whole pixels, between the samples
# (``interpolated_measure``) or by the share of solid tissue each pixel holds (``partial_volume_measure``: on
# kinds whose source values are densities, CT)
SIZE_COUNTS = ("pixels", "between", "partial")
# what a partial-volume count measures a lesion's shares against: solid soft tissue (the phantoms draw CT nodules
# and masses at 20-60 HU; 20 HU off moves a share by 2 % against aerated lung at -850)
SOLID_TISSUE_HU = 40.0
SIZE_MARGIN = 0.05  # share of validation cases stated to the mm a source-grid size must gain over the model grid's
SIZE_MIN_CASES = 8  # fewer validation cases with a label both drawn and found keep the model-grid size
# validation phantoms per kind the size outlines are chosen on: with 100, 42 options picked on ~30 CT nodules
# chose one that stated fewer held-out sizes than the option before (session 29, docs/model.md)
SIZE_CASES = 300


def _mean_dice(
    scores: dict[str, list[list[float]]], names: list[str]
) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    """Per label shown by at least ``MASK_MIN_CASES`` validation cases: the mean Dice of each option (rows are
    cases, columns options) and the same as a table by option name, for the manifest."""
    out: dict[str, tuple[np.ndarray, dict[str, float]]] = {}
    for key, rows in scores.items():
        if len(rows) >= MASK_MIN_CASES:
            mean = np.asarray(rows).mean(axis=0)
            out[key] = (mean, {name: round(float(m), 4) for name, m in zip(names, mean, strict=True)})
    return out


def choose_mask_thresholds(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per label of the samples' kind: the level of ``MASK_LEVELS`` with the best mean Dice over the cases that
    show the label, on the masks the runtime draws at that level (``BundleRunner.binarize``), kept only when it
    beats the runner's default by ``MASK_MARGIN`` and reaches ``MASK_MIN_DICE``.
    Returns (chosen, mean Dice per level and label)."""
    kind = samples[0].kind
    axis = 0 if kind == "cxr" else 1  # label axis of the raw segmentation: (L,S,S) or (D,L,s,s)
    default = runner.mask_threshold
    levels = sorted({*MASK_LEVELS, default})
    keys = [(li, key) for li, key in enumerate(LABEL_KEYS) if label_mask(kind)[li]]
    scores: dict[str, list[list[float]]] = {key: [] for _, key in keys}
    for sample, raw in zip(samples, raws, strict=True):
        shown = [(li, key) for li, key in keys if (sample.cls == li + 1).any()]
        if not shown:
            continue
        masks = [runner.binarize(kind, raw["seg"], axis, level) for level in levels]
        for li, key in shown:
            scores[key].append([dice(np.take(m, li, axis=axis), sample.cls == li + 1) for m in masks])
    chosen: dict[str, float] = {}
    table: dict[str, dict[str, float]] = {}
    for key, (mean, row) in _mean_dice(scores, [f"{level:g}" for level in levels]).items():
        table[key] = row
        best = int(np.argmax(mean))
        if mean[best] >= MASK_MIN_DICE and mean[best] > mean[levels.index(default)] + MASK_MARGIN:
            chosen[key] = levels[best]
        log.info(
            "mask threshold %s %s: Dice %.3f at %g (default %.3f)",
            kind,
            key,
            mean[best],
            levels[best],
            mean[levels.index(default)],
        )
    return chosen, table


def choose_delineation(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per focal label of the samples' kind: the level of ``DELINEATION_LEVELS`` whose delineated masks have the
    best mean Dice over the cases showing the label, kept only when it beats the network's masks (at the runner's
    thresholds) by ``MASK_MARGIN``. Returns (chosen, mean Dice per level and label; "mask" = the network's)."""
    kind = samples[0].kind
    keys = [(li, key) for li, key in enumerate(LABEL_KEYS) if label_mask(kind)[li] and LABELS[key].focal]
    return _choose_redrawing(runner, samples, raws, keys, DELINEATION_LEVELS, delineate, "delineation")


def choose_fluid(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per fluid label of the samples' kind (``FLUID_LABELS``): the level of ``FLUID_LEVELS`` whose
    :func:`~dicom_agent.inference.onnx_runner.fluid_only` masks have the best mean Dice over the cases showing the
    label, kept only when it beats the masks as drawn by ``MASK_MARGIN``. Returns (chosen, mean Dice per level
    and label; "mask" = as drawn)."""
    keys = [(LABEL_KEYS.index(key), key) for key in FLUID_LABELS.get(samples[0].kind, ())]
    return _choose_redrawing(runner, samples, raws, keys, FLUID_LEVELS, fluid_only, "fluid") if keys else ({}, {})


def water_band(half_width_hu: float, window: tuple[float, float] = CT_WINDOW) -> tuple[float, float]:
    """Water density ± ``half_width_hu`` as a model-input range (the CT window maps HU to [0, 1])."""
    lo, hi = window
    return (round((-half_width_hu - lo) / (hi - lo), 4), round((half_width_hu - lo) / (hi - lo), 4))


def choose_fluid_bands(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]], levels: dict[str, float] | None = None
) -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, float]]]:
    """Per fluid label of ``levels`` (default: those the runner keeps to a fluid level, ``runner.fluid``): the
    water-density band (``FLUID_BAND_HU``) whose :func:`~dicom_agent.inference.onnx_runner.fluid_only` masks at
    the label's level have the best mean Dice, kept only when it beats the masks the runner draws now (the level
    alone where the runner keeps one, else the network's) by ``MASK_MARGIN``. A band is tried on a level that
    gained too little alone: for bundle 0.18.0 the level alone gained 0.009, within the band more. Returns
    (chosen bands, mean Dice per band half-width and label; "mask" = the runner's masks)."""
    kind = samples[0].kind
    kept = runner.fluid.get(kind, {})
    levels = kept if levels is None else levels
    keys = [(LABEL_KEYS.index(key), key) for key in FLUID_LABELS.get(kind, ()) if key in levels]
    chosen: dict[str, tuple[float, float]] = {}
    table: dict[str, dict[str, float]] = {}
    for li, key in keys:  # one label at a time: each has its own level
        level = levels[key]
        widths, row = _choose_redrawing(
            runner,
            samples,
            raws,
            [(li, key)],
            FLUID_BAND_HU,
            _within_water(level),
            "fluid band",
            base=functools.partial(fluid_only, level=kept[key]) if key in kept else None,
        )
        table.update(row)
        if key in widths:
            chosen[key] = water_band(widths[key])
    return chosen, table


def best_option(row: dict[str, float]) -> float:
    """The level of a calibration table's row (mean Dice by option name, "mask" = as drawn) with the best Dice."""
    return float(max((name for name in row if name != "mask"), key=row.__getitem__))


def _within_water(level: float) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    """``fluid_only`` at ``level`` within water ± a half-width (HU), as ``_choose_redrawing`` calls a redrawing."""

    def redraw(image: np.ndarray, mask: np.ndarray, width: float) -> np.ndarray:
        return fluid_only(image, mask, level, water_band(width))

    return redraw


def _choose_redrawing(
    runner: Any,
    samples: list[Sample],
    raws: list[dict[str, Any]],
    keys: list[tuple[int, str]],
    levels: tuple[float, ...],
    redraw: Callable[[np.ndarray, np.ndarray, float], np.ndarray],
    what: str,
    base: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per label of ``keys`` ((index, key)): the level at which ``redraw(model input, mask, level)`` gives the best
    mean Dice over the cases showing the label, kept only where it beats the network's masks (at the runner's
    thresholds; ``base(model input, mask)`` of them if given) by ``MASK_MARGIN``. Returns (chosen, mean Dice per
    level and label; "mask" = the network's, or their ``base``)."""
    kind = samples[0].kind
    axis = 0 if kind == "cxr" else 1  # label axis of the raw segmentation: (L,S,S) or (D,L,s,s)
    scores: dict[str, list[list[float]]] = {key: [] for _, key in keys}
    for sample, raw in zip(samples, raws, strict=True):
        masks = runner.binarize(kind, raw["seg"], axis)
        for li, key in keys:
            truth = sample.cls == li + 1
            if not truth.any():
                continue
            mask = np.take(masks, li, axis=axis)
            redrawn = [redraw(raw["image"], mask, level) for level in levels]
            mask = base(raw["image"], mask) if base is not None else mask
            scores[key].append([dice(m, truth) for m in (mask, *redrawn)])
    chosen: dict[str, float] = {}
    table: dict[str, dict[str, float]] = {}
    names = ["mask", *(f"{level:g}" for level in levels)]
    for key, (mean, row) in _mean_dice(scores, names).items():
        table[key] = row
        best = int(np.argmax(mean[1:]))
        if mean[1 + best] > mean[0] + MASK_MARGIN:
            chosen[key] = levels[best]
        log.info("%s %s %s: Dice %.3f at %s (mask %.3f)", what, kind, key, mean[1 + best], names[1 + best], mean[0])
    return chosen, table


def choose_unsided(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[list[str], dict[str, float]]:
    """Non-focal labels of the samples' kind whose masks (at the runner's thresholds) give sides that are right
    less than ``SIDE_MIN_PRECISION`` of the time on the cases showing the label (sides as the runtime draws them,
    ``bundle_adapter._sides``; truth: the lesions' sides). Returns (unsided labels, precision per label)."""
    from dicom_agent.inference.bundle_adapter import _sides

    kind = samples[0].kind
    axis = 0 if kind == "cxr" else 1
    stated: dict[str, int] = {}
    right: dict[str, int] = {}
    for sample, raw in zip(samples, raws, strict=True):
        masks = runner.binarize(kind, raw["seg"], axis=axis)
        for li, key in enumerate(LABEL_KEYS):
            if not label_mask(kind)[li] or LABELS[key].focal or not (sample.cls == li + 1).any():
                continue
            mask = np.take(masks, li, axis=axis)
            truth = {lesion[2] for lesion in sample.extra["lesions"] if lesion[0] == key}  # type: ignore[attr-defined]
            said = {side for side, _ in _sides(mask, mask.shape[-1] / 2)}
            stated[key] = stated.get(key, 0) + len(said)
            right[key] = right.get(key, 0) + len(said & truth)
    precision = {key: round(right[key] / n, 4) for key, n in stated.items() if n >= MASK_MIN_CASES}
    return [key for key, p in precision.items() if p < SIDE_MIN_PRECISION], precision


def choose_box_sources(runner: Any, samples: list[Sample], raws: list[dict[str, Any]]) -> dict[str, str]:
    """Per focal label of the samples' kind: "mask" where the segmentation's components (at the runner's
    thresholds) give a higher AP@0.5 than the CenterNet peaks by ``BOX_SOURCE_MARGIN``."""
    kind = samples[0].kind
    ap = {source: _decoded_metrics(runner, samples, raws, source) for source in BOX_SOURCES}
    chosen: dict[str, str] = {}
    for key, entry in ap["heatmap"]["per_label"].items():
        if entry.get("ap50") is None:
            continue
        by_mask = ap["mask"]["per_label"][key]["ap50"]
        if by_mask > entry["ap50"] + BOX_SOURCE_MARGIN:
            chosen[key] = "mask"
        log.info("box source %s %s: AP heatmap %.3f, mask %.3f", kind, key, entry["ap50"], by_mask)
    return chosen


def _decoded_metrics(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]], box_source: str | None = None
) -> dict[str, Any]:
    """:func:`~models.evaluate.structured_metrics` of the samples as the runner decodes them now (``box_source``
    forcing one box source for every label), at the default thresholds: the box choices read its APs."""
    return structured_metrics(samples, [decode(runner, samples[0].kind, raw, box_source) for raw in raws], {})


def _box_map(runner: Any, samples: list[Sample], raws: list[dict[str, Any]]) -> float:
    """Box mAP@0.5 of the samples as the runner decodes them now, to the 4 decimals the calibration tables keep."""
    return round(float(_decoded_metrics(runner, samples, raws)["map50"] or 0.0), 4)


def _sweep_box_map(
    runner: Any,
    samples: list[Sample],
    raws: list[dict[str, Any]],
    setting: dict[str, Any],
    options: tuple[float, ...],
    none: str,
    what: str,
    entry: Callable[[float], Any] = float,
) -> tuple[float | None, dict[str, float]]:
    """The option of ``options`` that, set as the samples' kind's entry of the runner's ``setting`` (as ``entry``
    makes it of the option), gives the best box mAP@0.5, kept only when it beats no entry (the table's ``none``
    column) by ``BOX_SOURCE_MARGIN``. Returns (chosen or None, mAP per option)."""
    kind = samples[0].kind
    table = {none: _box_map(runner, samples, raws)}
    for option in options:
        setting[kind] = entry(option)
        table[f"{option:g}"] = _box_map(runner, samples, raws)
    del setting[kind]
    best = max(options, key=lambda o: table[f"{o:g}"])
    log.info("%s %s: mAP %.3f at %g (none %.3f)", what, kind, table[f"{best:g}"], best, table[none])
    return (best if table[f"{best:g}"] > table[none] + BOX_SOURCE_MARGIN else None), table


def choose_support_power(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[float | None, dict[str, float]]:
    """The power of ``SUPPORT_POWERS`` of a focal box's support by its own segmentation
    (:func:`~dicom_agent.inference.onnx_runner.seg_support`) that gives the best box mAP@0.5 on the samples' kind,
    kept only when it beats none by ``BOX_SOURCE_MARGIN`` (the runner's box sources, rival factor and region model
    in place). Returns (chosen or None, mAP per power; "none")."""
    return _sweep_box_map(runner, samples, raws, runner.support_power, SUPPORT_POWERS, "none", "support power")


def choose_rival_factor(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[float | None, dict[str, float]]:
    """The factor of ``RIVAL_FACTORS`` by which a focal box beaten on its place by another focal label's
    (:func:`~dicom_agent.inference.onnx_runner.demote_rivals`) gives the best box mAP@0.5 on the samples' kind,
    kept only when it beats no demotion by ``BOX_SOURCE_MARGIN`` (the runner's box sources in place). Returns
    (chosen or None, mAP per factor; "1" = none)."""
    return _sweep_box_map(runner, samples, raws, runner.rival_factor, RIVAL_FACTORS, "1", "rival factor")


def _label_aps(runner: Any, samples: list[Sample], raws: list[dict[str, Any]]) -> dict[str, float]:
    """Box AP@0.5 per focal label of the samples' kind as the runner decodes them now (4 decimals)."""
    return {
        key: round(float(entry["ap50"]), 4)
        for key, entry in _decoded_metrics(runner, samples, raws)["per_label"].items()
        if entry.get("ap50") is not None and LABELS[key].focal
    }


def choose_box_outlines(
    runner: Any, samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The focal labels of the samples' kind whose CenterNet boxes, drawn as the outline of the mask component
    they overlap (:func:`~dicom_agent.inference.onnx_runner.outline_by_mask`), gain ``BOX_SOURCE_MARGIN`` box
    AP@0.5 (labels whose boxes come from their masks already are not tried). Outlining one label's boxes moves no
    other label's, so all are measured in one pass. Returns (chosen, {label: {"peaks", "outlined"}})."""
    kind = samples[0].kind
    sources = runner.box_source.get(kind, {})
    peaks = {key: ap for key, ap in _label_aps(runner, samples, raws).items() if sources.get(key) != "mask"}
    if not peaks:
        return [], {}
    runner.box_outline[kind] = set(peaks)
    outlined = _label_aps(runner, samples, raws)
    del runner.box_outline[kind]
    table = {key: {"peaks": ap, "outlined": outlined[key]} for key, ap in peaks.items()}
    chosen = [key for key, ap in peaks.items() if outlined[key] > ap + BOX_SOURCE_MARGIN]
    for key, row in table.items():
        log.info("box outline %s %s: AP peaks %.3f, outlined %.3f", kind, key, row["peaks"], row["outlined"])
    return chosen, table


def region_examples(runner: Any, samples: list[Sample], raws: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """The opacity features (:func:`~dicom_agent.inference.opacity.opacity_features`) of every focal box the runner
    decodes on ``samples`` that lies on a drawn focal lesion (IoU >= 0.5 with its box), and that lesion's label."""
    kind = samples[0].kind
    focal = {key for key, keep in zip(LABEL_KEYS, label_mask(kind), strict=True) if keep and LABELS[key].focal}
    rows: list[np.ndarray] = []
    truth: list[str] = []
    for sample, raw in zip(samples, raws, strict=True):
        texture = high_pass(raw["image"])
        drawn = [(LABEL_KEYS[li], box) for _z, li, *box in sample.boxes if LABEL_KEYS[li] in focal]
        for _score, _z, label, box in decode(runner, kind, raw)["dets"]:
            if label not in focal or not drawn:
                continue
            overlap, key = max((box_iou(box, b), k) for k, b in drawn)
            if overlap >= 0.5:
                rows.append(opacity_features(raw["image"], texture, box))
                truth.append(key)
    return (np.stack(rows) if rows else np.empty((0, len(FEATURES)))), truth


def fit_region_model(features: np.ndarray, truth: list[str], labels: tuple[str, ...]) -> RegionModel:
    """Multinomial logistic regression of ``truth`` (each one of ``labels``) on ``features`` (N, F): standardised
    (missing values at the mean), ridge ``REGION_L2``, full-batch gradient descent from zero (deterministic)."""
    mean, std = np.nanmean(features, axis=0), np.nanstd(features, axis=0) + 1e-6
    z = np.nan_to_num((features - mean) / std)
    z = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    target = np.eye(len(labels))[[labels.index(t) for t in truth]]
    weights = np.zeros((z.shape[1], len(labels)))
    for _ in range(3000):
        logits = z @ weights
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        weights -= 0.5 * (z.T @ (p - target) / len(z) + REGION_L2 * weights)
    return RegionModel(labels, mean, std, weights)


def choose_region_model(
    runner: Any, fit: tuple[list[Sample], list[dict[str, Any]]], samples: list[Sample], raws: list[dict[str, Any]]
) -> tuple[RegionModel | None, dict[str, Any]]:
    """The region model fitted on the ``fit`` phantoms' boxes (:func:`region_examples`), with the power of
    ``REGION_POWERS`` that gives the best box mAP@0.5 on ``samples``; kept only when it beats no weighing by
    ``BOX_SOURCE_MARGIN``. Returns (chosen or None, {"regions", "accuracy", "map": mAP per power, "none"})."""
    features, truth = region_examples(runner, *fit)
    labels = tuple(sorted({t for t in truth if truth.count(t) >= REGION_MIN_BOXES}, key=LABEL_KEYS.index))
    if len(labels) < 2:
        return None, {"regions": len(truth)}
    kept = [i for i, t in enumerate(truth) if t in labels]
    features, truth = features[kept], [truth[i] for i in kept]
    model = fit_region_model(features, truth, labels)
    guessed = [labels[i] for i in model.probabilities(features).argmax(axis=1)]
    table: dict[str, Any] = {
        "regions": len(truth),
        "accuracy": round(float(np.mean([g == t for g, t in zip(guessed, truth, strict=True)])), 4),
    }
    best, table["map"] = _sweep_box_map(
        runner,
        samples,
        raws,
        runner.region_models,
        REGION_POWERS,
        "none",
        "region model power",
        lambda power: replace(model, power=power),
    )
    return (None if best is None else replace(model, power=best)), table


def choose_thresholds(kind: str, samples: list[Sample], raws: list[dict[str, Any]]) -> dict[str, float]:
    """Per label of ``kind``, the decision threshold with the best F1 on these validation cases."""
    probs = np.stack([raw["probs"] for raw in raws])
    truth = np.stack([s.present for s in samples])
    return {
        key: best_f1_threshold(probs[:, li], truth[:, li])
        for li, (key, applies) in enumerate(zip(LABEL_KEYS, label_mask(kind), strict=True))
        if applies and truth[:, li].any()
    }


def calibrate(bundle: Path, cases: int, seed: int = VAL_SEED, workers: int = 2) -> dict[str, Any]:
    """The manifest's ``decoding`` choices for ``bundle``, measured on ``cases`` validation phantoms per kind
    (the graphs run once per case): ``thresholds``, ``mask_thresholds``, ``delineation``, ``fluid``,
    ``fluid_band``, ``box_source``, ``rival_factor``, ``region_model``, ``support_power``, ``box_outline``,
    ``unsided`` and, under ``calibration``, the Dice, side-precision and mAP tables behind them. The phantoms are
    made in ``workers`` processes (the same ones)."""
    from dicom_agent.inference.onnx_runner import BundleRunner
    from models.train import available_kinds

    runner = BundleRunner(bundle, device="cpu")
    # from the defaults, not a previous run
    runner.thresholds, runner.mask_thresholds, runner.box_source = {}, {}, {}
    runner.unsided, runner.delineation, runner.fluid, runner.fluid_band = {}, {}, {}, {}
    runner.support_power, runner.rival_factor, runner.region_models, runner.box_outline = {}, {}, {}, {}
    out: dict[str, Any] = {
        "thresholds": {},
        "mask_thresholds": {},
        "delineation": {},
        "fluid": {},
        "fluid_band": {},
        "box_source": {},
        "rival_factor": {},
        "region_model": {},
        "support_power": {},
        "box_outline": {},
        "unsided": {},
        "calibration": {"cases": cases, "seed": seed},
    }
    dice_table: dict[str, Any] = {}
    outline_table: dict[str, Any] = {}
    fluid_table: dict[str, Any] = {}
    band_table: dict[str, Any] = {}
    side_table: dict[str, Any] = {}
    support_table: dict[str, Any] = {}
    rival_table: dict[str, Any] = {}
    region_table: dict[str, Any] = {}
    box_outline_table: dict[str, Any] = {}
    with sample_pool(workers) as pool:  # the phantoms; the choices run here
        for kind in [k for k in KINDS if k in available_kinds()]:
            samples = make_samples(kind, cases, seed, pool=pool)
            raws = list(raw_outputs(runner, samples))
            out["thresholds"][kind] = runner.thresholds[kind] = choose_thresholds(kind, samples, raws)
            thresholds, dice_table[kind] = choose_mask_thresholds(runner, samples, raws)
            if thresholds:
                out["mask_thresholds"][kind] = thresholds
                runner.mask_thresholds[kind] = thresholds
            fractions, outline_table[kind] = choose_delineation(runner, samples, raws)
            if fractions:
                out["delineation"][kind] = fractions
                runner.delineation[kind] = fractions
            if kind in FLUID_LABELS:
                levels, fluid_table[kind] = choose_fluid(runner, samples, raws)
                if levels:
                    out["fluid"][kind] = runner.fluid[kind] = levels
                # a band is tried at each label's best level, chosen alone or not
                tries = {key: levels.get(key, best_option(row)) for key, row in fluid_table[kind].items()}
                bands, band_table[kind] = choose_fluid_bands(runner, samples, raws, tries)
                if bands:
                    out["fluid"][kind] = runner.fluid[kind] = levels | {key: tries[key] for key in bands}
                    runner.fluid_band[kind] = bands
                    out["fluid_band"][kind] = {key: list(band) for key, band in bands.items()}
            sources = choose_box_sources(runner, samples, raws)
            if sources:
                out["box_source"][kind] = runner.box_source[kind] = sources
            factor, rival_table[kind] = choose_rival_factor(runner, samples, raws)
            if factor is not None:
                out["rival_factor"][kind] = runner.rival_factor[kind] = factor
            wide = samples, raws
            if kind in REGION_KINDS:
                more = make_samples(kind, (REGION_CASES_FACTOR - 1) * cases, seed + cases, pool=pool)
                wide = (samples + more, raws + list(raw_outputs(runner, more)))
                model, region_table[kind] = choose_region_model(runner, wide, samples, raws)
                if model is not None:
                    runner.region_models[kind] = model
                    out["region_model"][kind] = model.to_manifest()
            # last: with the labels' rivalry settled, what is left above true boxes is peaks on nothing
            power, support_table[kind] = choose_support_power(runner, samples, raws)
            if power is not None:
                out["support_power"][kind] = runner.support_power[kind] = power
            # on every case the kind has: on 300 validation radiographs each, consolidation AP moved -0.011 to
            # +0.09 with outlines (four sets), a spread a 300-case choice cannot settle
            outlined, box_outline_table[kind] = choose_box_outlines(runner, *wide)
            if outlined:
                out["box_outline"][kind] = outlined
                runner.box_outline[kind] = set(outlined)
            unsided, side_table[kind] = choose_unsided(runner, samples, raws)
            if unsided:
                out["unsided"][kind] = unsided
            del raws, wide  # one kind's raw outputs at a time (300 volumes: 1.4 GB)
    out["calibration"]["mask_dice"] = dice_table
    out["calibration"]["delineation_dice"] = outline_table
    out["calibration"]["fluid_dice"] = fluid_table
    out["calibration"]["fluid_band_dice"] = band_table
    out["calibration"]["side_precision"] = side_table
    out["calibration"]["support_map"] = support_table
    out["calibration"]["rival_map"] = rival_table
    out["calibration"]["region_map"] = region_table
    out["calibration"]["outline_ap"] = box_outline_table
    return out


SizeOption = tuple[float, int, str]  # (level, reach, count: one of SIZE_COUNTS)
# the manifest's ``decoding`` keys the size outlines are recorded under (``write_calibration``)
SIZE_SETTINGS = ("size_fraction", "size_reach", "size_subvoxel", "size_partial_volume")
_COUNT_SUFFIX = {"pixels": "", "between": " sub", "partial": " pv"}


def size_option(level: float, reach: int, count: str = "pixels") -> str:
    """The calibration table's name of an outline option: the level, the reach where it is not the default and
    " sub" where it is counted between the samples, " pv" by partial volume (``"0.5"``, ``"0.5 r0"``,
    ``"0.45 r1 sub"``, ``"0.5 r0 pv"``), so tables from before ``size_reach`` and ``size_subvoxel`` read the same."""
    name = f"{level:g}" if reach == DELINEATION_REACH else f"{level:g} r{reach}"
    return name + _COUNT_SUFFIX[count]


def parse_size_option(name: str) -> SizeOption:
    """(level, reach, count) of a :func:`size_option` name."""
    count = next((c for c, suffix in _COUNT_SUFFIX.items() if suffix and name.endswith(suffix)), "pixels")
    level, _, reach = name.removesuffix(_COUNT_SUFFIX[count]).partition(" r")
    return float(level), int(reach) if reach else DELINEATION_REACH, count


def choose_size_fractions(
    bundle: Path, cases: int, seed: int = VAL_SEED, workers: int = 2
) -> tuple[dict[str, dict[str, SizeOption]], dict[str, Any]]:
    """Per kind and diameter label, the source-grid outline (level, reach, count) whose equivalent diameter of
    the largest lesion found equals the largest drawn (whole mm) most often on ``cases`` validation phantoms (ties:
    :func:`pick_size_level`), kept where it beats the model-grid size by ``SIZE_MARGIN`` on at least
    ``SIZE_MIN_CASES`` cases; and the table behind it (share exact per option). The phantoms run through the
    adapter in ``workers`` processes, ``SIZE_CHUNK`` at a time (the same choices as in one)."""
    from models.evaluate import agreement
    from models.train import available_kinds

    chosen: dict[str, dict[str, SizeOption]] = {}
    table: dict[str, Any] = {}
    with sample_pool(workers) as pool:
        for kind in [k for k in KINDS if k in available_kinds()]:

            def part(start: int, stop: int, threads: int | None, kind: str = kind) -> SizeJob:
                return bundle, kind, seed, start, stop, threads

            errors: dict[str, dict[str, list[float]]] = {}  # label -> option -> reported - drawn (whole mm)
            # in case order: labels and options keep the order one pass gives them
            for counted in in_chunks(pool, _size_errors, part, cases, SIZE_CHUNK):
                for label, row in counted.items():
                    for name, errs in row.items():
                        errors.setdefault(label, {}).setdefault(name, []).extend(errs)
            table[kind] = {}
            for label, row in errors.items():
                scores = {name: agreement(e, 0.5) for name, e in row.items()}  # whole mm: exact = equal
                summary = {name: (s["exact"], s["median_abs_error"]) for name, s in scores.items()}
                table[kind][label] = {name: {"exact": v[0], "median_abs_error": v[1]} for name, v in summary.items()}
                picked = pick_size_level(summary, len(row["model"]))
                if picked is not None:
                    chosen.setdefault(kind, {})[label] = picked
                log.info("size %s %s: exact %s", kind, label, {n: round(v[0], 3) for n, v in summary.items()})
    return chosen, table


SIZE_CHUNK = 50  # validation phantoms per task when the size calibration runs in several processes
SizeJob = tuple[Path, str, int, int, int, int | None]  # bundle, kind, seed, first and past-last case, ORT threads


def _size_errors(job: SizeJob) -> dict[str, dict[str, list[float]]]:
    """Per label and outline option ("model": the model-grid size), the largest size reported minus the largest
    drawn (whole mm) on validation phantoms ``start``..``stop`` of one kind: :func:`choose_size_fractions`' cases,
    run in this process (ONNX Runtime on ``threads`` threads)."""
    import shutil
    import tempfile

    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from models.evaluate import largest_sizes, phantom_case_study
    from models.synthetic.text import mm

    bundle, kind, seed, start, stop, threads = job
    adapter = BundleAdapter(bundle, device="cpu", languages=("en",), narrative=False, threads=threads)
    adapter.runner.size_fraction = {}  # the findings keep their model-grid sizes: the baseline
    errors: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="size-calibration-") as tmp:
        for i in range(start, stop):
            case, study = phantom_case_study(kind, seed + i, Path(tmp) / f"{kind}{i}")
            item = adapter.analyse(study).inputs[0]
            grid = adapter.measurement_grid(item)
            # partial volume reads densities: only where the source values have a window (CT HU)
            counts = [c for c in SIZE_COUNTS if c != "partial" or (grid is not None and grid.window)]
            for label, (got, truth) in largest_sizes(case.lesions, item.findings).items():
                row = errors.setdefault(label, {})
                row.setdefault("model", []).append(mm(got) - truth)
                found = [f for f in item.findings if f.label == label and f.size_mm is not None]
                for option in itertools.product(SIZE_LEVELS, SIZE_REACHES, counts):
                    # as the runtime: the model-grid size where no outline is drawn
                    sizes = [_outlined_size(grid, f.mask, *option) or float(f.size_mm or 0.0) for f in found]
                    row.setdefault(size_option(*option), []).append(mm(max(sizes)) - truth)
            shutil.rmtree(Path(tmp) / f"{kind}{i}", ignore_errors=True)
    return errors


def pick_size_level(summary: dict[str, tuple[float, float]], cases: int) -> SizeOption | None:
    """The outline (level, reach, count) to measure a label at, from (share stated to the mm, median absolute
    error) per option ("model" = the model-grid size, else a :func:`size_option`): the best share, then the smaller
    error, then the earlier count of ``SIZE_COUNTS`` (whole pixels first, the rule before ``size_subvoxel``: less
    work), then the wider reach (the rule before ``size_reach``), then the level nearer half; None where fewer than
    ``SIZE_MIN_CASES`` cases or no option beats the model grid by ``SIZE_MARGIN``."""
    options = {name: parse_size_option(name) for name in summary if name != "model"}
    if cases < SIZE_MIN_CASES or not options:
        return None

    def rank(name: str) -> tuple[float, float, int, int, float]:
        level, reach, count = options[name]
        return summary[name][0], -summary[name][1], -SIZE_COUNTS.index(count), reach, -abs(level - 0.5)

    best = max(options, key=rank)
    return options[best] if summary[best][0] >= summary["model"][0] + SIZE_MARGIN else None


def _outlined_size(grid: Any, mask: Any, level: float, reach: int, count: str = "pixels") -> float | None:
    """A finding's equivalent diameter outlined on the source grid at ``level`` within ``reach`` pixels of its mask,
    counted as ``count`` says (None: no grid or no mask)."""
    if grid is None or mask is None:
        return None
    solid = SOLID_TISSUE_HU if count == "partial" else None
    return grid.diameter(mask.pixels.reshape(grid.values.shape), level, reach, count == "between", solid)


def write_calibration(bundle: Path, cases: int, seed: int = VAL_SEED, size_cases: int | None = None) -> dict[str, Any]:
    """Calibrate ``bundle`` and record the choices in its manifest (the graphs and their hashes are unchanged);
    then, with those choices in place, the source-grid size fractions on ``size_cases`` (default
    ``min(cases, SIZE_CASES)``) phantoms per kind run through the adapter."""
    import json

    from models.export import write_manifest

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    chosen = calibrate(bundle, cases, seed)
    manifest["decoding"] = {k: v for k, v in manifest["decoding"].items() if k not in chosen} | chosen
    for key in SIZE_SETTINGS:
        manifest["decoding"].pop(key, None)
    write_manifest(path, manifest)
    outlines, size_table = choose_size_fractions(bundle, min(cases, SIZE_CASES) if size_cases is None else size_cases)
    # per manifest key, per kind: what the labels' chosen outlines say; kinds with nothing are left out
    settings: dict[str, dict[str, Any]] = {
        "size_fraction": {kind: {key: level for key, (level, _, _) in per.items()} for kind, per in outlines.items()},
        "size_reach": {
            kind: {key: reach for key, (_, reach, _) in per.items() if reach != DELINEATION_REACH}
            for kind, per in outlines.items()
        },
        "size_subvoxel": {
            kind: sorted(key for key, (_, _, c) in per.items() if c == "between") for kind, per in outlines.items()
        },
        "size_partial_volume": {
            kind: {key: SOLID_TISSUE_HU for key, (_, _, c) in per.items() if c == "partial"}
            for kind, per in outlines.items()
        },
    }
    for name, per_kind in settings.items():
        kept = {kind: value for kind, value in per_kind.items() if value}
        if kept:
            manifest["decoding"][name] = kept
    manifest["decoding"]["calibration"]["size_exact"] = size_table
    write_manifest(path, manifest)
    return manifest
