"""The exact map between a source image's pixel grid and the model's square input (letterbox: scale + pad).

Coordinates are continuous with (0, 0) at the top-left corner of the top-left pixel, as DICOM 2D SCOORD
(PS3.3 C.18.6.1.2): pixel (c, r) covers [c, c+1) × [r, r+1). The forward map is ``model = source * scale + pad``
per axis (after an optional mirror that brings the image to the canonical display orientation), so the inverse
is exact in floating point up to rounding of the division.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Source (rows, cols) resized to (inner_rows, inner_cols) and centred in a size × size canvas."""

    src_rows: int
    src_cols: int
    size: int
    inner_rows: int
    inner_cols: int
    pad_top: int
    pad_left: int
    flip_x: bool = False  # source columns run toward patient right: mirrored so image left = patient right
    flip_y: bool = False  # source rows run toward the head: mirrored so the head is up

    @classmethod
    def fit(
        cls,
        src_rows: int,
        src_cols: int,
        size: int,
        flip_x: bool = False,
        flip_y: bool = False,
        keep_aspect: bool = True,
    ) -> Letterbox:
        """With ``keep_aspect`` the longer side fills ``size`` and the shorter is padded equally on both sides;
        without it the image is stretched to the square (what a model trained on stretched inputs expects)."""
        scale = size / max(src_rows, src_cols)
        inner_rows = max(1, min(size, round(src_rows * scale))) if keep_aspect else size
        inner_cols = max(1, min(size, round(src_cols * scale))) if keep_aspect else size
        pad_top, pad_left = (size - inner_rows) // 2, (size - inner_cols) // 2
        return cls(src_rows, src_cols, size, inner_rows, inner_cols, pad_top, pad_left, flip_x, flip_y)

    @property
    def scale_x(self) -> float:
        return self.inner_cols / self.src_cols

    @property
    def scale_y(self) -> float:
        return self.inner_rows / self.src_rows

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        x = self.src_cols - x if self.flip_x else x
        y = self.src_rows - y if self.flip_y else y
        return x * self.scale_x + self.pad_left, y * self.scale_y + self.pad_top

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        sx, sy = (x - self.pad_left) / self.scale_x, (y - self.pad_top) / self.scale_y
        return (self.src_cols - sx if self.flip_x else sx), (self.src_rows - sy if self.flip_y else sy)

    def canonical(self, pixels: np.ndarray) -> np.ndarray:
        """The source pixels mirrored into the canonical orientation (before resizing)."""
        if self.flip_x:
            pixels = pixels[..., ::-1]
        if self.flip_y:
            pixels = pixels[..., ::-1, :]
        return pixels

    def box_to_source(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A model-space box on the source grid, clipped to the image."""
        sx0, sy0 = self.to_source(x0, y0)
        sx1, sy1 = self.to_source(x1, y1)
        return (
            float(np.clip(min(sx0, sx1), 0, self.src_cols)),
            float(np.clip(min(sy0, sy1), 0, self.src_rows)),
            float(np.clip(max(sx0, sx1), 0, self.src_cols)),
            float(np.clip(max(sy0, sy1), 0, self.src_rows)),
        )

    def mask_to_source(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour sampling of a model-space mask at every source pixel centre: the source-grid mask."""
        if mask.shape != (self.size, self.size):
            raise ValueError(f"mask shape {mask.shape} is not the model grid {(self.size, self.size)}")
        cols = (np.arange(self.src_cols) + 0.5) * self.scale_x + self.pad_left
        rows = (np.arange(self.src_rows) + 0.5) * self.scale_y + self.pad_top
        ci = np.clip(np.floor(cols).astype(np.int64), 0, self.size - 1)
        ri = np.clip(np.floor(rows).astype(np.int64), 0, self.size - 1)
        out = np.asarray(mask, dtype=bool)[np.ix_(ri, ci)]
        return self.canonical(out)  # mirroring is its own inverse
