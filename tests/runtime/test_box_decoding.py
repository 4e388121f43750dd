"""Box decoding of the runtime: CenterNet peaks, or the segmentation's components where the manifest says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_agent.inference.bundle_adapter import BundleAdapter
from dicom_agent.inference.onnx_runner import (
    BundleRunner,
    DetectedBox,
    delineate,
    demote_rivals,
    fluid_only,
    grow_from_seeds,
    label_share,
    mask_component_boxes,
    mask_components,
    outline_by_mask,
    seg_support,
    threshold_mask,
    voxel_noise,
)
from models.evaluate import dice

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
    boxes = sorted(mask_component_boxes(prob, prob >= 0.5, "nodule", 0.5), key=lambda b: -b.score)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(10, 4, 20, 9), (20, 20, 23, 22)]
    assert boxes[0].score == pytest.approx(0.95 * 0.5) and boxes[1].score == pytest.approx(0.6 * 0.5)
    assert mask_component_boxes(np.zeros((8, 8), np.float32), np.zeros((8, 8), bool), "nodule", 1.0) == []


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
    runner.box_source, runner.support_power = {"cxr": {keys[0]: "mask"}}, {}  # the sources alone
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


def test_each_label_is_masked_at_its_own_threshold() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    runner.mask_thresholds = {"cxr": {keys[0]: 0.02}}
    assert runner.mask_threshold_of("cxr", keys[0]) == 0.02
    assert runner.mask_threshold_of("ct", keys[0]) == runner.mask_threshold == 0.5
    seg = np.full((len(keys), 4, 4), 0.03, np.float32)
    seg[:, 0, 0] = 0.6
    masks = runner.binarize("cxr", seg, axis=0)
    assert masks[0].all() and masks[1].sum() == 1
    volume = np.repeat(seg[None], 3, axis=0)  # (D,L,s,s): the label axis is 1
    assert runner.binarize("cxr", volume, axis=1)[:, 0].all() and runner.binarize("ct", volume, axis=1)[:, 0].sum() == 3
    runner.box_source = {"cxr": {keys[0]: "mask"}}  # mask-derived boxes outline the same mask
    heat = np.zeros((len(keys), 1, 1), np.float32)
    size = offset = np.zeros((2, 1, 1), np.float32)
    boxes = runner.boxes("cxr", heat, size, offset, seg, np.ones(len(keys), np.float32), 0.3)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes if b.label == keys[0]] == [(0, 0, 4, 4)]


def test_shipped_manifest_thresholds_are_read() -> None:
    import json

    decoding = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    assert runner.mask_thresholds == decoding.get("mask_thresholds", {})
    for kind, levels in decoding.get("mask_thresholds", {}).items():
        for key, level in levels.items():
            assert 0 < level < 1 and runner.mask_threshold_of(kind, key) == level


def test_hysteresis_keeps_the_faint_parts_that_touch_a_confident_pixel() -> None:
    prob = np.zeros((3, 16, 16), np.float32)
    prob[1, 2:8, 2:8] = 0.05  # a lesion's faint extent ...
    prob[1, 4, 4] = 0.9  # ... around a confident core
    prob[0:3, 5, 5] = 0.05  # the extent continues on the slices above and below
    prob[1, 12:15, 12:15] = 0.05  # a faint blob with no confident pixel
    prob[1, 0, 15] = 0.9  # a seed on the far edge must not leak across it (np.roll wraps around)
    mask = threshold_mask(prob, 0.02, 0.5)
    assert mask[1, 2:8, 2:8].all() and mask[:, 5, 5].all() and not mask[1, 12:15, 12:15].any()
    assert mask.sum() == 36 + 2 + 1 and mask[1, 0, 15] and not mask[1, 0, 0]
    assert (threshold_mask(prob, 0.02) == (prob >= 0.02)).all()  # no seed level: a plain threshold
    assert (threshold_mask(prob, 0.6, 0.5) == (prob >= 0.6)).all()  # seeds below the level change nothing
    assert not grow_from_seeds(np.zeros((4, 4), bool), np.ones((4, 4), bool)).any()


def test_focal_labels_get_hysteresis_and_non_focal_labels_do_not() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    focal = next(lab.key for lab in runner.labels if lab.focal)
    diffuse = next(lab.key for lab in runner.labels if not lab.focal)
    runner.mask_thresholds = {"cxr": {focal: 0.02, diffuse: 0.02}}
    seg = np.zeros((len(runner.labels), 8, 8), np.float32)
    seg[:, 0:2, 0:2] = 0.05  # faint, no confident pixel: not a lesion, but a faint effusion is still a mask
    masks = runner.binarize("cxr", seg, axis=0)
    assert not masks[runner.label_keys.index(focal)].any() and masks[runner.label_keys.index(diffuse)].sum() == 4


def test_cores_are_given_for_the_labels_masked_below_the_default() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    runner.mask_thresholds = {"cxr": {keys[0]: 0.02}}
    seg = np.full((len(keys), 4, 4), 0.3, np.float32)
    seg[:, 1, 1] = 0.8
    cores = runner.cores("cxr", seg, 0, [keys[0], keys[1]])
    assert list(cores) == [keys[0]] and cores[keys[0]].sum() == 1 and cores[keys[0]][1, 1]
    volume = np.repeat(seg[None], 2, axis=0)  # (D,L,s,s)
    assert runner.cores("cxr", volume, 1, [keys[0]])[keys[0]].shape == (2, 4, 4)
    assert runner.cores("ct", volume, 1, [keys[0]]) == {}


def test_label_share_is_the_labels_part_of_the_focal_evidence_in_the_box() -> None:
    seg = np.zeros((3, 16, 16), np.float32)
    seg[0, 2:6, 2:6] = 0.8  # label 0 leads here
    seg[1, 2:6, 2:6] = 0.4
    seg[2, 2:6, 2:6] = 0.9  # label 2 is not a rival: only the listed labels compete
    box = DetectedBox("x", 1.0, 2, 2, 6, 6)
    assert label_share(seg, box, 0, [0, 1]) == pytest.approx(1.0)
    assert label_share(seg, box, 1, [0, 1]) == pytest.approx(0.5)
    assert label_share(np.zeros_like(seg), box, 1, [0, 1]) == 0.0  # no evidence at all: no share


def test_seg_support_is_how_surely_the_labels_own_mask_shows_a_lesion_in_the_box() -> None:
    seg = np.zeros((2, 16, 16), np.float32)
    seg[0, 2:6, 2:6] = 0.8
    seg[0, 2:4, 2:6] = 0.2  # half the box faint: the 90th percentile reads the lesion, not the mean
    seg[1, 2:6, 2:6] = 0.9  # another label's evidence does not back label 0
    box = DetectedBox("x", 1.0, 2, 2, 6, 6)
    assert seg_support(seg, box, 0) == pytest.approx(0.8)
    assert seg_support(seg, DetectedBox("x", 1.0, 10, 10, 14, 14), 0) == 0.0  # on nothing
    assert seg_support(seg, DetectedBox("x", 1.0, 5.5, 5.5, 5.6, 5.6), 0) == pytest.approx(0.8)  # under a pixel


def test_seg_support_is_numpys_percentile() -> None:
    """The partial sort gives np.percentile's linear interpolation, on boxes of every size and at the edges."""
    rng = np.random.default_rng(0)
    seg = rng.random((3, 32, 32)).astype(np.float32)
    for _ in range(300):
        x0, y0 = (float(v) for v in rng.uniform(0, 31, 2))
        x1, y1 = x0 + float(rng.uniform(0, 12)), y0 + float(rng.uniform(0, 12))
        box = DetectedBox("x", 1.0, x0, y0, x1, y1)
        r0, c0 = int(y0), int(x0)
        r1, c1 = max(int(np.ceil(y1)), r0 + 1), max(int(np.ceil(x1)), c0 + 1)
        assert seg_support(seg, box, 1) == pytest.approx(float(np.percentile(seg[1, r0:r1, c0:c1], 90)), abs=1e-6)


