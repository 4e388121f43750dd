"""Phantom generation: determinism, masks vs boxes, sizes vs spacing, laterality vs image side, HU/SUV ranges."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from models.synthetic import Case, cases, make_case
from models.synthetic import ct as ct_mod
from models.synthetic import cxr as cxr_mod
from models.synthetic import pet as pet_mod
from models.terminology import LABELS, LOCATIONS, labels_for

# Small sizes keep the suite fast; the anatomy is defined in millimetres, so it is the same patient.
SMALL = {"cxr": {"size": 128}, "ct": {"size": 96, "depth": 40}, "pet": {"size": 96, "depth": 96}}
N_CASES = {"cxr": 40, "ct": 8, "pet": 8}


@cache
def batch(kind: str, out_of_range: bool = False) -> tuple[Case, ...]:
    return tuple(cases(kind, N_CASES[kind], 1000, out_of_range=out_of_range, **SMALL[kind]))


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_same_seed_same_case_and_other_seed_differs(kind: str) -> None:
    a = make_case(kind, 5, **SMALL[kind])
    b = make_case(kind, 5, **SMALL[kind])
    assert np.array_equal(a.image, b.image) and a.image.dtype == b.image.dtype
    assert np.array_equal(a.mask, b.mask)
    assert a.report == b.report and a.qa == b.qa and a.lesions == b.lesions and a.meta == b.meta
    c = make_case(kind, 6, **SMALL[kind])
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_shapes_dtypes_and_spacing(kind: str) -> None:
    case = batch(kind)[0]
    if kind == "cxr":
        assert case.image.shape == (128, 128) and case.image.dtype == np.float32
        assert case.image.min() >= 0.0 and case.image.max() <= 1.0
        assert case.spacing == pytest.approx((cxr_mod.FOV_MM / 128, cxr_mod.FOV_MM / 128))
    else:
        assert case.image.ndim == 3 and case.image.shape[1:] == (SMALL[kind]["size"],) * 2
        assert case.image.shape[0] == SMALL[kind]["depth"] and len(case.spacing) == 3
        assert case.image.dtype == (np.int16 if kind == "ct" else np.float32)
    assert case.mask.shape == case.image.shape and case.mask.dtype == np.uint8


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_every_kind_produces_findings_and_normals(kind: str) -> None:
    seen = set().union(*(case.labels for case in batch(kind)))
    normals = sum(1 for case in batch(kind) if not case.labels)
    assert normals >= 1
    if kind == "cxr":
        assert seen == set(labels_for("cxr"))  # 40 radiographs cover all six findings
    else:
        assert seen and seen <= set(labels_for(kind))


def _check_lesion_geometry(case: Case) -> None:
    assert case.labels == {lesion.label for lesion in case.lesions}
    assert int(case.mask.max()) <= len(case.lesions)
    for i, lesion in enumerate(case.lesions):
        region = case.mask == i + 1
        label = LABELS[lesion.label]
        if lesion.label == "cardiomegaly":
            assert not region.any()
            continue
        assert region.any(), lesion
        if case.image.ndim == 2:
            assert (lesion.box is not None) == label.focal
            if lesion.box:
                x0, y0, x1, y1 = lesion.box
                rows, cols = np.nonzero(region)
                # Tight box in pixel-corner coordinates: it encloses every mask pixel and touches the extremes.
                assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        else:
            assert lesion.slices == [int(z) for z in np.flatnonzero(region.any(axis=(1, 2)))]
            assert bool(lesion.slice_boxes) == label.focal
            for z, (x0, y0, x1, y1) in lesion.slice_boxes.items():
                rows, cols = np.nonzero(region[z])
                assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
                assert not region[z, : int(y0)].any() and not region[z, :, int(x1) :].any()


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_boxes_enclose_masks_and_labels_match(kind: str) -> None:
    for case in batch(kind) + batch(kind, True):
        _check_lesion_geometry(case)


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_round_lesion_size_matches_its_mask_and_spacing(kind: str) -> None:
    checked = 0
    for case in batch(kind):
        for i, lesion in enumerate(case.lesions):
            if lesion.label not in ("nodule", "hypermetabolic_lesion") or lesion.size_mm is None:
                continue
            n = int((case.mask == i + 1).sum())
            r = lesion.size_mm / 2
            if case.image.ndim == 2:
                expected = math.pi * r * r / (case.spacing[0] * case.spacing[1])
            else:
                expected = 4 / 3 * math.pi * r**3 / float(np.prod(case.spacing))
            if expected < 40:  # too few pixels for a fair comparison
                continue
            assert n == pytest.approx(expected, rel=0.35), (lesion, n, expected)
            checked += 1
    assert checked >= (1 if kind == "pet" else 2)


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_laterality_follows_the_image_side(kind: str) -> None:
    """Image left (low column) is the patient's right: PA radiograph and axial slices alike."""
    checked = 0
    for case in batch(kind):
        width = case.image.shape[-1]
        for i, lesion in enumerate(case.lesions):
            if lesion.location:
                assert LOCATIONS[lesion.location].laterality in (lesion.laterality, None)
            if lesion.laterality is None:
                continue
            cols = np.nonzero(case.mask == i + 1)[-1]
            side = "right" if cols.mean() + 0.5 < width / 2 else "left"
            assert side == lesion.laterality, lesion
            checked += 1
    assert checked >= 3


