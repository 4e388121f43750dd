"""The evaluation lexicon reads the phantoms' reports back exactly, and ignores negations and junk."""

from __future__ import annotations

import pytest

from models.synthetic import cases
from models.synthetic.lexicon import ParsedFinding, facts_of, parse_report

SMALL = {"cxr": {"size": 96}, "ct": {"size": 48, "depth": 24}, "pet": {"size": 48, "depth": 48}}


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_reports_parse_back_to_the_ground_truth_in_both_languages(kind: str) -> None:
    seen = 0
    for case in cases(kind, 40 if kind == "cxr" else 10, 700, **SMALL[kind]):
        expected = facts_of(case.lesions)
        assert parse_report(case.report["en"], "en") == expected, case.report["en"]
        assert parse_report(case.report["zh"], "zh") == expected, case.report["zh"]
        seen += len(expected)
    assert seen > 5


def test_negated_and_unrelated_sentences_state_no_finding() -> None:
    assert parse_report("No pleural effusion. There is no pneumothorax. The lungs are clear.", "en") == []
    assert parse_report("未见胸腔积液。无气胸。双肺清晰。", "zh") == []
    assert parse_report("lorem ipsum 42 mm ,,, 心", "en") == [] == parse_report("随便 写 点 什么 42毫米", "zh")
    with pytest.raises(ValueError):
        parse_report("text", "fr")


def test_free_wording_is_read_with_the_same_vocabulary() -> None:
    en = parse_report("Small right pleural effusion. Spiculated nodule, left lower lobe, 12 mm. No pneumothorax.", "en")
    assert en == sorted(
        [
            ParsedFinding("pleural_effusion", "right_pleura", "right", None),
            ParsedFinding("nodule", "left_lower_lobe", "left", 12),
        ],
        key=repr,
    )
    zh = parse_report("右侧少量胸腔积液；左肺下叶结节约12毫米。未见气胸。", "zh")
    assert [f.key() for f in zh] == [f.key() for f in en]
    pet = parse_report("肝脏高代谢病灶，SUVmax约8.4，大小30毫米。", "zh")
    assert pet == [ParsedFinding("hypermetabolic_lesion", "liver", None, 30, None, 8.4)]