def test_a_peak_its_segmentation_does_not_back_ranks_below_one_it_does() -> None:
    """Two consolidation peaks: the stronger one where the consolidation channel is faint, the weaker on what it
    shows. Without support weighing the faint one leads (no other focal label there: its label share is whole); at
    power 1 the backed one does."""
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    consolidation = keys.index("consolidation")
    seg = np.zeros((len(keys), 64, 64), np.float32)
    seg[consolidation, 10:30, 10:30] = 0.6
    seg[consolidation, 38:58, 38:58] = 0.1
    heat = np.zeros((len(keys), 16, 16), np.float32)
    heat[consolidation, 5, 5], heat[consolidation, 12, 12] = 0.5, 0.7
    size, offset = np.full((2, 16, 16), 20 / 64, np.float32), np.zeros((2, 16, 16), np.float32)
    probs = np.ones(len(keys), np.float32)
    runner.box_source, runner.rival_factor, runner.region_models = {}, {}, {}
    runner.support_power, runner.box_outline = {}, {}
    found = [b for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3) if b.label == "consolidation"]
    assert [(b.x0, round(b.score, 3)) for b in found] == [(38, 0.7), (10, 0.5)]
    runner.support_power = {"cxr": 1.0}
    found = [b for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3) if b.label == "consolidation"]
    assert [(b.x0, round(b.score, 3)) for b in found] == [(10, 0.3), (38, 0.07)]
    runner.support_power = {"ct": 1.0}  # another kind's setting leaves radiographs alone
    assert runner.boxes("cxr", heat, size, offset, seg, probs, 0.3)[0].x0 == 38


