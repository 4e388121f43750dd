"""Model-side preprocessing: what the graphs expect, applied identically in training and (via the manifest)
by the runtime. Numpy + torch only; the DICOM side (VOI LUT, orientation) lives in ``dicom_agent.inference``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dicom_agent.inference.blobs import FINE_CHANNELS, PET_FINE_CHANNELS, fine_channels
from models.network import CT_WINDOW_HU

IMAGE_SIZE = 128
SLICE_SIZE = 64
DEPTH = 32
CT_WINDOW = CT_WINDOW_HU  # HU -> [0,1]: lung + soft tissue in one channel
PET_WINDOW = (0.0, 10.0)  # SUV -> [0,1]
CXR_PERCENTILES = (0.5, 99.5)
# (x, y, z): how many times finer than the model grid a volume may be when the linear resampling starts; a finer
# one is first block-averaged to this resolution, in training and (via the manifest) at run time. The CT phantoms
# are drawn at it; PET phantoms are drawn 3x finer in z (96 slices of 8 mm) and their slices averaged in threes,
# since linear resampling at exactly 3x takes every third slice and averages nothing
DRAWN = {"ct": (2.0, 2.0, 2.0), "pet": (2.0, 2.0, 1.0)}
# (x, y, z): the grid the fine-grid channels are computed on, this many times finer than the model's: CT's is the
# grid it is drawn at; PET's keeps the acquired 8 mm slices its model input averages in threes
FINE = {"ct": DRAWN["ct"], "pet": (2.0, 2.0, 3.0)}
CHANNELS = {"ct": FINE_CHANNELS, "pet": PET_FINE_CHANNELS}
WINDOWS = {"ct": CT_WINDOW, "pet": PET_WINDOW}


def _cell_mean(kind: str) -> str:
    x, y, z = DRAWN[kind]
    return (
        f"; a series finer than {x:g} x {y:g} x {z:g} times the grid (x, y, z; as training does) "
        "first brought to it by averaging blocks of whole voxels per axis"
    )


def _fine_words(kind: str) -> str:
    x, y, z = FINE[kind]
    return f"{x:g} x {y:g} x {z:g} times (x, y, z)"


def spec(dot: int = 0, pet_dot: bool = False) -> dict[str, Any]:
    """The manifest's ``inputs`` section (the runtime engineer implements exactly this from DICOM); ``dot``: the
    model takes the first ``dot`` of CT's fine-grid channels (``NetConfig.dot``, ``blobs.FINE_CHANNELS``);
    ``pet_dot``: and PET's (``NetConfig.pet_dot``, ``blobs.PET_FINE_CHANNELS``) in the same slots."""
    inputs: dict[str, Any] = {
        "cxr": {
            "graph": "enc2d",
            "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE],
            "steps": [
                "pixel data after Modality LUT and VOI LUT; MONOCHROME1 inverted so that air is dark",
                f"resize the whole image to {IMAGE_SIZE}x{IMAGE_SIZE} (bilinear, antialiased; aspect not kept)",
                f"intensity: map the {CXR_PERCENTILES[0]} and {CXR_PERCENTILES[1]} percentiles to 0 and 1, clip",
            ],
            "percentiles": list(CXR_PERCENTILES),
            "size": IMAGE_SIZE,
        },
        "ct": {
            "graph": "enc3d",
            "modality_index": 1,
            "shape": ["N", DEPTH, SLICE_SIZE, SLICE_SIZE],
            "steps": [
                "HU via RescaleSlope/Intercept; slices ordered along the slice normal as the generator writes "
                "them (index 0 = first slice of the stack, ascending ImagePositionPatient along the normal)",
                f"resample the whole stack to {DEPTH} slices of {SLICE_SIZE}x{SLICE_SIZE} (trilinear; "
                "fit-to-grid: the model is not spacing aware, boxes map back by per-axis scale)"
                f"{_cell_mean('ct')}",
                f"window HU [{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}] -> [0, 1], clip",
            ],
            "window": list(CT_WINDOW),
            "drawn": list(DRAWN["ct"]),
            "depth": DEPTH,
            "size": SLICE_SIZE,
        },
        "pet": {
            "graph": "enc3d",
            "modality_index": 2,
            "shape": ["N", DEPTH, SLICE_SIZE, SLICE_SIZE],
            "steps": [
                "SUVbw (stored values x RescaleSlope (+ Intercept) x SUV factor); slice order as for CT",
                f"resample the whole stack to {DEPTH} slices of {SLICE_SIZE}x{SLICE_SIZE} (trilinear, fit-to-grid)"
                f"{_cell_mean('pet')}",
                f"window SUV [{PET_WINDOW[0]:g}, {PET_WINDOW[1]:g}] -> [0, 1], clip",
            ],
            "window": list(PET_WINDOW),
            "drawn": list(DRAWN["pet"]),
            "depth": DEPTH,
            "size": SLICE_SIZE,
        },
    }
    if dot:
        inputs["ct"]["dot"] = _fine_spec("ct", FINE_CHANNELS[:dot], dot)
    if dot and pet_dot:
        inputs["pet"]["dot"] = _fine_spec("pet", PET_FINE_CHANNELS, dot)
    return inputs


