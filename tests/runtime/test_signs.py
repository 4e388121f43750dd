"""The air bronchogram sign on source HU, and the CT rule that gives a region both a solid lesion's label (mass,
nodule) and the consolidation label kept to one of them by it."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dicom_agent.inference.bundle_adapter import _settle_by_bronchograms
from dicom_agent.inference.signs import BRONCHOGRAM_SHARE, bronchogram_share, has_air_bronchograms
from dicom_agent.inference.volume import Volume
from models.synthetic import make_case

SPACING = (2.734375, 2.734375)  # the CT phantoms' pixels (column, row), mm
LUNG, TISSUE, AIR = -850.0, 40.0, -950.0


def _lung_with_block(air_tube: bool = False, notch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 40 HU block of 16 x 16 pixels on 4 slices in aerated lung; optionally an air tube through its middle
    that stops short of its outline, or lung biting into its edge."""
    hu = np.full((8, 48, 48), LUNG, dtype=np.float32)
    region = np.zeros(hu.shape, dtype=bool)
    region[2:6, 16:32, 16:32] = True
    hu[region] = TISSUE
    if air_tube:
        hu[2:6, 23:25, 19:29] = AIR  # 2 pixels wide, 10 long, 3 pixels from the block's edge at each end
    if notch:
        hu[2:6, 22:26, 16:20] = LUNG  # lung entering from the block's left edge: open, not enclosed
    return hu, region


def test_enclosed_air_is_the_sign_and_lung_at_the_edge_is_not() -> None:
    hu, region = _lung_with_block(air_tube=True)
    assert bronchogram_share(hu, region, SPACING) >= BRONCHOGRAM_SHARE
    assert has_air_bronchograms(hu, region, SPACING)
    for plain in (_lung_with_block(), _lung_with_block(notch=True)):
        assert bronchogram_share(*plain, SPACING) == 0.0
        assert not has_air_bronchograms(*plain, SPACING)


def test_the_region_may_be_coarser_than_the_lesion() -> None:
    """A model-grid mask mapped back falls short of the lesion's rim or runs past it, by up to ``GROW_MM``: the
    soft tissue it touches counts."""
    hu, region = _lung_with_block(air_tube=True)
    short = np.zeros_like(region)
    short[3:5, 19:29, 19:29] = True  # 3 pixels (8 mm) short of the block's rim, two of its four slices
    wide = np.zeros_like(region)
    wide[1:7, 13:35, 13:35] = True  # 3 pixels past it
    assert has_air_bronchograms(hu, short, SPACING) and has_air_bronchograms(hu, wide, SPACING)
    assert bronchogram_share(hu, np.zeros_like(region), SPACING) == 0.0
    assert bronchogram_share(hu, region[:, :10], SPACING) == 0.0  # grids that disagree measure nothing


def test_drawn_consolidations_show_the_sign_and_drawn_masses_do_not() -> None:
    """On the phantoms' own regions (the truth masks on the source grid of the written series)."""
    shares: dict[str, list[float]] = {"mass": [], "consolidation": []}
    seed = 700000
    while min(len(v) for v in shares.values()) < 3 and seed < 700060:
        case = make_case("ct", seed)
        for i, lesion in enumerate(case.lesions):
            if lesion.label in shares:
                region = case.mask == i + 1
                shares[lesion.label].append(bronchogram_share(case.image.astype(np.float32), region, case.spacing[1:]))
        seed += 1
    assert min(len(v) for v in shares.values()) >= 3, shares
    assert min(shares["consolidation"]) >= BRONCHOGRAM_SHARE, shares
    assert max(shares["mass"]) < BRONCHOGRAM_SHARE, shares


def _volume(hu: np.ndarray) -> Volume:
    """A volume whose model grid is its source grid (mask_to_source is then the identity)."""
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((*SPACING, 5.0))
    return Volume(values=hu, unit="HU", slices=[], source=image, model=image)


def test_a_shared_region_goes_to_the_label_its_sign_names() -> None:
    """Mass or nodule against consolidation: enclosed air names the consolidation, its absence the solid lesion;
    the loser keeps its regions elsewhere."""
    for solid in ("mass", "nodule"):
        for air, winner, loser in ((True, "consolidation", solid), (False, solid, "consolidation")):
            hu, region = _lung_with_block(air_tube=air)
            elsewhere = np.zeros_like(region)
            elsewhere[2:4, 36:44, 36:44] = True
            components = {winner: [region.copy()], loser: [region.copy(), elsewhere]}
            _settle_by_bronchograms(components, _volume(hu))
            assert [c.sum() for c in components[winner]] == [region.sum()], (solid, air)
            assert len(components[loser]) == 1 and (components[loser][0] == elsewhere).all()  # keeps its own region


def test_a_region_three_labels_kept_goes_to_one() -> None:
    """Mass, nodule and consolidation on one region: with the sign the consolidation takes it from both; without
    it the mass takes it from the consolidation and the nodule keeps its own (mass against nodule is settled by
    size, ``_one_lesion_by_size``)."""
    for air, kept in ((True, {"consolidation"}), (False, {"mass", "nodule"})):
        hu, region = _lung_with_block(air_tube=air)
        components = {key: [region.copy()] for key in ("mass", "nodule", "consolidation")}
        _settle_by_bronchograms(components, _volume(hu))
        assert {key for key, parts in components.items() if parts} == kept, air


def test_regions_that_do_not_overlap_are_left_alone() -> None:
    hu, region = _lung_with_block()
    apart = np.zeros_like(region)
    apart[2:6, 36:44, 36:44] = True
    components = {"mass": [region.copy()], "consolidation": [apart.copy()]}
    _settle_by_bronchograms(components, _volume(hu))
    assert len(components["mass"]) == 1 and len(components["consolidation"]) == 1
    only_mass = {"mass": [region.copy()]}
    _settle_by_bronchograms(only_mass, _volume(hu))
    assert len(only_mass["mass"]) == 1
