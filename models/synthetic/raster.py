"""Small, fast numpy rasterisation helpers shared by the phantoms (no scipy: it is not a dependency)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def grid2d(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in pixels, float32, shape (H, W); read-only and cached."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + np.float32(0.5)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=64)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation of n_in samples onto n_out (end-aligned)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(np.intp), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    lo.setflags(write=False)
    frac.setflags(write=False)
    return lo, frac


def upsample_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis by gathering (no BLAS: it oversubscribes a busy 2-core machine)."""
    lo, frac = _interp_index(n_out, a.shape[axis])
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = frac.reshape(shape)
    return (np.take(a, lo, axis=axis) * (1.0 - w) + np.take(a, lo + 1, axis=axis) * w).astype(np.float32)


def smooth_noise2d(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in [0, 1): a ``cells``-grid of uniforms bilinearly upsampled."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return upsample_axis(upsample_axis(coarse, shape[0], 0), shape[1], 1)


def smooth_noise3d(rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[int, int, int]) -> np.ndarray:
    """Smooth random 3D field in [0, 1), trilinearly upsampled from a coarse grid."""
    out = rng.random(cells, dtype=np.float32)
    for axis, n in enumerate(shape):
        out = upsample_axis(out, n, axis)
    return out


def soft_inside(signed_distance: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance (negative inside, in pixels)."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0).astype(np.float32, copy=False)


def blur_axis(a: np.ndarray, axis: int, passes: int = 1) -> np.ndarray:
    """Binomial [1, 2, 1]/4 smoothing along one axis, edge-replicated; ``passes`` times."""
    out = np.moveaxis(a.astype(np.float32, copy=True), axis, 0)
    if out.shape[0] < 2:
        return np.moveaxis(out, 0, axis)
    for _ in range(passes):
        nxt = np.empty_like(out)
        nxt[1:-1] = 0.25 * (out[:-2] + out[2:]) + 0.5 * out[1:-1]
        nxt[0] = 0.75 * out[0] + 0.25 * out[1]
        nxt[-1] = 0.75 * out[-1] + 0.25 * out[-2]
        out = nxt
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def blur(a: np.ndarray, passes: int = 1, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Separable binomial blur over the given axes (all by default); ~Gaussian with sigma sqrt(passes/2) px."""
    out = a
    for axis in axes if axes is not None else tuple(range(a.ndim)):
        out = blur_axis(out, axis, passes)
    return out
