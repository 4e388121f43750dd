"""Overlapping focal masks on volumes: one label per region (the most probable label claims it first)."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import _one_label_per_region


def _blob(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((8, 32, 32), bool)
    mask[z0:z1, y0:y1, x0:x1] = True
    return mask


def test_a_region_claimed_by_a_more_probable_label_is_not_reported_again() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    elsewhere = _blob(2, 6, 20, 28, 20, 28)
    mostly_inside = _blob(2, 6, 5, 13, 4, 12)  # 7 of its 8 rows inside ``region``
    kept = _one_label_per_region({"mass": [region], "nodule": [elsewhere, mostly_inside]}, {"mass": 0.9, "nodule": 0.6})
    assert [c.sum() for c in kept["mass"]] == [region.sum()]
    assert len(kept["nodule"]) == 1 and (kept["nodule"][0] == elsewhere).all()


def test_the_more_probable_label_wins_and_a_label_keeps_its_largest_component() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    own = _blob(2, 4, 20, 26, 20, 26)
    kept = _one_label_per_region({"mass": [region, own], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8})
    assert len(kept["nodule"]) == 1 and len(kept["mass"]) == 1 and (kept["mass"][0] == own).all()
    # every component claimed: the label stays present with its largest one
    kept = _one_label_per_region({"mass": [region], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8})
    assert (kept["mass"][0] == region).all()
    half = _blob(2, 6, 8, 16, 4, 12)  # exactly half inside: not "mostly", kept
    kept = _one_label_per_region({"mass": [region], "nodule": [half]}, {"mass": 0.9, "nodule": 0.6})
    assert (kept["nodule"][0] == half).all()
    assert _one_label_per_region({}, {}) == {}