def test_a_peak_box_takes_the_outline_of_the_mask_component_it_overlaps_most() -> None:
    """Scores stay; only the listed labels' boxes change; a box overlapping no component by OUTLINE_MIN_IOU keeps
    its own outline."""
    keys = ["nodule", "mass", "consolidation"]
    seg = np.zeros((3, 64, 64), np.float32)
    seg[2, 10:30, 8:40] = 0.7  # the consolidation's mask: wider than the peak's box
    seg[2, 12:20, 42:50] = 0.7  # a second, smaller component beside it
    seg[0, 10:30, 8:40] = 0.7  # another label's mask over the same place
    masks = seg > 0.5
    boxes = [
        DetectedBox("consolidation", 0.6, 14, 10, 34, 30),  # IoU 0.625 with the first component, 0 with the second
        DetectedBox("consolidation", 0.4, 52, 40, 60, 48),  # on nothing the mask shows
        DetectedBox("nodule", 0.5, 14, 10, 34, 30),  # not a listed label
    ]
    out = outline_by_mask(boxes, seg, masks, {"consolidation"}, keys)
    assert [(b.label, b.score, b.corners) for b in out] == [
        ("consolidation", 0.6, (8.0, 10.0, 40.0, 30.0)),
        ("consolidation", 0.4, (52, 40, 60, 48)),
        ("nodule", 0.5, (14, 10, 34, 30)),
    ]
    small = [DetectedBox("consolidation", 0.6, 20, 18, 24, 22)]  # IoU 16/640 with the component: under the bar
    assert outline_by_mask(small, seg, masks, {"consolidation"}, keys) == small


