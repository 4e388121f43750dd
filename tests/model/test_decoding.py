"""Per-label mask thresholds chosen by Dice on validation phantoms (``models.decoding``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_agent.inference.onnx_runner import BundleRunner
from models.dataset import Sample
from models.decoding import MASK_MIN_CASES, choose_mask_thresholds
from models.labels import LABEL_KEYS

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundled"
FAINT, SHARP, WRONG, RARE = (LABEL_KEYS.index(k) for k in ("pneumothorax", "nodule", "pleural_effusion", "mass"))


def _case(i: int, labels: list[int]) -> tuple[Sample, dict[str, np.ndarray]]:
    """A radiograph whose segmentation is faint but right for one label, sharp for another, misplaced for a
    third; each finding is a square at a position that moves with ``i``."""
    cls = np.zeros((32, 64), np.uint8)
    seg = np.zeros((len(LABEL_KEYS), 32, 64), np.float32)
    for k, li in enumerate(labels):
        r, c = 2 + (li * 3 + i) % 20, 2 + 14 * k  # each label in its own columns
        cls[r : r + 6, c : c + 6] = li + 1
        if li == FAINT:  # right place, probabilities 0.03
            seg[li, r : r + 6, c : c + 6] = 0.03
        elif li == WRONG:  # confident and elsewhere
            seg[li, r : r + 6, 50:56] = 0.9
        else:  # confident and right, a faint halo around it
            seg[li, r - 1 : r + 7, c - 1 : c + 7] = 0.04
            seg[li, r : r + 6, c : c + 6] = 0.8
    present = np.zeros(len(LABEL_KEYS), np.float32)
    present[labels] = 1.0
    sample = Sample("cxr", i, np.zeros((32, 64), np.float16), cls, present, [], {}, [])
    return sample, {"seg": seg}


def _one_lesion(
    i: int,
    label: int,
    drawn: np.ndarray,
    seg: np.ndarray,
    image: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
    size: np.ndarray | None = None,
    diameter_mm: float = 20.0,
) -> tuple[Sample, dict[str, np.ndarray]]:
    """A 64 x 64 radiograph drawn with one lesion of ``label`` (its mask ``drawn``, its box that mask's), and the
    graph outputs the calibration decodes on it: ``seg`` (L,64,64), a CenterNet heatmap and size map where given
    (zeros otherwise), every label's probability 1."""
    image = np.zeros((64, 64), np.float32) if image is None else image.astype(np.float32)
    rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    box = (-1, label, float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    present = np.zeros(len(LABEL_KEYS), np.float32)
    present[label] = 1.0
    cls = (drawn * (label + 1)).astype(np.uint8)
    lesions = {"lesions": [(LABEL_KEYS[label], "right upper lobe", "right", diameter_mm, None)]}
    sample = Sample("cxr", i, image.astype(np.float16), cls, present, [box], {}, [], extra=lesions)
    grid = np.zeros((2, 16, 16), np.float32)
    raw = {
        "seg": seg,
        "probs": np.ones(len(LABEL_KEYS), np.float32),
        "image": image,
        "heatmap": np.zeros((len(LABEL_KEYS), 16, 16), np.float32) if heatmap is None else heatmap,
        "size": grid if size is None else size,
        "offset": grid,
    }
    return sample, raw


def _square() -> np.ndarray:
    """The drawn lesion of the box-ranking tests: rows and columns 10-29."""
    drawn = np.zeros((64, 64), bool)
    drawn[10:30, 10:30] = True
    return drawn


def test_thresholds_follow_the_dice_of_each_label() -> None:
    cases = [_case(i, [FAINT, SHARP, WRONG]) for i in range(8)] + [_case(i, [RARE]) for i in range(MASK_MIN_CASES - 1)]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.mask_thresholds = {}
    assert runner.mask_threshold == 0.5
    chosen, table = choose_mask_thresholds(runner, [c[0] for c in cases], [c[1] for c in cases])
    faint = LABEL_KEYS[FAINT]
    assert chosen[faint] <= 0.03 and table[faint]["0.5"] == 0.0 and table[faint][f"{chosen[faint]:g}"] == 1.0
    assert LABEL_KEYS[SHARP] not in chosen and table[LABEL_KEYS[SHARP]]["0.5"] == 1.0  # the default is best: kept
    assert LABEL_KEYS[WRONG] not in chosen and max(table[LABEL_KEYS[WRONG]].values()) == 0.0  # nothing to gain
    assert LABEL_KEYS[RARE] not in table  # too few validation cases show it


def test_export_records_mask_thresholds_the_runner_applies(smoke_bundle: Path) -> None:
    decoding = json.loads((smoke_bundle / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    assert (
        set(decoding["calibration"]["mask_dice"])
        == set(decoding["calibration"]["side_precision"])
        == {
            "cxr",
            "ct",
            "pet",
        }
    )
    runner = BundleRunner(smoke_bundle, device="cpu")
    assert runner.mask_thresholds == decoding["mask_thresholds"]
    assert runner.thresholds == decoding["thresholds"] and set(decoding["thresholds"]) == {"cxr", "ct", "pet"}
    assert set(decoding["calibration"]["delineation_dice"]) == {"cxr", "ct", "pet"}
    assert runner.delineation == decoding["delineation"]
    assert set(decoding["calibration"]["fluid_dice"]) == {"ct"} and runner.fluid == decoding["fluid"]
    # the size levels were measured through the adapter (too few smoke cases to choose one: none is)
    assert set(decoding["calibration"]["size_exact"]) == {"cxr", "ct", "pet"}
    assert runner.size_fraction == decoding.get("size_fraction", {}) == {}
    # the radiograph opacity model was tried (a smoke model's boxes rarely lie on lesions: none may be kept)
    assert set(decoding["calibration"]["region_map"]) == {"cxr"}
    # box support by the segmentation was tried on every kind
    assert set(decoding["calibration"]["support_map"]) == {"cxr", "ct", "pet"}
    assert runner.support_power == decoding.get("support_power", {})
    # outlining peak boxes by their masks was tried on every kind
    assert set(decoding["calibration"]["outline_ap"]) == {"cxr", "ct", "pet"}
    assert runner.box_outline == {kind: set(keys) for kind, keys in decoding.get("box_outline", {}).items()}
    assert set(runner.region_models) == set(decoding.get("region_model", {})) <= {"cxr"}


def test_a_size_level_is_picked_only_where_it_beats_the_model_grid() -> None:
    from models.decoding import SIZE_MIN_CASES, pick_size_level

    n = SIZE_MIN_CASES
    assert pick_size_level({"model": (0.1, 3.0), "0.5": (0.4, 1.0), "0.6": (0.4, 0.0)}, n) == (
        0.6,
        2,
        "pixels",
    )  # error
    assert pick_size_level({"model": (0.1, 3.0), "0.3": (0.4, 1.0), "0.6": (0.4, 1.0)}, n) == (0.6, 2, "pixels")  # half
    # the reach an outline may grow past the mask: a narrower one where it states more sizes, else the default
    assert pick_size_level({"model": (0.1, 3.0), "0.5": (0.1, 3.0), "0.5 r0": (0.3, 0.0)}, n) == (0.5, 0, "pixels")
    assert pick_size_level({"model": (0.1, 3.0), "0.6": (0.4, 1.0), "0.5 r1": (0.4, 1.0)}, n) == (0.6, 2, "pixels")
    # counted between the samples where that states more sizes; on a tie, whole pixels (the reach comes after)
    assert pick_size_level({"model": (0.1, 3.0), "0.5": (0.3, 1.0), "0.45 r1 sub": (0.7, 0.0)}, n) == (
        0.45,
        1,
        "between",
    )
    assert pick_size_level({"model": (0.1, 3.0), "0.5 sub": (0.4, 1.0), "0.5 r1": (0.4, 1.0)}, n) == (0.5, 1, "pixels")
    # by partial volume where that states more sizes; on a tie, the earlier count
    assert pick_size_level({"model": (0.1, 3.0), "0.5 sub": (0.4, 1.0), "0.5 r0 pv": (0.8, 0.0)}, n) == (
        0.5,
        0,
        "partial",
    )
    assert pick_size_level({"model": (0.1, 3.0), "0.5 sub": (0.8, 0.0), "0.5 pv": (0.8, 0.0)}, n) == (0.5, 2, "between")
    assert pick_size_level({"model": (0.30, 1.0), "0.5": (0.33, 0.0)}, n) is None  # gains less than the margin
    assert pick_size_level({"model": (0.0, 3.0), "0.5": (0.9, 0.0)}, n - 1) is None  # too few cases
    assert pick_size_level({"model": (0.0, 3.0)}, n) is None


def test_the_shipped_bundle_measures_sizes_as_calibrated() -> None:
    from dicom_agent.inference.onnx_runner import DELINEATION_REACH
    from models.decoding import SIZE_MARGIN, size_option

    decoding = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    assert runner.size_fraction == decoding["size_fraction"] and decoding["size_fraction"]
    assert runner.size_reach == decoding.get("size_reach", {})
    assert runner.size_subvoxel == {kind: set(keys) for kind, keys in decoding.get("size_subvoxel", {}).items()}
    assert runner.size_solid == decoding.get("size_partial_volume", {})
    for kind, levels in decoding["size_fraction"].items():
        for key, level in levels.items():
            table = decoding["calibration"]["size_exact"][kind][key]
            reach = runner.size_reach.get(kind, {}).get(key, DELINEATION_REACH)
            between, partial = key in runner.size_subvoxel.get(kind, set()), key in runner.size_solid.get(kind, {})
            option = size_option(level, reach, "partial" if partial else "between" if between else "pixels")
            assert table[option]["exact"] >= table["model"]["exact"] + SIZE_MARGIN


def test_labels_whose_masks_guess_the_side_are_left_unsided() -> None:
    """Effusion masks on the right side: sided. Pneumothorax masks over both lungs for a one-sided truth: half
    of the stated sides are wrong, so the label is reported without a side."""
    from models.decoding import SIDE_MIN_PRECISION, choose_unsided

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.mask_thresholds = {}
    effusion, ptx = LABEL_KEYS.index("pleural_effusion"), LABEL_KEYS.index("pneumothorax")
    samples, raws = [], []
    for i in range(MASK_MIN_CASES + 1):
        side = "right" if i % 2 else "left"
        cols = slice(4, 20) if side == "right" else slice(44, 60)  # low columns are the patient's right
        cls = np.zeros((32, 64), np.uint8)
        cls[20:30, cols] = effusion + 1
        cls[2:8, cols] = ptx + 1
        seg = np.zeros((len(LABEL_KEYS), 32, 64), np.float32)
        seg[effusion, 20:30, cols] = 0.9
        seg[ptx, 2:8, 4:60] = 0.9
        present = np.zeros(len(LABEL_KEYS), np.float32)
        present[[effusion, ptx]] = 1.0
        lesions = [("pleural_effusion", f"{side}_pleura", side, 20.0), ("pneumothorax", f"{side}_pleura", side, 10.0)]
        samples.append(
            Sample("cxr", i, np.zeros((32, 64), np.float16), cls, present, [], {}, [], extra={"lesions": lesions})
        )
        raws.append({"seg": seg})
    unsided, precision = choose_unsided(runner, samples, raws)
    assert precision == {"pleural_effusion": 1.0, "pneumothorax": 0.5} and unsided == ["pneumothorax"]
    assert precision["pneumothorax"] < SIDE_MIN_PRECISION <= precision["pleural_effusion"]


def test_the_shipped_bundle_reports_labels_without_sides_as_calibrated() -> None:
    decoding = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    assert runner.unsided == {kind: set(keys) for kind, keys in decoding["unsided"].items()}
    for kind, keys in decoding["unsided"].items():  # each below the bar on the validation phantoms
        assert all(decoding["calibration"]["side_precision"][kind][key] < 0.75 for key in keys)


def test_lesions_are_outlined_where_that_beats_the_networks_masks() -> None:
    """Nodules drawn as bright discs whose edge is at half their peak, the network's masks too small: outlining
    at half the peak is chosen. Masses whose masks are already right on a black image: nothing to gain, kept."""
    from models.decoding import choose_delineation

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.mask_thresholds, runner.delineation = {}, {}
    nodule, mass = LABEL_KEYS.index("nodule"), LABEL_KEYS.index("mass")
    rows, cols = np.indices((32, 64))
    samples, raws = [], []
    for i in range(MASK_MIN_CASES + 1):
        r, c = 8 + i, 12 + 2 * i
        d = np.sqrt((rows - r) ** 2 + (cols - c) ** 2)
        image = np.where(d <= 4, 0.8 * (1 - 0.5 * (d / 4) ** 2), 0.4 * np.exp(-(((d - 4) / 1.5) ** 2)))
        cls = np.zeros((32, 64), np.uint8)
        cls[d <= 4] = nodule + 1
        cls[20:26, 40:50] = mass + 1
        seg = np.zeros((len(LABEL_KEYS), 32, 64), np.float32)
        seg[nodule][d <= 3] = 0.9  # too small: the nodule's core
        seg[mass, 20:26, 40:50] = 0.9
        present = np.zeros(len(LABEL_KEYS), np.float32)
        present[[nodule, mass]] = 1.0
        samples.append(Sample("cxr", i, image.astype(np.float16), cls, present, [], {}, []))
        raws.append({"seg": seg, "image": np.where(cls == mass + 1, 0.0, image).astype(np.float32)})
    chosen, table = choose_delineation(runner, samples, raws)
    assert chosen == {"nodule": 0.5} and table["nodule"]["0.5"] > 0.95 > table["nodule"]["mask"] + 0.2
    assert table["mass"]["mask"] == 1.0 and "mass" not in chosen
    assert "consolidation" not in table  # no validation case shows it


def test_decision_thresholds_are_chosen_per_kind_by_f1() -> None:
    """Nodules whose radiograph probabilities separate at 0.6 and CT ones at 0.2: each kind gets its own
    threshold; a label no case shows, or one that does not apply to the kind, gets none."""
    from models.decoding import choose_thresholds

    nodule = LABEL_KEYS.index("nodule")
    rng = np.random.default_rng(0)
    for kind, cut in (("cxr", 0.6), ("ct", 0.2)):
        samples, raws = [], []
        for i in range(40):
            present = np.zeros(len(LABEL_KEYS), np.float32)
            present[nodule] = float(i % 2)
            probs = np.zeros(len(LABEL_KEYS), np.float32)
            probs[nodule] = cut + (0.05 if i % 2 else -0.05) + float(rng.uniform(-0.04, 0.04))
            blank = np.zeros((4, 4), np.float16)
            samples.append(Sample(kind, i, blank, np.zeros((4, 4), np.uint8), present, [], {}, []))
            raws.append({"probs": probs})
        chosen = choose_thresholds(kind, samples, raws)
        assert list(chosen) == ["nodule"] and cut - 0.05 < chosen["nodule"] <= cut + 0.01, (kind, chosen)


def test_the_runner_applies_the_threshold_of_the_kind() -> None:
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    nodule = LABEL_KEYS.index("nodule")
    probs = np.zeros(len(runner.labels), np.float32)
    probs[nodule] = 0.3
    runner.thresholds = {"cxr": {"nodule": 0.4}, "ct": {"nodule": 0.2}}
    assert "nodule" not in runner._present(probs, "cxr") and "nodule" in runner._present(probs, "ct")
    runner.thresholds = {}
    pooled = runner.labels[nodule].threshold  # the label's own, from training
    assert runner.threshold_of("cxr", "nodule") == runner.threshold_of("ct", "nodule") == pooled


def test_the_shipped_bundle_decides_presence_per_kind_as_calibrated() -> None:
    decoding = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    assert set(decoding["thresholds"]) == {"cxr", "ct", "pet"}
    for kind, levels in decoding["thresholds"].items():
        assert levels and all(runner.threshold_of(kind, key) == level for key, level in levels.items())


def test_fluid_masks_drop_the_aerated_lung_they_spill_onto() -> None:
    """CT effusion masks that run onto aerated lung past the fluid: keeping their fluid-dense voxels is chosen
    (every level between lung and fluid does it; the lowest is taken). Radiographs are not density images."""
    from models.decoding import choose_fluid

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    effusion = LABEL_KEYS.index("pleural_effusion")
    samples, raws = [], []
    for i in range(MASK_MIN_CASES + 1):
        image = np.full((4, 32, 32), 0.1, np.float32)  # lung
        image[:, 20 + i % 3 : 26] = 0.72  # fluid, thinner or thicker
        cls = np.zeros(image.shape, np.uint8)
        cls[:, 20 + i % 3 : 26, 4:28] = effusion + 1
        seg = np.zeros((4, len(LABEL_KEYS), 32, 32), np.float32)
        seg[:, effusion, 16:26, 4:28] = 0.9  # from 4-6 rows above the fluid
        present = np.zeros(len(LABEL_KEYS), np.float32)
        present[effusion] = 1.0
        samples.append(Sample("ct", i, image.astype(np.float16), cls, present, [], {}, []))
        raws.append({"seg": seg, "image": image})
    chosen, table = choose_fluid(runner, samples, raws)
    assert chosen == {"pleural_effusion": 0.3}
    assert table["pleural_effusion"]["0.3"] == 1.0 > 0.9 > table["pleural_effusion"]["mask"]
    cxr = [Sample("cxr", 0, np.zeros((32, 64), np.float16), np.zeros((32, 64), np.uint8), present, [], {}, [])]
    assert choose_fluid(runner, cxr, [{"seg": np.zeros((len(LABEL_KEYS), 32, 64), np.float32)}]) == ({}, {})


def test_water_bands_are_chosen_where_masks_stray_into_the_wall() -> None:
    """CT effusion masks a row short of the fluid's top and two rows into the chest wall (0.74, as dense as fluid
    above the lung level): a water-density band takes the fluid and drops the wall, and is chosen (all widths
    do; the narrowest is taken). Masks already on the fluid choose none: no band gains MASK_MARGIN."""
    from models.decoding import FLUID_BAND_HU, choose_fluid_bands, water_band

    assert water_band(30.0) == (round(970 / 1400, 4), round(1030 / 1400, 4))
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.fluid = {"ct": {"pleural_effusion": 0.4}}
    effusion = LABEL_KEYS.index("pleural_effusion")
    present = np.zeros(len(LABEL_KEYS), np.float32)
    present[effusion] = 1.0

    def cases(rows: slice) -> tuple[list[Sample], list[dict[str, np.ndarray]]]:
        samples, raws = [], []
        for i in range(MASK_MIN_CASES + 1):
            image = np.full((4, 32, 32), 0.1, np.float32)  # lung
            image[:, 20:26, 4:28] = 0.715 + 0.005 * (i % 2)  # fluid, 1-8 HU
            image[:, 26:] = 0.74  # chest wall
            cls = np.zeros(image.shape, np.uint8)
            cls[:, 20:26, 4:28] = effusion + 1
            seg = np.zeros((4, len(LABEL_KEYS), 32, 32), np.float32)
            seg[:, effusion, rows, 4:28] = 0.9
            samples.append(Sample("ct", i, image.astype(np.float16), cls, present, [], {}, []))
            raws.append({"seg": seg, "image": image})
        return samples, raws

    chosen, table = choose_fluid_bands(runner, *cases(slice(21, 28)))
    assert chosen == {"pleural_effusion": water_band(FLUID_BAND_HU[0])}
    assert table["pleural_effusion"][f"{FLUID_BAND_HU[0]:g}"] == 1.0 > table["pleural_effusion"]["mask"] + 0.1
    assert choose_fluid_bands(runner, *cases(slice(20, 26)))[0] == {}
    runner.fluid = {}  # no fluid level kept: a band is tried only at the levels given, against the masks as drawn
    assert choose_fluid_bands(runner, *cases(slice(21, 28))) == ({}, {})
    chosen, table = choose_fluid_bands(runner, *cases(slice(21, 28)), {"pleural_effusion": 0.4})
    assert chosen == {"pleural_effusion": water_band(FLUID_BAND_HU[0])}
    assert table["pleural_effusion"]["mask"] < 0.9


def test_the_shipped_bundle_keeps_ct_effusions_to_the_fluid_as_calibrated() -> None:
    """The runner keeps CT effusions to the fluid level the calibration chose and to the water band, each where its
    Dice beat the masks before it by ``MASK_MARGIN``; a band is tried at the best level even where that level alone
    gained too little (0.17.0: level 0.4, then water ± 30 HU, Dice 0.573 -> 0.738 on 300 validation CTs; 0.18.0:
    0.581 at 0.4 alone against the network's 0.571, so the band was compared with the network's masks)."""
    from models.decoding import MASK_MARGIN, best_option, water_band

    decoding = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))["decoding"]
    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    levels = decoding["calibration"]["fluid_dice"]["ct"]["pleural_effusion"]
    bands = decoding["calibration"]["fluid_band_dice"]["ct"]["pleural_effusion"]
    level, width = best_option(levels), best_option(bands)
    level_kept = levels[f"{level:g}"] > levels["mask"] + MASK_MARGIN
    band_kept = bands[f"{width:g}"] > bands["mask"] + MASK_MARGIN
    assert runner.fluid == decoding["fluid"] == ({"ct": {"pleural_effusion": level}} if level_kept or band_kept else {})
    assert runner.fluid_band == ({"ct": {"pleural_effusion": water_band(width)}} if band_kept else {})
    if not level_kept:  # the band was measured against the network's own masks
        assert bands["mask"] == levels["mask"]


def test_size_option_names_read_back() -> None:
    from models.decoding import SIZE_COUNTS, parse_size_option, size_option

    for count in SIZE_COUNTS:
        for level, reach in ((0.45, 0), (0.5, 2)):
            assert parse_size_option(size_option(level, reach, count)) == (level, reach, count)
    assert size_option(0.5, 0, "partial") == "0.5 r0 pv" and size_option(0.45, 1, "between") == "0.45 r1 sub"


def test_rival_boxes_are_demoted_where_that_raises_box_map() -> None:
    """Radiographs whose masses also light the consolidation channel (its box there scores 0.8 x 0.8 / 0.9 = 0.71
    against true consolidations' 0.52): demoting a box beaten on its place by another focal label's puts the true
    ones first, and the mildest factor that does it (0.7, not 0.85) is chosen; where the mass leaves that channel
    dark none is."""
    from models.decoding import RIVAL_FACTORS, choose_rival_factor

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.delineation, runner.rival_factor, runner.mask_thresholds, runner.support_power = {}, {}, {}, {}
    runner.box_outline = {}
    keys = runner.label_keys
    mass, consolidation = keys.index("mass"), keys.index("consolidation")
    runner.box_source = {"cxr": {key: "mask" for key in keys}}

    def cases(shadow: float) -> tuple[list[Sample], list[dict[str, np.ndarray]]]:
        samples, raws = [], []
        for i in range(2 * MASK_MIN_CASES):
            label = mass if i % 2 else consolidation
            seg = np.zeros((len(keys), 64, 64), np.float32)
            seg[label, 10:30, 10:30] = 0.9 if label == mass else 0.52
            if label == mass:
                seg[consolidation, 10:30, 10:30] = shadow
            sample, raw = _one_lesion(i, label, _square(), seg)
            samples.append(sample)
            raws.append(raw)
        return samples, raws

    chosen, table = choose_rival_factor(runner, *cases(0.8))
    assert (
        chosen == RIVAL_FACTORS[1]
        and table[f"{RIVAL_FACTORS[0]:g}"] == table["1"]
        and table[f"{chosen:g}"] == 1.0 > table["1"] + 0.2
    )
    assert runner.rival_factor == {}  # left as it was
    chosen, table = choose_rival_factor(runner, *cases(0.0))
    assert chosen is None and set(table.values()) == {1.0}


def test_box_support_is_weighed_in_where_peaks_lie_on_nothing() -> None:
    """Radiographs whose consolidation channel peaks twice: on the drawn consolidation (0.5), which its mask
    shows, and on a place the mask barely lights (0.7). Weighing each box by its own mask's support puts the true
    one first, and the mildest power that does it is chosen; where no peak lies on nothing, none is."""
    from models.decoding import SUPPORT_POWERS, choose_support_power

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.delineation, runner.mask_thresholds, runner.box_source = {}, {}, {}
    runner.rival_factor, runner.region_models, runner.support_power, runner.box_outline = {}, {}, {}, {}
    keys = runner.label_keys
    consolidation = keys.index("consolidation")

    def cases(stray: bool) -> tuple[list[Sample], list[dict[str, np.ndarray]]]:
        samples, raws = [], []
        for i in range(MASK_MIN_CASES):
            seg = np.zeros((len(keys), 64, 64), np.float32)
            seg[consolidation, 10:30, 10:30] = 0.6
            heat = np.zeros((len(keys), 16, 16), np.float32)
            heat[consolidation, 5, 5] = 0.5
            if stray:  # its channel faintly lit there: no other focal label's, so its label share is whole
                heat[consolidation, 12, 12] = 0.7
                seg[consolidation, 38:58, 38:58] = 0.1
            size = np.full((2, 16, 16), 20 / 64, np.float32)
            sample, raw = _one_lesion(i, consolidation, _square(), seg, heatmap=heat, size=size)
            samples.append(sample)
            raws.append(raw)
        return samples, raws

    chosen, table = choose_support_power(runner, *cases(stray=True))
    assert chosen == SUPPORT_POWERS[0] and table["none"] < 0.9 and table[f"{chosen:g}"] == 1.0
    assert runner.support_power == {}  # left as it was
    chosen, table = choose_support_power(runner, *cases(stray=False))
    assert chosen is None and set(table.values()) == {1.0}


def test_peak_boxes_take_their_masks_outline_where_the_peaks_size_misses() -> None:
    """Radiographs with a wide consolidation (36 x 20 pixels) its mask shows whole and its CenterNet peak finds at
    the right centre: sized 16 x 16 the peak's box misses it at IoU 0.5 (0.36) and the mask's outline finds it, so
    outlines are chosen; sized right they gain nothing and are not. A label whose boxes come from its mask is not
    tried."""
    from models.decoding import choose_box_outlines

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.delineation, runner.mask_thresholds, runner.box_source = {}, {}, {}
    runner.rival_factor, runner.region_models, runner.support_power, runner.box_outline = {}, {}, {}, {}
    keys = runner.label_keys
    consolidation = keys.index("consolidation")
    drawn = np.zeros((64, 64), bool)
    drawn[10:30, 10:46] = True

    def cases(width: float, height: float) -> tuple[list[Sample], list[dict[str, np.ndarray]]]:
        samples, raws = [], []
        for i in range(MASK_MIN_CASES):
            seg = np.zeros((len(keys), 64, 64), np.float32)
            seg[consolidation][drawn] = 0.6
            heat = np.zeros((len(keys), 16, 16), np.float32)
            heat[consolidation, 5, 7] = 0.5  # centre (28, 20): the drawn box's
            size = np.stack([np.full((16, 16), width / 64), np.full((16, 16), height / 64)]).astype(np.float32)
            sample, raw = _one_lesion(i, consolidation, drawn, seg, heatmap=heat, size=size)
            samples.append(sample)
            raws.append(raw)
        return samples, raws

    chosen, table = choose_box_outlines(runner, *cases(16, 16))
    assert chosen == ["consolidation"] and table["consolidation"] == {"peaks": 0.0, "outlined": 1.0}
    assert runner.box_outline == {}  # left as it was
    chosen, table = choose_box_outlines(runner, *cases(36, 20))
    assert chosen == [] and table["consolidation"] == {"peaks": 1.0, "outlined": 1.0}
    runner.box_source = {"cxr": {"consolidation": "mask"}}
    assert choose_box_outlines(runner, *cases(16, 16)) == ([], {})


def test_size_calibration_in_processes_chooses_as_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's size calibration runs its phantoms through the adapter in chunks in other processes: the
    errors, the table and the choices must be one pass's, across chunk borders."""
    import models.decoding as decoding

    monkeypatch.setattr(decoding, "SIZE_CHUNK", 2)
    one = decoding.choose_size_fractions(BUNDLE, 5, workers=1)
    chunked = decoding.choose_size_fractions(BUNDLE, 5, workers=2)
    assert chunked == one
    # not vacuous: the shipped bundle sizes lesions on these phantoms, by the model grid and by outlines
    rows = [row for per_kind in one[1].values() for row in per_kind.values()]
    assert rows and all("model" in row and len(row) > 1 for row in rows)


def test_the_region_model_is_kept_where_the_opacities_tell_the_labels_apart() -> None:
    """Radiographs whose masses (round, homogeneous) and consolidations (elongated, patchy) light both channels
    alike, so each lesion has a mass and a consolidation box of one score: weighed by what the opacity looks
    like, the true boxes rank first (mAP 1.0) and the model is kept; where every lesion is the same disc, whatever
    its label, the opacity tells nothing and no model is kept."""
    from models.decoding import REGION_POWERS, choose_region_model
    from tests.runtime.test_opacity import disc, patchy_band

    runner = BundleRunner(BUNDLE, device="cpu", verify=False)
    runner.delineation, runner.rival_factor, runner.mask_thresholds, runner.region_models = {}, {}, {}, {}
    keys = runner.label_keys
    mass, consolidation = keys.index("mass"), keys.index("consolidation")
    runner.box_source = {"cxr": {key: "mask" for key in keys}}

    def cases(telling: bool) -> tuple[list[Sample], list[dict[str, np.ndarray]]]:
        samples, raws = [], []
        for i in range(16):
            label = mass if i % 2 else consolidation
            image = disc() if label == mass or not telling else patchy_band(seed=i)
            drawn = image > 0.3 if label == consolidation and telling else image > 0.45
            seg = np.zeros((len(keys), 64, 64), np.float32)
            seg[[mass, consolidation]] = 0.9 * drawn
            sample, raw = _one_lesion(i, label, drawn, seg, image=image, diameter_mm=40.0)
            samples.append(sample)
            raws.append(raw)
        return samples, raws

    samples, raws = cases(telling=True)
    model, table = choose_region_model(runner, (samples, raws), samples, raws)
    assert model is not None and model.labels == ("mass", "consolidation") and model.power in REGION_POWERS
    assert table["regions"] == 32 and table["accuracy"] == 1.0
    assert table["map"][f"{model.power:g}"] == 1.0 > table["map"]["none"] + 0.2
    assert runner.region_models == {}  # left as it was
    samples, raws = cases(telling=False)
    model, table = choose_region_model(runner, (samples, raws), samples, raws)
    assert model is None and table["accuracy"] < 0.75
    samples, raws = cases(telling=True)
    model, table = choose_region_model(runner, (samples[:4], raws[:4]), samples, raws)
    assert model is None and table == {"regions": 8}  # 4 boxes on each label's lesions: too few to fit
