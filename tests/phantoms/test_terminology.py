"""The label set and locations are well-formed: codes, names in both languages, laterality."""

from __future__ import annotations

import re

from models.terminology import LABELS, LATERALITY_CODES, LOCATIONS, LUNG_LOBES, labels_for


def test_every_label_is_coded_and_named_in_both_languages() -> None:
    assert {"nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly"} <= set(LABELS)
    assert any("PT" in label.modalities for label in LABELS.values())
    for key, label in LABELS.items():
        assert label.key == key
        value, scheme, meaning = label.code
        assert scheme == "SCT" and re.fullmatch(r"[1-9][0-9]{5,17}", value), label.code
        assert meaning and label.name_en and label.name_zh
        assert re.search(r"[\u4e00-\u9fff]", label.name_zh)
        assert set(label.modalities) <= {"CR", "DX", "CT", "PT"} and label.modalities


def test_names_are_unique_so_text_can_be_parsed_back() -> None:
    en = [label.name_en for label in LABELS.values()] + [loc.name_en for loc in LOCATIONS.values()]
    zh = [label.name_zh for label in LABELS.values()] + [loc.name_zh for loc in LOCATIONS.values()]
    assert len(set(en)) == len(en) and len(set(zh)) == len(zh)


def test_location_laterality_matches_its_name() -> None:
    for key, loc in LOCATIONS.items():
        side = "right" if key.startswith("right") else "left" if key.startswith("left") else None
        assert loc.laterality == side, key
        if side:
            assert loc.name_en.startswith(side) and loc.name_zh.startswith("右" if side == "right" else "左")
    assert all(LOCATIONS[lobe].code[1] == "SCT" for lobe in LUNG_LOBES)
    assert LOCATIONS["right_upper_lobe"].code[0] == "45653009"
    assert set(LATERALITY_CODES) == {"right", "left", "bilateral"}


def test_labels_per_kind() -> None:
    assert "pneumothorax" in labels_for("cxr") and "cardiomegaly" in labels_for("cxr")
    assert "nodule" in labels_for("ct") and "pneumothorax" not in labels_for("ct")
    assert labels_for("pet") == ("hypermetabolic_lesion",)
