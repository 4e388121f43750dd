"""A volume's detection boxes the masks missed: one lesion each, and none that a mask already reports a slice or
two away (the duplicate lesions of held-out PETs 900002 and 900009: the same boxes, SUVmax and size twice)."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import MERGE_SLICES, _unmasked_boxes
from dicom_agent.inference.onnx_runner import DetectedBox


def _box(z: int, row: float, col: float, score: float = 0.9, label: str = "hypermetabolic_lesion") -> DetectedBox:
    return DetectedBox(label, score, col - 2.0, row - 2.0, col + 2.0, row + 2.0, z)


def _covered() -> np.ndarray:
    """One mask component: slices 10-11, rows and columns 20-27."""
    covered = np.zeros((32, 64, 64), bool)
    covered[10:12, 20:28, 20:28] = True
    return covered


def test_a_box_beside_a_masked_lesion_in_depth_is_that_lesion() -> None:
    covered = _covered()
    near = [_box(11 + MERGE_SLICES, 24, 24), _box(10 - MERGE_SLICES, 22, 26)]  # over the mask, slices away
    assert _unmasked_boxes(near, "hypermetabolic_lesion", covered, covered, 0.5) == []


def test_boxes_apart_from_every_mask_are_lesions_once_each() -> None:
    covered = _covered()
    far = _box(11 + MERGE_SLICES + 1, 24, 24)  # over the mask's rows and columns, beyond the reach in depth
    beside = _box(10, 40, 40)  # on the mask's slice, elsewhere in the plane
    again = _box(11, 41, 39, score=0.8)  # the same lesion seen on the next slice
    weak = _box(20, 50, 50, score=0.3)  # under the score bar
    other = _box(25, 10, 10, label="nodule")
    kept = _unmasked_boxes([far, beside, again, weak, other], "hypermetabolic_lesion", covered, covered, 0.5)
    assert kept == [far, beside]


def test_a_box_centred_on_the_edge_between_a_lesion_s_voxels_is_that_lesion() -> None:
    """Held-out PET 900002: a 2-voxel component on a diagonal and a 2 × 2-pixel box around it, whose centre is
    the corner of four voxels and the voxel under it (int of the centre) not the component's: reported twice."""
    covered = np.zeros((32, 64, 64), bool)
    covered[22, 34, 45] = covered[22, 35, 44] = True
    on_edge = DetectedBox("hypermetabolic_lesion", 0.99, 44.0, 34.0, 46.0, 36.0, 22)  # centre (45.0, 35.0)
    beside = DetectedBox("hypermetabolic_lesion", 0.9, 45.0, 35.0, 47.0, 37.0, 22)  # centre (46.0, 36.0)
    assert _unmasked_boxes([on_edge, beside], "hypermetabolic_lesion", covered, covered, 0.5) == [beside]


def test_a_box_beside_a_component_not_reported_is_a_lesion() -> None:
    """Near a faint component that no detection made a lesion (``_detected`` left it out), a box is a lesion of
    its own: validation PETs 50, 77, 102 and 127 lost a drawn lesion each when every component counted."""
    faint = _covered()
    box = _box(11 + MERGE_SLICES, 24, 24)
    assert _unmasked_boxes([box], "hypermetabolic_lesion", faint, np.zeros_like(faint), 0.5) == [box]
    assert _unmasked_boxes([_box(11, 24, 24)], "hypermetabolic_lesion", faint, np.zeros_like(faint), 0.5) == []
