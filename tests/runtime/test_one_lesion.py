"""CT: one region reported as a nodule and as a mass is one lesion, named by its size (Fleischner's 30 mm line)."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import _one_lesion_by_size
from dicom_agent.inference.types import Finding, ImageRef, Mask
from tests.runtime.findings import finding

IMAGES = [ImageRef("1.2.3", "1.2.3.4", f"1.2.3.4.{k}", "1.2.840.10008.5.1.4.1.1.2") for k in range(4)]


def _region(rows: slice, cols: slice) -> np.ndarray:
    pixels = np.zeros((4, 32, 32), bool)
    pixels[1:3, rows, cols] = True
    return pixels


def _lesion(label: str, size_mm: float | None, pixels: np.ndarray | None) -> Finding:
    return finding(label, size_mm=size_mm, mask=Mask("1.2.3.4", IMAGES, pixels) if pixels is not None else None)


def test_a_region_both_labels_report_keeps_the_label_its_size_names() -> None:
    region = _region(slice(8, 16), slice(8, 16))
    for nodule_mm, mass_mm, kept in ((39.4, 39.4, "mass"), (33.4, 29.0, "mass"), (24.0, 26.0, "nodule")):
        findings = [_lesion("nodule", nodule_mm, region), _lesion("mass", mass_mm, region.copy())]
        assert [f.label for f in _one_lesion_by_size(findings)] == [kept]


def test_other_regions_and_unmasked_findings_are_left_alone() -> None:
    region = _region(slice(8, 16), slice(8, 16))
    apart = _region(slice(20, 28), slice(20, 28))
    half = region.copy()
    half[1:3, 8:16, 8:12] = False  # the mass's pixels half on the nodule's: not over half, not one region
    half[1:3, 8:16, 16:20] = True
    findings = [
        _lesion("nodule", 12.0, region),
        _lesion("nodule", 8.0, apart),
        _lesion("mass", 45.0, half),
        _lesion("mass", 50.0, None),  # a box-only lesion has no mask to compare
        _lesion("consolidation", 60.0, region.copy()),  # the bronchogram rule's business
    ]
    assert _one_lesion_by_size(findings) == findings
    shared = [_lesion("nodule", 12.0, region), _lesion("nodule", 8.0, apart), _lesion("mass", 45.0, region.copy())]
    assert [(f.label, f.size_mm) for f in _one_lesion_by_size(shared)] == [("nodule", 8.0), ("mass", 45.0)]
