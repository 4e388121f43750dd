"""Box decoding of the runtime: CenterNet peaks, or the segmentation's components where the manifest says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_agent.inference.onnx_runner import BundleRunner, mask_component_boxes, mask_components

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundled"


def test_components_are_four_connected() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:4, 1:4] = True  # a square
    mask[4, 4] = True  # touches the square only at a corner: its own component
    mask[6:11, 2] = mask[6:11, 6] = mask[10, 2:7] = True  # a U: one component however it is scanned
    lab = mask_components(mask)
    assert (lab[mask] > 0).all() and (lab[~mask] == 0).all()
    assert len(np.unique(lab[1:4, 1:4])) == 1 and lab[4, 4] != lab[1, 1]
    assert len({lab[6, 2], lab[6, 6], lab[10, 4]}) == 1
    assert len(np.unique(lab[mask])) == 3


def test_component_boxes_outline_the_mask_and_score_its_peak() -> None:
    prob = np.zeros((32, 32), np.float32)
    prob[4:9, 10:20] = 0.7
    prob[6, 12] = 0.95
    prob[20:22, 20:23] = 0.6
    prob[25, 25] = 0.4  # below the mask threshold: no box
    boxes = sorted(mask_component_boxes(prob, "nodule", 0.5, 0.5), key=lambda b: -b.score)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(10, 4, 20, 9), (20, 20, 23, 22)]
    assert boxes[0].score == pytest.approx(0.95 * 0.5) and boxes[1].score == pytest.approx(0.6 * 0.5)
    assert mask_component_boxes(np.zeros((8, 8), np.float32), "nodule", 0.5, 1.0) == []


def test_runner_takes_each_labels_boxes_from_its_source() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    side, grid = 128, 16
    heat = np.zeros((len(keys), grid, grid), np.float32)
    heat[0, 4, 4] = heat[1, 10, 10] = 0.9  # a peak for the first two labels
    size = np.full((2, grid, grid), 0.1, np.float32)
    offset = np.full((2, grid, grid), 0.5, np.float32)
    seg = np.zeros((len(keys), side, side), np.float32)
    seg[0, 60:70, 30:36] = 0.8  # the first label's mask lies elsewhere than its peak
    probs = np.full(len(keys), 0.5, np.float32)
    runner.box_source = {"cxr": {keys[0]: "mask"}}
    boxes = runner.boxes("cxr", heat, size, offset, seg, probs, 0.3)
    first = [b for b in boxes if b.label == keys[0]]
    assert [(b.x0, b.y0, b.x1, b.y1) for b in first] == [(30, 60, 36, 70)] and first[0].score == pytest.approx(0.4)
    second = [b for b in boxes if b.label == keys[1]]  # still the CenterNet peak: centre (10.5, 10.5) cells
    assert len(second) == 1 and (second[0].x0 + second[0].x1) / 2 == pytest.approx(10.5 * 8)
    forced = runner.boxes("cxr", heat, size, offset, seg, probs, 0.3, source="heatmap")
    assert [(b.x0 + b.x1) / 2 for b in forced if b.label == keys[0]] == [pytest.approx(4.5 * 8)]
    seg[0] = 0.0  # an empty mask falls back to the label's peaks
    fallback = runner.boxes("cxr", heat, size, offset, seg, probs, 0.3)
    assert [(b.x0 + b.x1) / 2 for b in fallback if b.label == keys[0]] == [pytest.approx(4.5 * 8)]
    other_kind = runner.boxes("ct", heat, size, offset, seg, probs, 0.3)  # the choice is per kind
    assert [(b.x0 + b.x1) / 2 for b in other_kind if b.label == keys[0]] == [pytest.approx(4.5 * 8)]
