"""Overlapping focal findings: one label per region. A volume's mask components are claimed label by label in
order of probability; a radiograph's boxes one by one in order of score, across labels."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import _box_region, _claim_by_probability, _claim_by_score, _itself
from dicom_agent.inference.onnx_runner import DetectedBox


def _blob(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((8, 32, 32), bool)
    mask[z0:z1, y0:y1, x0:x1] = True
    return mask


def test_a_region_claimed_by_a_more_probable_label_is_not_reported_again() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    elsewhere = _blob(2, 6, 20, 28, 20, 28)
    mostly_inside = _blob(2, 6, 5, 13, 4, 12)  # 7 of its 8 rows inside ``region``
    kept = _claim_by_probability(
        {"mass": [region], "nodule": [elsewhere, mostly_inside]}, {"mass": 0.9, "nodule": 0.6}, _itself
    )
    assert [c.sum() for c in kept["mass"]] == [region.sum()]
    assert len(kept["nodule"]) == 1 and (kept["nodule"][0] == elsewhere).all()


def test_the_more_probable_label_wins_and_a_label_keeps_its_largest_component() -> None:
    region = _blob(2, 6, 4, 12, 4, 12)
    own = _blob(2, 4, 20, 26, 20, 26)
    kept = _claim_by_probability(
        {"mass": [region, own], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8}, _itself
    )
    assert len(kept["nodule"]) == 1 and len(kept["mass"]) == 1 and (kept["mass"][0] == own).all()
    # every component claimed: the label stays present with its largest one
    kept = _claim_by_probability({"mass": [region], "nodule": [region.copy()]}, {"mass": 0.4, "nodule": 0.8}, _itself)
    assert (kept["mass"][0] == region).all()
    half = _blob(2, 6, 8, 16, 4, 12)  # exactly half inside: not "mostly", kept
    kept = _claim_by_probability({"mass": [region], "nodule": [half]}, {"mass": 0.9, "nodule": 0.6}, _itself)
    assert (kept["nodule"][0] == half).all()
    assert _claim_by_probability({}, {}, _itself) == {}


def test_radiograph_boxes_claim_their_regions_by_score_across_labels() -> None:
    consolidation = DetectedBox("consolidation", 0.5, 10, 10, 40, 40)
    mass_on_it = DetectedBox("mass", 0.3, 12, 14, 38, 36)  # the same opacity, weaker in the mass channel
    own_mass = DetectedBox("mass", 0.2, 60, 60, 80, 80)
    nodule_there = DetectedBox("nodule", 0.4, 20, 20, 26, 26)  # wholly inside the consolidation
    nodule_elsewhere = DetectedBox("nodule", 0.1, 90, 90, 96, 96)
    boxes = {
        "consolidation": [consolidation],
        "mass": [mass_on_it, own_mass],
        "nodule": [nodule_there, nodule_elsewhere],
    }
    kept = _claim_by_score(boxes, lambda b: _box_region(b, (128, 128)))
    assert kept == {"consolidation": [consolidation], "mass": [own_mass], "nodule": [nodule_elsewhere]}
    # a stronger box on the same place takes it, whatever the labels' probabilities
    stronger = DetectedBox("mass", 0.9, 12, 14, 38, 36)
    kept = _claim_by_score({"consolidation": [consolidation], "mass": [stronger]}, lambda b: _box_region(b, (128, 128)))
    assert kept == {"consolidation": [], "mass": [stronger]}
    assert _claim_by_score({}, lambda b: _box_region(b, (128, 128))) == {}


def test_a_radiograph_label_whose_boxes_all_lie_on_another_labels_region_is_not_reported() -> None:
    """The adapter's radiograph path: a mass the classifier calls present but whose only box lies on the
    consolidation (scored lower there) is left out of the findings, and so is a label with no box at all."""
    from pathlib import Path
    from types import SimpleNamespace

    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.inference.grid import Letterbox
    from dicom_agent.inference.manifest import load_bundle
    from dicom_agent.inference.types import ImageRef

    bundle = Path(__file__).resolve().parents[2] / "models" / "bundled"
    adapter = BundleAdapter.__new__(BundleAdapter)  # the map-back stage only
    adapter.vocabulary = load_bundle(bundle, verify=False).vocabulary
    adapter.lung_field = (0.12, 0.77)
    adapter.runner = SimpleNamespace(box_source={}, size_fraction={}, size_reach={}, size_subvoxel={}, size_solid={})
    ref = ImageRef("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1")
    radiograph = SimpleNamespace(grid=Letterbox.fit(128, 128, 128), spacing_mm=(1.0, 1.0), ref=ref, source_values=None)
    result = SimpleNamespace(
        present=["mass", "consolidation", "nodule"],
        probabilities={"mass": 0.95, "consolidation": 0.8, "nodule": 0.7},
        boxes=[DetectedBox("consolidation", 0.6, 20, 30, 50, 60), DetectedBox("mass", 0.4, 22, 32, 48, 58)],
        masks={},
        cores={},
        mask_probs=np.zeros((6, 128, 128), np.float32),
    )
    findings = adapter._findings_2d(radiograph, result)  # type: ignore[arg-type]
    assert [f.label for f in findings] == ["consolidation"]


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