def normalize_cxr(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, CXR_PERCENTILES)
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def resize_2d(image: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].numpy()


def resize_3d(volume: np.ndarray, depth: int, size: int, drawn: tuple[float, float, float] | None = None) -> np.ndarray:
    """Trilinear; with ``drawn`` (x, y, z: how many times finer than the grid the training volumes are) a finer
    volume is first block-averaged to that resolution, as the runtime does
    (``dicom_agent.inference.volume.cell_blocks``). The phantoms themselves are drawn at ``drawn``: for them this
    is plain trilinear resampling."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    shape, out = t.shape[-3:], (depth, size, size)
    if drawn is not None:
        per_axis = (drawn[2], drawn[1], drawn[0])
        blocks = [max(1, int(n / m / d + 1e-6)) for n, m, d in zip(shape, out, per_axis, strict=True)]
        if any(k > 1 for k in blocks):
            pad = [p for n, k in reversed(list(zip(shape, blocks, strict=True))) for p in (0, -n % k)]
            t = F.avg_pool3d(F.pad(t, pad, mode="replicate"), kernel_size=blocks)
            # the output grid spans the unpadded extent: sample it by scale, not by the padded size
            scale = [k * m / n for n, k, m in zip(shape, blocks, out, strict=True)]
            t = F.interpolate(
                t, scale_factor=scale, mode="trilinear", align_corners=False, recompute_scale_factor=False
            )
            return t[0, 0, :depth, :size, :size].numpy()
    if shape != out:
        t = F.interpolate(t, size=out, mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def window(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def prepare_cxr(image: np.ndarray) -> np.ndarray:
    """Generator radiograph (H,W) -> model input (S,S) in [0,1]."""
    return normalize_cxr(resize_2d(image, IMAGE_SIZE))


def prepare_volume(volume: np.ndarray, modality: str) -> np.ndarray:
    """Generator CT (HU) or PET (SUV) volume (D,H,W) -> model input (DEPTH,S,S) in [0,1]."""
    lo, hi = WINDOWS[modality]
    return window(resize_3d(volume, DEPTH, SLICE_SIZE, DRAWN[modality]), lo, hi)


def _fine_spec(kind: str, channels: Any, slots: int) -> dict[str, Any]:
    """A kind's ``inputs.<kind>.dot``: how its fine-grid channels are computed (``slots`` wide, zeros past them)."""
    listed = [{**c, "sigmas_mm": list(c["sigmas_mm"])} for c in channels]
    lo, hi = WINDOWS[kind]
    unit = "HU" if kind == "ct" else "SUV"
    return {
        "input": "dot",
        "shape": ["N", slots, DEPTH, SLICE_SIZE, SLICE_SIZE],
        "steps": [
            f"the values ({unit}) windowed [{lo:g}, {hi:g}] -> [0, 1] as above, but on a grid {_fine_words(kind)} "
            "finer than the model's (same extent; a finer series first block-averaged to that resolution, then "
            "trilinear)",
            "per channel, a Hessian filter (dicom_agent.inference.blobs.hessian_filters: dot = bright blobs, "
            "tube = dark tubes) with the fine grid's spacing in mm, maximum over its Gaussian scales",
            "maximum over the fine voxels of each model voxel (max_to_grid), divided by the channel's scale, "
            f"clipped to [0, 1]; channels stacked in the listed order, zeros in the slots past them (of {slots})",
        ],
        "channels": listed,
        "fine": list(FINE[kind]),
    }


def fine_shape(kind: str) -> tuple[int, int, int]:
    """(z, y, x) of the grid a kind's fine-grid channels are computed on: ``FINE`` times the model grid."""
    x, y, z = FINE[kind]
    return int(DEPTH * z), int(SLICE_SIZE * y), int(SLICE_SIZE * x)


def prepare_dot(volume: np.ndarray, spacing_zyx: tuple[float, ...], modality: str = "ct") -> np.ndarray:
    """Generator CT (HU) or PET (SUV) volume with its spacing in mm -> the kind's fine-grid channels (K,DEPTH,S,S)
    in [0,1], every one of ``CHANNELS[modality]`` (manifest ``inputs.<kind>.dot``; a model with fewer reads the
    first, one with more reads zeros past them): on the fine grid (the phantoms are drawn on it; another size is
    brought there as the runtime does, block means then trilinear), windowed, filtered, max-pooled onto the model
    grid."""
    fine = fine_shape(modality)
    extent = [n * s for n, s in zip(volume.shape, spacing_zyx, strict=True)]
    values = resize_3d(volume, fine[0], fine[1], (1.0, 1.0, 1.0)) if volume.shape != fine else volume
    lo, hi = WINDOWS[modality]
    spacing = tuple(e / n for e, n in zip(extent, fine, strict=True))
    return fine_channels(window(values, lo, hi), spacing, (DEPTH, SLICE_SIZE, SLICE_SIZE), CHANNELS[modality])
