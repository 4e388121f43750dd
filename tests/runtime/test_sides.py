"""Which sides a non-focal finding (effusion, pneumothorax) is reported on, from its mask."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import MIN_PART_PIXELS, MIN_SIDE_SHARE, _sides


def _mask(right: int, left: int, ndim: int = 2) -> np.ndarray:
    """A 64-column mask with ``right`` pixels on the patient's right (low columns) and ``left`` on the left."""
    mask = np.zeros((40, 64), bool)
    mask.flat[[r * 64 + c for r in range(40) for c in range(32)][:right]] = True
    mask.flat[[r * 64 + c for r in range(40) for c in range(32, 64)][:left]] = True
    return mask if ndim == 2 else np.stack([mask, np.zeros_like(mask)])


def test_spill_over_is_not_a_second_side() -> None:
    assert [side for side, _ in _sides(_mask(400, 60), 32)] == ["right"]  # 15 %: one-sided
    assert [side for side, _ in _sides(_mask(400, 180), 32)] == ["right", "left"]  # 45 %: bilateral
    assert [side for side, _ in _sides(_mask(40, round(40 * MIN_SIDE_SHARE)), 32)] == ["right", "left"]
    assert [side for side, _ in _sides(_mask(0, 300, ndim=3), 32)] == ["left"]  # volumes: columns are last too


def test_each_side_keeps_only_its_own_pixels_and_tiny_masks_are_noise() -> None:
    (side, part), (_, other) = _sides(_mask(300, 200), 32)
    assert side == "right" and part[:, :32].sum() == 300 and not part[:, 32:].any() and other[:, 32:].sum() == 200
    assert _sides(_mask(MIN_PART_PIXELS - 1, 0), 32) == []
