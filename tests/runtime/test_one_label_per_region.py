"""Overlapping focal findings: one label per region (the most probable label claims it first), for the mask
components of a volume and the boxes of a radiograph."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import _box_region, _itself, _one_label_per_region
from dicom_agent.inference.onnx_runner import DetectedBox


def _blob(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((8, 32, 32), bool)
    mask[z0:z1, y0:y1, x0:x1] = True
    return mask


def test_a_region_claimed_by_a_more_probable_label_is_not_reported_again() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    elsewhere = _blob(2, 6, 20, 28, 20, 28)
    mostly_inside = _blob(2, 6, 5, 13, 4, 12)  # 7 of its 8 rows inside ``region``
    kept = _one_label_per_region(
        {"mass": [region], "nodule": [elsewhere, mostly_inside]}, {"mass": 0.9, "nodule": 0.6}, _itself
    )
    assert [c.sum() for c in kept["mass"]] == [region.sum()]
    assert len(kept["nodule"]) == 1 and (kept["nodule"][0] == elsewhere).all()


def test_the_more_probable_label_wins_and_a_label_keeps_its_largest_component() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    own = _blob(2, 4, 20, 26, 20, 26)
    kept = _one_label_per_region(
        {"mass": [region, own], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8}, _itself
    )
    assert len(kept["nodule"]) == 1 and len(kept["mass"]) == 1 and (kept["mass"][0] == own).all()
    # every component claimed: the label stays present with its largest one
    kept = _one_label_per_region({"mass": [region], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8}, _itself)
    assert (kept["mass"][0] == region).all()
    half = _blob(2, 6, 8, 16, 4, 12)  # exactly half inside: not "mostly", kept
    kept = _one_label_per_region({"mass": [region], "nodule": [half]}, {"mass": 0.9, "nodule": 0.6}, _itself)
    assert (kept["nodule"][0] == half).all()
    assert _one_label_per_region({}, {}, _itself) == {}


def test_radiograph_boxes_claim_their_regions_the_same_way() -> None:
    consolidation = DetectedBox("consolidation", 0.5, 10, 10, 40, 40)
    mass_on_it = DetectedBox("mass", 0.6, 12, 14, 38, 36)  # the same opacity in the mass channel
    own_mass = DetectedBox("mass", 0.3, 60, 60, 80, 80)
    nodule_only_there = DetectedBox("nodule", 0.4, 20, 20, 26, 26)
    boxes = {"consolidation": [consolidation], "mass": [mass_on_it, own_mass], "nodule": [nodule_only_there]}
    probabilities = {"consolidation": 0.9, "mass": 0.7, "nodule": 0.6}
    kept = _one_label_per_region(boxes, probabilities, lambda b: _box_region(b, (128, 128)))
    assert kept == {"consolidation": [consolidation], "mass": [own_mass], "nodule": [nodule_only_there]}
    # the nodule's box lies wholly inside the consolidation: it is kept only because the label is present


def test_box_regions_cover_pixel_edges_and_stay_inside_the_grid() -> None:
    region = _box_region(DetectedBox("mass", 1.0, 2.5, 3.0, 5.0, 6.2), (10, 10))
    assert region.sum() == 4 * 3 and region[3:7, 2:5].all()  # rows 3..6, columns 2..4
    grown = _box_region(DetectedBox("mass", 1.0, 0.0, 0.0, 2.0, 10.0), (10, 10), margin=1)
    assert grown.sum() == 3 * 10 and grown[:, :3].all()


def test_small_lesions_are_components_and_small_side_parts_are_not() -> None:
    from dicom_agent.inference.bundle_adapter import MIN_LESION_VOXELS, MIN_PART_PIXELS, _components

    mask = _blob(2, 6, 4, 12, 4, 12)
    mask[7, 20, 20:22] = True  # two voxels: a 10 mm PET lesion on the 32 x 64^2 grid
    assert [c.sum() for c in _components(mask, MIN_LESION_VOXELS)] == [4 * 8 * 8, 2]
    assert [c.sum() for c in _components(mask, MIN_PART_PIXELS)] == [4 * 8 * 8]
    assert _components(np.zeros((4, 4, 4), bool), MIN_LESION_VOXELS) == []