def test_the_runner_outlines_the_boxes_of_the_labels_its_manifest_names() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    consolidation = keys.index("consolidation")
    seg = np.zeros((len(keys), 64, 64), np.float32)
    seg[consolidation, 10:30, 8:40] = 0.8
    heat = np.zeros((len(keys), 16, 16), np.float32)
    heat[consolidation, 5, 6] = 0.5  # centre (24, 20), a 20-pixel box
    size, offset = np.full((2, 16, 16), 20 / 64, np.float32), np.zeros((2, 16, 16), np.float32)
    probs = np.ones(len(keys), np.float32)
    runner.box_source, runner.rival_factor, runner.region_models, runner.support_power = {}, {}, {}, {}
    found = []
    for outline in ({}, {"cxr": {"consolidation"}}, {"ct": {"consolidation"}}):
        runner.box_outline = outline
        found.append([(b.score, b.corners) for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3)])
    assert found[0] == [(pytest.approx(0.5), (14.0, 10.0, 34.0, 30.0))]
    assert found[1] == [(pytest.approx(0.5), (8.0, 10.0, 40.0, 30.0))]
    assert found[2] == found[0]


def test_a_focal_box_on_another_labels_lesion_ranks_below_the_labels_own() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    nodule, mass = keys.index("nodule"), keys.index("mass")
    effusion, lesion = keys.index("pleural_effusion"), keys.index("hypermetabolic_lesion")
    side = 64
    seg = np.zeros((len(keys), side, side), np.float32)
    seg[mass, 10:30, 10:30] = 0.9  # a mass, also seen faintly as a "nodule"
    seg[nodule, 10:30, 10:30] = 0.6
    seg[nodule, 40:46, 40:46] = 0.7  # the real nodule
    seg[effusion, 10:30, 10:30] = 0.95  # not focal: no rival of the focal labels, scored as before
    seg[lesion, 10:30, 10:30] = 0.6
    heat = np.zeros((len(keys), 8, 8), np.float32)
    size = offset = np.zeros((2, 8, 8), np.float32)
    probs = np.ones(len(keys), np.float32)
    runner.box_source = {kind: {key: "mask" for key in keys} for kind in ("cxr", "pet")}
    runner.rival_factor, runner.support_power = {}, {}  # label shares alone (demotion: the test below)
    by_label = {b.label: b for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3) if b.label != "nodule"}
    nodules = [b for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3) if b.label == "nodule"]
    assert [(b.x0, b.y0) for b in nodules] == [(40, 40), (10, 10)]  # its own lesion first
    assert nodules[0].score == pytest.approx(0.7) and nodules[1].score == pytest.approx(0.6 * 0.6 / 0.9)
    assert by_label["mass"].score == pytest.approx(0.9) and by_label["pleural_effusion"].score == pytest.approx(0.95)
    pet = [b for b in runner.boxes("pet", heat, size, offset, seg, probs, 0.3) if b.label == "hypermetabolic_lesion"]
    assert [b.score for b in pet] == [pytest.approx(0.6)]  # PET's one focal label has no rival


def test_a_focal_box_beaten_on_its_place_by_another_focal_label_is_demoted() -> None:
    """The consolidation box on the mass's place (IoU 0.47) ranks below the consolidation elsewhere; the mass,
    the nodule that only touches the mass (IoU 0.02) and the effusion (not focal) keep their scores; a rival is
    one of another label that scores higher as given, so the mass is not demoted by the demoted box."""
    boxes = [
        DetectedBox("mass", 0.6, 10, 10, 30, 30),
        DetectedBox("consolidation", 0.5, 14, 14, 34, 34),
        DetectedBox("consolidation", 0.45, 60, 60, 80, 80),
        DetectedBox("nodule", 0.4, 29, 29, 33, 33),
        DetectedBox("pleural_effusion", 0.3, 10, 10, 30, 30),
    ]
    scores = [b.score for b in demote_rivals(boxes, {"nodule", "mass", "consolidation"}, 0.7)]
    assert scores == pytest.approx([0.6, 0.35, 0.45, 0.4, 0.3])
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    seg = np.zeros((len(keys), 64, 64), np.float32)
    seg[keys.index("mass"), 10:30, 10:30] = 0.9
    seg[keys.index("consolidation"), 12:30, 12:30] = 0.6
    heat = np.zeros((len(keys), 8, 8), np.float32)
    size = offset = np.zeros((2, 8, 8), np.float32)
    probs = np.ones(len(keys), np.float32)
    runner.box_source, runner.support_power = {"cxr": {key: "mask" for key in keys}}, {}
    found = []
    for factor in ({}, {"cxr": 0.5}, {"ct": 0.5}):  # off, on for radiographs, on for another kind
        runner.rival_factor = factor
        found.append({b.label: b.score for b in runner.boxes("cxr", heat, size, offset, seg, probs, 0.3)})
    assert found[0]["consolidation"] == pytest.approx(0.6 * 0.6 / 0.9)  # its label share over its box
    assert found[1] == found[0] | {"consolidation": pytest.approx(0.5 * found[0]["consolidation"])}
    assert found[2] == found[0]