def test_cardiomegaly_means_cardiothoracic_ratio_above_half() -> None:
    for case in batch("cxr"):
        assert ("cardiomegaly" in case.labels) == (case.meta["ctr"] > 0.5)
        if "cardiomegaly" in case.labels:
            lesion = next(les for les in case.lesions if les.label == "cardiomegaly")
            assert lesion.attrs["ctr"] == case.meta["ctr"]


def test_radiograph_anatomy_lungs_darker_than_mediastinum_and_abdomen() -> None:
    case = make_case("cxr", 0, size=256)  # a normal study
    img = case.image
    h, w = img.shape
    lung_r = img[int(0.35 * h) : int(0.5 * h), int(0.22 * w) : int(0.3 * w)].mean()
    lung_l = img[int(0.35 * h) : int(0.5 * h), int(0.7 * w) : int(0.78 * w)].mean()
    spine = img[int(0.2 * h) : int(0.3 * h), int(0.47 * w) : int(0.53 * w)].mean()
    abdomen = img[int(0.9 * h) :, int(0.4 * w) : int(0.6 * w)].mean()
    outside = img[: int(0.05 * h), : int(0.05 * w)].mean()
    assert outside < lung_r < spine and lung_l < abdomen
    assert abs(lung_r - lung_l) < 0.1


def _near(values: np.ndarray, target: float, tol: float) -> np.ndarray:
    return values[np.abs(values - target) < tol]


def test_ct_hounsfield_calibration() -> None:
    case = make_case("ct", 1, size=128)
    hu = case.image.astype(np.float32)
    assert hu.dtype == np.float32 and case.image.dtype == np.int16
    corners = hu[:, :4, :4]
    assert np.median(corners) == pytest.approx(-1000, abs=30)
    flat = hu.ravel()
    lung = _near(flat, -850, 80)
    fat = _near(flat, -100, 30)
    soft = _near(flat, 40, 30)
    bone = flat[flat > 500]
    assert lung.size > 0.05 * flat.size and np.median(lung) == pytest.approx(-850, abs=15)
    assert fat.size > 0.01 * flat.size and np.median(fat) == pytest.approx(-100, abs=10)
    assert soft.size > 0.05 * flat.size and np.median(soft) == pytest.approx(40, abs=12)
    assert bone.size > 100 and np.median(bone) == pytest.approx(700, abs=40)


def _inner(mask: np.ndarray) -> np.ndarray:
    """``mask`` less every voxel with a face neighbour outside it."""
    out = mask.copy()
    for axis in range(mask.ndim):
        for step in (1, -1):
            out &= np.roll(mask, step, axis=axis)
    return out


def test_ct_lesions_have_their_stated_density() -> None:
    """Inside the outline (a round lesion's edge voxels hold part lung: partial volume) and over a fluid."""
    for case in batch("ct"):
        for i, lesion in enumerate(case.lesions):
            if lesion.label in ("nodule", "mass", "pleural_effusion"):
                region = case.mask == i + 1
                values = case.image[_inner(region) if lesion.label != "pleural_effusion" else region]
                if values.size < 20:  # noise (sd 12 HU) dominates a handful of voxels
                    continue
                assert np.median(values.astype(np.float32)) == pytest.approx(lesion.attrs["hu"], abs=8)


def test_ct_round_lesions_carry_partial_volume_at_their_edge() -> None:
    """A sphere's voxels hold the share of it their sub-samples say: the shares add up to its volume (an edge that
    falls anywhere within a voxel is kept); a 23.9 mm nodule on 2.7 x 2.7 x 5 mm voxels has a solid core, a 6.4 mm
    one is all edge."""
    vol = ct_mod._Volume(128, 64, np.random.default_rng(0), False)
    voxel = vol.sp * vol.sp * vol.dz

    def sphere(r: float) -> np.ndarray:
        return ct_mod._sphere_cover(vol, (160.3, -20.6, 60.2), lambda dz, dy, dx, d: np.full_like(d, r), r + 1.0)

    for diameter in (6.4, 11.3, 23.9):
        r = diameter / 2
        cover = sphere(r)
        assert float(cover.sum()) * voxel == pytest.approx(4 / 3 * math.pi * r**3, rel=0.03), diameter
        edge = (cover > 0) & (cover < 1)
        assert edge.any() and cover.max() <= 1.0
    assert (cover == 1).sum() > 50  # the 23.9 mm one
    small = sphere(3.2)
    assert (small > 0).sum() >= 4 and (small == 1).sum() == 0


