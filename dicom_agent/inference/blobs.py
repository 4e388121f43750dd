"""A Hessian "dot" enhancement of a CT volume (Li, Sone, Doi, Med. Phys. 2003): bright round blobs stand out,
vessels (tubes) and walls (planes) do not. The model grid (10 mm slices of 5.5 mm pixels) leaves a 10 mm nodule one
blurred voxel as bright as the vessels around it; computed on the grid twice as fine and max-pooled onto the
model grid, the filter keeps it (31 of 32 validation nodules in the top 0.1 % of the lung voxels around them; by
intensity none: docs/model.md, "CT's dot channel"). A second filter from the same Hessians marks dark tubes: the
air bronchograms that tell a consolidation from a mass (2-3 mm bronchi, blurred away on the model grid; on 60
validation CTs every consolidation scored above every mass: docs/model.md, "CT's tube and water channels"). One
implementation, numpy only, for training and the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DOT_SIGMAS_MM = (2.0, 3.0, 4.5)  # Gaussian scales: round lesions of about 6-16 mm (sigma = radius / sqrt(3))
DOT_SCALE = 0.2  # filter response mapped to [0, 1] by this (nodules about 0.07-0.13, their surroundings less)
TUBE_SIGMAS_MM = (2.0, 3.0)  # dark tubes of about 3-6 mm (sigma = radius / sqrt(2)); the dot's Hessians reused
TUBE_SCALE = 0.1  # consolidations about 0.02-0.06 on the model grid (75th percentile), masses under 0.004
# The model's fine-grid channels in their input order (manifest ``inputs.ct.dot.channels``); a bundle with K
# channels takes the first K.
FINE_CHANNELS: tuple[dict[str, Any], ...] = (
    {"filter": "dot", "sigmas_mm": DOT_SIGMAS_MM, "scale": DOT_SCALE},
    {"filter": "tube", "sigmas_mm": TUBE_SIGMAS_MM, "scale": TUBE_SCALE},
)
# PET's hot blobs: lesions of 10-40 mm (sigma = radius / sqrt(3)) on the acquired 8 mm slices, where the model
# grid's 24 mm slices average a small lesion into the liver or blood pool around it. Lesions respond about
# 0.05-0.28 in the SUV window [0, 10], the hottest normal blobs (kidney hila, brain, bladder edge) up to 0.13.
PET_DOT_SIGMAS_MM = (3.0, 6.0, 12.0)
PET_DOT_SCALE = 0.3
# PET's fine-grid channels (manifest ``inputs.pet.dot.channels``): the dot alone, the other slots of a model with
# more read zeros (dark tubes mean nothing in uptake).
PET_FINE_CHANNELS: tuple[dict[str, Any], ...] = (
    {"filter": "dot", "sigmas_mm": PET_DOT_SIGMAS_MM, "scale": PET_DOT_SCALE},
)


def _kernels(sigma_vox: float) -> list[np.ndarray]:
    """Sampled Gaussian and its first and second derivatives (in voxel units), radius 3 sigma."""
    r = max(1, int(np.ceil(3.0 * sigma_vox)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma_vox**2))
    g /= g.sum()
    return [g, -x / sigma_vox**2 * g, (x**2 / sigma_vox**4 - 1.0 / sigma_vox**2) * g]


def _filter_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlation with ``kernel`` along ``axis``, the edges repeated."""
    r = len(kernel) // 2
    pad = [(0, 0)] * values.ndim
    pad[axis] = (r, r)
    padded = np.pad(values, pad, mode="edge")
    n = values.shape[axis]
    out = np.zeros_like(values)
    window = [slice(None)] * values.ndim
    for i, w in enumerate(kernel):
        if w != 0.0:
            window[axis] = slice(i, i + n)
            out += np.float32(w) * padded[tuple(window)]
    return out