def test_components_are_face_connected_in_volumes_too() -> None:
    mask = np.zeros((4, 6, 6), bool)
    mask[0:2, 0:2, 0:2] = True  # a cube over two slices: one component
    mask[2, 2, 2] = True  # touches the cube only at a corner: its own
    mask[3, 4:6, 4] = True
    lab = mask_components(mask)
    assert len(np.unique(lab[0:2, 0:2, 0:2])) == 1 and lab[2, 2, 2] != lab[0, 0, 0]
    assert len(np.unique(lab[mask])) == 3 and (lab[~mask] == 0).all()


def test_components_equal_simpleitks_on_winding_and_random_masks() -> None:
    """The same partition as SimpleITK's face-connected labelling, on a serpentine (a component whose span is the
    whole path: the case pointer jumping is for) and on random masks of both ranks."""
    import SimpleITK as sitk

    serpentine = np.zeros((40, 40), bool)
    serpentine[::4] = True
    serpentine[1::8, -1] = serpentine[2::8, -1] = serpentine[3::8, -1] = True
    serpentine[5::8, 0] = serpentine[6::8, 0] = serpentine[7::8, 0] = True
    rng = np.random.default_rng(3)
    for mask in (serpentine, rng.random((50, 50)) > 0.45, rng.random((12, 30, 30)) > 0.55):
        ours = mask_components(mask)
        ref = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False))
        pairs = {(a, b) for a, b in zip(ours[mask].tolist(), ref[mask].tolist(), strict=True)}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # one-to-one
        assert (ours[~mask] == 0).all()
    assert len(np.unique(mask_components(serpentine)[serpentine])) == 1


def _bump(shape: tuple[int, ...], centre: tuple[int, ...], radius: float, peak: float) -> np.ndarray:
    """A lesion drawn as the phantoms draw PET lesions: peak * (1 - d^2 / 2r^2) inside, half the peak at the edge."""
    d2 = sum(
        (np.arange(n).reshape([-1 if a == i else 1 for a in range(len(shape))]) - c) ** 2
        for i, (n, c) in enumerate(zip(shape, centre, strict=True))
    )
    d = np.sqrt(d2)
    return np.where(
        d <= radius,
        peak * (1 - 0.5 * (np.minimum(d, radius) / radius) ** 2),
        0.5 * peak * np.exp(-(((d - radius) / 1.5) ** 2)),
    )


