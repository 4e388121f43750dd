"""Montage of the phantoms for the docs: ``python -m models.synthetic.figure docs/images/phantoms.png``.

Top row: four radiographs with their boxes. Bottom row: a CT slice in lung and mediastinal windows through a
lesion, a coronal CT reformat, and a coronal PET maximum-intensity projection (inverted grey, SUV 0-10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.synthetic import Case, make_case

TILE = 256


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)).convert("RGB")


def _window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    return (hu.astype(np.float32) - (center - width / 2)) / width


def _boxes(img: Image.Image, case: Case, scale: float = 1.0, z: int | None = None) -> Image.Image:
    draw = ImageDraw.Draw(img)
    for lesion in case.lesions:
        box = lesion.box if z is None else lesion.slice_boxes.get(z)
        if box:
            draw.rectangle([v * scale for v in box], outline=(255, 60, 60))
    return img


def _resized(img: Image.Image, height: int = TILE) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * height / h)), height), Image.Resampling.BILINEAR)


def montage() -> Image.Image:
    """Render the figure (deterministic)."""
    top = [_boxes(_grey(c.image), c) for c in (make_case("cxr", s, size=TILE) for s in (52, 2, 30, 36))]
    ct = make_case("ct", 56, size=TILE)
    z = max(ct.lesions, key=lambda les: les.size_mm or 0).slices[len(ct.lesions[0].slices) // 2]
    lung = _boxes(_grey(_window(ct.image[z], -600, 1500)), ct, z=z)
    soft = _grey(_window(ct.image[z], 40, 400))
    row = ct.image.shape[1] // 2 + 10
    coronal = _grey(_window(ct.image[::-1, row, :], -600, 1500))
    dz, _, dx = ct.spacing
    coronal = coronal.resize((coronal.width, round(coronal.height * dz / dx)))
    pet = make_case("pet", 5)
    mip = _grey(1.0 - pet.image.max(axis=1)[::-1] / 10.0)
    pdz, _, pdx = pet.spacing
    mip = mip.resize((mip.width, round(mip.height * pdz / pdx)))
    bottom = [lung, soft, _resized(coronal), _resized(mip)]
    rows = [[_resized(t) for t in top], bottom]
    width = max(sum(t.width for t in r) for r in rows)
    out = Image.new("RGB", (width, TILE * 2), (0, 0, 0))
    for r, tiles in enumerate(rows):
        x = 0
        for tile in tiles:
            out.paste(tile, (x, r * TILE))
            x += tile.width
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "docs/images/phantoms.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    montage().save(target)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