def test_ct_consolidation_carries_air_bronchograms_inside_its_outline() -> None:
    """Consolidated lung with open airways: air inside the consolidation's mask (never on its border, so the
    outline stays solid); a mass is solid throughout."""
    seen = set()
    for seed in range(1000, 1060):
        case = make_case("ct", seed, **SMALL["ct"])
        for i, lesion in enumerate(case.lesions):
            if lesion.label not in ("consolidation", "mass") or lesion.label in seen:
                continue
            region = case.mask == i + 1
            air = region & (case.image < -700)
            if lesion.label == "mass":
                assert not air.any()
            else:
                assert air.sum() >= 5
                border = region & ~ct_mod._eroded(region)
                assert not (air & border).any()
            seen.add(lesion.label)
        if seen == {"consolidation", "mass"}:
            return
    pytest.fail(f"no CT consolidation and mass among the seeds, saw {seen}")


def test_pet_suv_ranges() -> None:
    seen_lesion = False
    for case in batch("pet"):
        suv = case.image
        assert suv.min() >= 0.0
        assert float(np.median(suv[:, :3, :3])) < 0.05  # outside the body
        body = suv[suv > 0.2]
        assert 0.4 < float(np.median(body)) < 1.5  # soft-tissue background
        assert suv.max() >= 12.0  # bladder (and brain) are hot
        assert float(suv[-8:].max()) > 5.0  # brain in the top slices
        for i, lesion in enumerate(case.lesions):
            peak = float(suv[case.mask == i + 1].max())
            assert lesion.attrs["suv_max"] == pytest.approx(peak, abs=0.051)
            assert pet_mod.LESION_SUV[0] - 0.8 <= peak <= pet_mod.LESION_SUV[1] + 1.5
            seen_lesion = True
    assert seen_lesion


def _in(value: float, lo_hi: tuple[float, float]) -> bool:
    return lo_hi[0] <= value <= lo_hi[1]


def test_out_of_range_split_leaves_the_training_ranges() -> None:
    ranges = {
        ("cxr", "nodule"): cxr_mod.NODULE_MM,
        ("cxr", "mass"): cxr_mod.MASS_MM,
        ("ct", "nodule"): ct_mod.NODULE_MM,
        ("ct", "mass"): ct_mod.MASS_MM,
        ("pet", "hypermetabolic_lesion"): pet_mod.LESION_MM,
    }
    checked = 0
    for kind in ("cxr", "ct", "pet"):
        for case in batch(kind, True):
            assert case.meta["out_of_range"] is True
            scale = case.meta["body_scale"]
            body = {"cxr": cxr_mod.BODY_SCALE, "ct": ct_mod.BODY_SCALE, "pet": pet_mod.BODY_SCALE}[kind]
            assert not _in(scale, body)
            for lesion in case.lesions:
                key = (kind, lesion.label)
                if key in ranges and lesion.size_mm is not None:
                    assert not _in(lesion.size_mm, ranges[key]), (key, lesion.size_mm)
                    checked += 1
                if kind == "cxr" and lesion.label == "cardiomegaly":
                    assert lesion.attrs["ctr"] > cxr_mod.CTR_ENLARGED[1]
            if kind == "cxr":
                assert abs(case.meta["rotation_deg"]) >= cxr_mod.ROTATION_DEG_OOR[0]
        for case in batch(kind):
            if kind == "cxr":
                assert abs(case.meta["rotation_deg"]) <= cxr_mod.ROTATION_DEG
            assert _in(
                case.meta["body_scale"],
                {"cxr": cxr_mod.BODY_SCALE, "ct": ct_mod.BODY_SCALE, "pet": pet_mod.BODY_SCALE}[kind],
            )
    assert checked >= 5


def test_out_of_range_ct_nodules_sit_at_the_apex_or_base() -> None:
    def heights(out_of_range: bool) -> list[float]:
        found = []
        for case in batch("ct", out_of_range):
            depth = case.image.shape[0]
            for i, lesion in enumerate(case.lesions):
                if lesion.label == "nodule":
                    found.append((float(np.nonzero(case.mask == i + 1)[0].mean()) + 0.5) / depth)
        return found

    half_slice = 0.5 / SMALL["ct"]["depth"]
    inside, outside = heights(False), heights(True)
    assert inside and outside
    assert all(ct_mod.LESION_T[0] - half_slice <= t <= ct_mod.LESION_T[1] + half_slice for t in inside)
    assert all(not ct_mod.LESION_T[0] + half_slice < t < ct_mod.LESION_T[1] - half_slice for t in outside)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phantom kind"):
        make_case("mr", 1)


def test_cases_uses_consecutive_seeds_so_any_case_is_reproducible_alone() -> None:
    listed = list(cases("cxr", 3, 40, size=64))
    assert [c.seed for c in listed] == [40, 41, 42]
    alone = make_case("cxr", 41, size=64)
    assert np.array_equal(listed[1].image, alone.image) and listed[1].report == alone.report