def test_delineation_outlines_each_lesion_at_its_own_half_peak() -> None:
    shape = (9, 40, 40)
    image = _bump(shape, (4, 10, 10), 4.0, 0.9) + _bump(shape, (4, 28, 28), 5.0, 0.3)  # a hot and a faint one
    truth = np.zeros(shape, bool)
    for centre, radius in (((4, 10, 10), 4.0), ((4, 28, 28), 5.0)):
        truth |= sum((np.indices(shape)[i] - c) ** 2 for i, c in enumerate(centre)) <= radius**2
    network = np.zeros(shape, bool)
    network[3:6, 8:13, 8:13] = True  # too small: the core of the hot lesion
    network[2:7, 22:35, 22:35] = True  # too large: the faint lesion and its surroundings
    drawn = delineate(image.astype(np.float32), network, 0.5)
    assert dice(drawn, truth) > 0.9 > dice(network, truth) + 0.2
    assert not drawn[:, 18:20, :].any()  # each part keeps to its own lesion
    beside = np.zeros(shape, bool)
    beside[4, 10, 16] = True  # next to the hot lesion, below its half peak: kept as drawn, not moved onto it
    assert (delineate(image.astype(np.float32), beside, 0.5) == beside).all()
    assert (delineate(np.zeros(shape, np.float32), network, 0.5) == network).all()  # a black image: nothing to cut


def test_the_runner_outlines_only_the_labels_the_manifest_names() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    shape = (9, 40, 40)
    image = (0.05 + _bump(shape, (4, 10, 10), 4.0, 0.9)).astype(np.float32)
    masks = np.zeros((shape[0], len(keys), *shape[1:]), bool)  # (D,L,s,s)
    masks[3:6, :, 8:13, 8:13] = True
    runner.delineation, runner.fluid = {"pet": {"hypermetabolic_lesion": 0.5}}, {}
    out = runner.outline("pet", masks, image, axis=1)
    lesion = keys.index("hypermetabolic_lesion")
    assert out[:, lesion].sum() > masks[:, lesion].sum()
    assert all((out[:, li] == masks[:, li]).all() for li in range(len(keys)) if li != lesion)
    assert runner.outline("ct", masks, image, axis=1) is masks  # nothing named for CT


def _effusion_slab(shape: tuple[int, int, int]) -> np.ndarray:
    """A CT model input: aerated lung (0.1, about -850 HU), a posterior layer of fluid (0.72) on the chest wall
    (0.74, soft tissue)."""
    image = np.full(shape, 0.1, np.float32)
    image[:, 20:26] = 0.72
    image[:, 26:] = 0.74
    return image


def test_a_fluid_mask_keeps_to_the_fluid_and_never_loses_a_finding() -> None:
    image = _effusion_slab((4, 32, 32))
    mask = np.zeros(image.shape, bool)
    mask[:, 17:28, 4:28] = True  # runs 3 rows onto the lung and 2 into the wall
    mask[1:3, 2:4, 2:4] = True  # a part lying on lung alone
    kept = fluid_only(image, mask, 0.4)
    assert not kept[:, 17:20, 4:28].any() and kept[:, 20:28, 4:28].all()  # lung gone; fluid and wall stay
    assert kept[1:3, 2:4, 2:4].all()  # no voxel of it is dense: kept as drawn
    assert (fluid_only(image, mask, 0.8) == mask).all()  # nothing that dense: nothing removed


def test_a_water_band_drops_the_wall_and_takes_the_fluid_beside_the_mask() -> None:
    """With a water-density band, the mask's voxels denser than water (the chest wall, 0.74 = 36 HU) leave it and
    the fluid voxels one step beside it join; fat (0.64 = -104 HU) and fluid two steps away do not."""
    image = _effusion_slab((4, 32, 32))
    image[:, 20:26, :2] = 0.64  # fat at the fluid's far left
    mask = np.zeros(image.shape, bool)
    mask[:, 21:28, 4:28] = True  # a row short of the fluid's top, 2 rows into the wall
    mask[1:3, 28:30, 30:32] = True  # a part lying on the wall alone
    band = (0.6929, 0.7357)  # water ± 30 HU
    kept = fluid_only(image, mask, 0.4, band)
    assert not kept[:, 26:28, 4:28].any()  # wall gone
    assert kept[:, 20, 4:28].all() and kept[:, 21:26, 3:29].all()  # fluid: its own, one step above and aside
    assert not kept[:, 20, 3].any() and not kept[:, 20, 28].any()  # diagonal: two steps
    assert not kept[:, 20:26, :3].any() and not kept[:, 20:26, 29:].any()  # fat; fluid two steps away
    assert kept[1:3, 28:30, 30:32].all()  # nothing of it at water density: kept as drawn
    assert (fluid_only(image, mask, 0.4) == (mask & (image >= 0.4))).all()  # no band: the level alone