def _eigenvalues(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest eigenvalue of each symmetric [[a, d, e], [d, b, f], [e, f, c]] (closed form,
    trigonometric; Smith 1961)."""
    q = (a + b + c) / 3.0
    aq, bq, cq = a - q, b - q, c - q
    p = np.sqrt((aq * aq + bq * bq + cq * cq + 2.0 * (d * d + e * e + f * f)) / 6.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = aq * (bq * cq - f * f) - d * (d * cq - f * e) + e * (d * f - bq * e)
        r = np.where(p > 1e-12, det / (2.0 * np.maximum(p, 1e-12) ** 3), 0.0)
    phi = np.arccos(np.clip(r, -1.0, 1.0)) / 3.0
    return q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0), q + 2.0 * p * np.cos(phi)


def _hessian(v: np.ndarray, spacing_zyx: Sequence[float], sigma_mm: float) -> list[np.ndarray]:
    """Second derivatives (per mm²) of ``v`` smoothed at ``sigma_mm``: xx, yy, zz, xy, xz, yz. Separable: 15
    passes along one axis each instead of 18."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    kz, ky, kx = _kernels(sigma_mm / sz), _kernels(sigma_mm / sy), _kernels(sigma_mm / sx)
    along_x = [_filter_axis(v, kx[o], 2) / np.float32(sx**o) for o in range(3)]
    orders = {"xx": (2, 0, 0), "yy": (0, 2, 0), "zz": (0, 0, 2), "xy": (1, 1, 0), "xz": (1, 0, 1), "yz": (0, 1, 1)}
    xy = {(ox, oy): _filter_axis(along_x[ox], ky[oy], 1) / np.float32(sy**oy) for ox, oy, _ in orders.values()}
    return [_filter_axis(xy[(ox, oy)], kz[oz], 0) / np.float32(sz**oz) for ox, oy, oz in orders.values()]


def _dot_response(low: np.ndarray, middle: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Bright blob: λ3² / |λ1| where all three eigenvalues are negative (a sphere gives |λ|, a tube about 0: its
    λ3 is 0 along the axis)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(high < 0, high * high / np.maximum(-low, 1e-9), 0.0)


def _tube_response(low: np.ndarray, middle: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Dark tube (or dark blob): λ2² / λ3 where the middle eigenvalue is positive (a dark tube has λ2 ≈ λ3 > 0,
    a dark plane such as the lung side of a wall λ2 ≈ 0, bright structures λ2 < 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(middle > 0, middle * middle / np.maximum(high, 1e-9), 0.0)


RESPONSES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "dot": _dot_response,
    "tube": _tube_response,
}


def hessian_filters(
    values: np.ndarray, spacing_zyx: Sequence[float], sigmas_by_filter: Mapping[str, Sequence[float]]
) -> dict[str, np.ndarray]:
    """Each filter's response (``RESPONSES``) of a volume ``values`` (z, y, x; intensities in [0, 1]) with voxel
    spacing in mm: the maximum over its scales of sigma² times the response of the Hessian's eigenvalues
    λ1 ≤ λ2 ≤ λ3. A scale several filters share is computed once."""
    v = np.asarray(values, dtype=np.float32)
    best = {name: np.zeros(v.shape, np.float32) for name in sigmas_by_filter}
    for sigma in sorted({float(s) for sigmas in sigmas_by_filter.values() for s in sigmas}):
        hessian = _hessian(v, spacing_zyx, sigma)
        low, high = _eigenvalues(*hessian)
        middle = hessian[0] + hessian[1] + hessian[2] - low - high  # the trace is the eigenvalues' sum
        for name, sigmas in sigmas_by_filter.items():
            if sigma in {float(s) for s in sigmas}:
                response = RESPONSES[name](low, middle, high) * sigma * sigma
                np.maximum(best[name], response.astype(np.float32), out=best[name])
    return best


def dot_enhance(
    values: np.ndarray, spacing_zyx: Sequence[float], sigmas_mm: Sequence[float] = DOT_SIGMAS_MM
) -> np.ndarray:
    """Bright-blob response (``_dot_response``) of a volume, the maximum over scales (``hessian_filters``)."""
    return hessian_filters(values, spacing_zyx, {"dot": sigmas_mm})["dot"]


def tube_enhance(
    values: np.ndarray, spacing_zyx: Sequence[float], sigmas_mm: Sequence[float] = TUBE_SIGMAS_MM
) -> np.ndarray:
    """Dark-tube response (``_tube_response``) of a volume, the maximum over scales (``hessian_filters``)."""
    return hessian_filters(values, spacing_zyx, {"tube": sigmas_mm})["tube"]


def max_to_grid(values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Each cell of a coarser grid ``shape`` gets the maximum of the voxels whose index falls in it
    (cell i of an axis of n voxels over m cells: voxels floor(i n / m) up to floor((i + 1) n / m), at least one)."""
    out = np.asarray(values, dtype=np.float32)
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if n == m:
            continue
        starts = np.minimum((np.arange(m) * n) // m, n - 1)
        out = np.maximum.reduceat(out, starts, axis=axis)
    return out


def fine_channels(
    values: np.ndarray,
    spacing_zyx: Sequence[float],
    shape: Sequence[int],
    channels: Sequence[Mapping[str, Any]] = FINE_CHANNELS,
) -> np.ndarray:
    """The model's fine-grid input (K, *shape): for each of ``channels`` ({filter, sigmas_mm, scale}) its filter's
    response of ``values`` (windowed to [0, 1], on a grid finer than the model's), max-pooled onto ``shape`` and
    mapped to [0, 1] by its scale."""
    responses = hessian_filters(values, spacing_zyx, {c["filter"]: c["sigmas_mm"] for c in channels})
    return np.stack(
        [np.clip(max_to_grid(responses[c["filter"]], shape) / float(c["scale"]), 0.0, 1.0) for c in channels]
    ).astype(np.float32)