def test_voxel_noise_reads_the_noise_not_the_anatomy() -> None:
    rng = np.random.default_rng(0)
    flat = _effusion_slab((8, 64, 64))  # lung, fluid, wall: edges only
    assert voxel_noise(flat) == 0.0
    noisy = flat + rng.normal(0.0, 0.05, flat.shape).astype(np.float32)
    assert voxel_noise(noisy) == pytest.approx(0.05, rel=0.1)


def test_a_water_band_narrower_than_the_noise_is_not_applied() -> None:
    """Noise of 0.05 (70 HU in the CT window) is wider than water ± 30 HU: the band would keep a random third of
    the fluid, so the level alone decides, as without a band."""
    rng = np.random.default_rng(1)
    image = _effusion_slab((4, 32, 32)) + rng.normal(0.0, 0.05, (4, 32, 32)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[:, 21:28, 4:28] = True
    band = (0.6929, 0.7357)
    assert (fluid_only(image, mask, 0.4, band) == fluid_only(image, mask, 0.4)).all()
    quiet = _effusion_slab((4, 32, 32)) + rng.normal(0.0, 0.003, (4, 32, 32)).astype(np.float32)  # 4 HU
    assert fluid_only(quiet, mask, 0.4)[:, 26:28, 4:28].all()
    assert fluid_only(quiet, mask, 0.4, band)[:, 26:28, 4:28].mean() < 0.2  # the wall goes (36 HU ± 4: mostly)


def test_the_runner_keeps_only_the_fluid_labels_the_manifest_names_to_the_fluid() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    keys = runner.label_keys
    image = _effusion_slab((4, 32, 32))
    masks = np.zeros((4, len(keys), 32, 32), bool)  # (D,L,s,s)
    masks[:, :, 17:28, 4:28] = True
    runner.delineation, runner.fluid, runner.fluid_band = {}, {"ct": {"pleural_effusion": 0.4}}, {}
    out = runner.outline("ct", masks, image, axis=1)
    effusion = keys.index("pleural_effusion")
    assert not out[:, effusion, 17:20].any() and out[:, effusion, 20:28, 4:28].all()
    assert all((out[:, li] == masks[:, li]).all() for li in range(len(keys)) if li != effusion)
    assert runner.outline("pet", masks, image, axis=1) is masks  # nothing named for PET
    runner.fluid_band = {"ct": {"pleural_effusion": (0.6929, 0.7357)}}  # the band too: the wall goes
    out = runner.outline("ct", masks, image, axis=1)
    assert out[:, effusion, 20:26, 3:29].all() and not out[:, effusion, 26:].any()


def test_a_label_trained_without_masks_gets_no_mask_and_no_side(tmp_path: Path) -> None:
    """Cardiomegaly has a segmentation channel but no mask in training: its stray pixels once made the text say
    "Left cardiomegaly. Right cardiomegaly." (validation phantom 500001). It is present without a mask now."""
    from models.evaluate import phantom_case_study

    adapter = BundleAdapter(BUNDLE, device="cpu")
    assert not adapter.runner.labels[adapter.runner.label_keys.index("cardiomegaly")].outlined
    case, study = phantom_case_study("cxr", 500_001, tmp_path)
    assert "cardiomegaly" in {les.label for les in case.lesions}
    (item,) = adapter.analyse(study).inputs
    (finding,) = [f for f in item.findings if f.label == "cardiomegaly"]
    assert finding.laterality is None and finding.mask is None and finding.location is None
