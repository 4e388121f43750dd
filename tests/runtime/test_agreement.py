"""The decoder's narrative against the heads: flags from the parsed text, and the SR comment built from them."""

from __future__ import annotations

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.agreement import answer_disagreement, disagreement_comment, flag_disagreements
from dicom_agent.inference.render import render
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary, project_vocabulary

VOCAB: Vocabulary = project_vocabulary()


def _finding(label: str, location: str | None = None, present: bool = True, size_mm: float | None = None) -> Finding:
    spec = VOCAB.labels[label]
    loc = VOCAB.location(location)
    return Finding(
        size_mm=size_mm,
        label=label,
        code=Code(*spec.code),
        name_en=spec.name_en,
        name_zh=spec.name_zh,
        probability=0.9 if present else 0.1,
        present=present,
        location=location,
        location_en=loc.name_en if loc else None,
        location_zh=loc.name_zh if loc else None,
        laterality=loc.laterality if loc else None,
    )


def test_a_narrative_that_states_the_findings_raises_no_flag_and_no_comment() -> None:
    findings = [_finding("nodule", "right_upper_lobe"), _finding("mass", present=False)]
    texts = render(findings, ("en", "zh"), VOCAB)
    study_flags = [flag for lang in ("en", "zh") for flag in flag_disagreements(findings, texts[lang], lang, VOCAB)]
    assert study_flags == [] and findings[0].flags == []
    assert disagreement_comment(findings, study_flags, "en") is None
    assert disagreement_comment(findings, study_flags, "zh") is None


def test_each_kind_of_disagreement_is_flagged_and_stated_in_its_own_language() -> None:
    nodule, effusion = _finding("nodule", "right_upper_lobe"), _finding("pleural_effusion", "left_pleura")
    consolidation = _finding("consolidation", "left_lower_lobe")
    findings = [nodule, effusion, consolidation, _finding("mass", present=False)]
    en = "Nodule in the left upper lobe. No pleural effusion. Mass in the right lower lobe."
    zh = "右肺上叶见结节。左侧胸腔积液。左肺下叶见实变。"
    flags = flag_disagreements(findings, en, "en", VOCAB) + flag_disagreements(findings, zh, "zh", VOCAB)
    assert flags == ["decoder_disagrees:en", "decoder_adds:en:mass"]
    assert nodule.flags == ["decoder_location_differs:en"]
    assert effusion.flags == ["decoder_denies:en"] and consolidation.flags == ["decoder_omits:en"]
    assert disagreement_comment(findings, flags, "en") == (
        "AI narrative check (the coded findings are the result of record): the model's free text places nodule "
        "(right upper lobe) elsewhere; denies pleural effusion (left pleura); omits consolidation (left lower lobe); "
        "also states mass, which the detector did not find."
    )
    assert disagreement_comment(findings, flags, "zh") is None  # the Chinese narrative agreed
    assert disagreement_comment(findings, flags, "fr") is None


def test_an_added_label_outside_the_study_findings_is_named_by_its_key() -> None:
    comment = disagreement_comment([_finding("nodule")], ["decoder_adds:zh:pleural_effusion"], "zh")
    assert comment == "AI 叙述核对（以编码所见为准）：模型自由文本另述pleural effusion（检测未发现）。"


def test_each_statement_is_made_once_and_findings_are_told_apart_by_location() -> None:
    """Two lesions of one label flagged alike read as two statements only when their locations differ."""
    upper, lower = _finding("nodule", "right_upper_lobe"), _finding("nodule", "right_lower_lobe")
    twin = _finding("nodule", "right_upper_lobe")
    for f in (upper, lower, twin):
        f.flags.append("decoder_omits:zh")
    comment = disagreement_comment([upper, lower, twin], [], "zh")
    assert comment == "AI 叙述核对（以编码所见为准）：模型自由文本未提及结节（右肺上叶）；未提及结节（右肺下叶）。"


def test_a_vqa_answer_that_contradicts_the_findings_of_record_gets_a_note_in_its_language() -> None:
    findings = [
        _finding("nodule", "right_lower_lobe", size_mm=12.0),
        _finding("nodule", "left_upper_lobe", size_mm=21.0),
        _finding("pneumothorax", present=False),
    ]
    where_en, where_zh = "Where is the largest nodule?", "最大的结节位于哪里？"
    assert answer_disagreement(where_en, "left upper lobe", "en", findings, VOCAB) is None
    assert answer_disagreement(where_zh, "左肺上叶。", "zh", findings, VOCAB) is None
    note = answer_disagreement(where_en, " right lower lobe", "en", findings, VOCAB)
    assert note == "Note: the coded findings place the largest nodule in the left upper lobe."
    note = answer_disagreement(where_zh, "右肺下叶", "zh", findings, VOCAB)
    assert note == "注意：编码所见中最大的结节位于左肺上叶。"
    # presence both ways; an absent finding counts as not found
    assert answer_disagreement("Is there a nodule?", "yes", "en", findings, VOCAB) is None
    assert answer_disagreement("Is there a nodule?", "no", "en", findings, VOCAB) == (
        "Note: the coded findings include nodule."
    )
    assert answer_disagreement("是否有气胸？", "是", "zh", findings, VOCAB) == "注意：编码所见不包含气胸。"
    # not judged: answers that are neither yes/no nor a place, and questions about no single finding
    assert answer_disagreement("How large is the largest nodule?", "large", "en", findings, VOCAB) is None
    assert answer_disagreement("Is the examination normal?", "yes", "en", findings, VOCAB) is None
    assert answer_disagreement("Where is the largest mass?", "left upper lobe", "en", findings, VOCAB) is None


def test_count_and_size_answers_are_checked_against_the_coded_findings() -> None:
    """Bundle 0.12.0's decoder answers "2" for a findings text naming three or four lesions (9 of 9 in English on
    40 held-out PETs): a number of findings or a size that is not the coded findings' gets a note."""
    findings = [
        _finding("nodule", "right_lower_lobe", size_mm=12.0),
        _finding("nodule", "left_upper_lobe", size_mm=21.4),
        _finding("mass", present=False),
        _finding("hypermetabolic_lesion", "liver"),
    ]
    assert answer_disagreement("How many nodules are there?", "2", "en", findings, VOCAB) is None
    assert answer_disagreement("How many nodules are seen?", "1.", "en", findings, VOCAB) == (
        "Note: the coded findings list 2 nodules."
    )
    assert answer_disagreement("共有多少个结节？", "4", "zh", findings, VOCAB) == "注意：编码所见共有2个结节。"
    assert answer_disagreement("How many masses are there?", "0", "en", findings, VOCAB) is None
    assert answer_disagreement("How many masses are there?", "1", "en", findings, VOCAB) == (
        "Note: the coded findings list 0 masses."
    )
    assert answer_disagreement("How many hypermetabolic lesions are there?", "2", "en", findings, VOCAB) == (
        "Note: the coded findings list 1 hypermetabolic lesion."
    )
    assert answer_disagreement("有几个结节？", "两个", "zh", findings, VOCAB) is None  # not a number: not judged
    # sizes: the largest, as the findings text states it (whole mm), in either unit
    for said in ("21 mm", "2.1 cm", " 21 mm."):
        assert answer_disagreement("How large is the largest nodule?", said, "en", findings, VOCAB) is None
    assert answer_disagreement("What is the size of the largest nodule?", "12 mm", "en", findings, VOCAB) == (
        "Note: the coded findings measure the largest nodule 21 mm."
    )
    assert answer_disagreement("最大的结节大小是多少？", "30毫米", "zh", findings, VOCAB) == (
        "注意：编码所见中最大的结节为21毫米。"
    )
    # no size stated (the liver lesion has none): not judged
    question = "How large is the largest hypermetabolic lesion?"
    assert answer_disagreement(question, "30 mm", "en", findings, VOCAB) is None


def test_any_answer_about_an_unplaced_label_says_the_classifier_scored_it_present() -> None:
    """A label present by probability with no region of its own (a CT mass whose region went to a consolidation by
    its air bronchograms, a radiograph box another label claimed) is not a coded finding: "no" agrees with the SR,
    not with the classifier, and the user is told."""
    findings = [_finding("consolidation", "right_middle_lobe", size_mm=55.0), _finding("nodule", present=False)]
    unplaced = {"mass": 0.71}
    expected = (
        "Note: the classifier scored mass present (71 %), but no region of the image was given to it, so the coded "
        "findings do not include it."
    )
    for said in ("no", "yes", "right middle lobe"):
        assert answer_disagreement("Is there a mass?", said, "en", findings, VOCAB, unplaced) == expected
    assert answer_disagreement("是否有肿块？", "否", "zh", findings, VOCAB, unplaced) == (
        "注意：分类器判定肿块为阳性（71%），但图像中没有区域归属于它，故编码所见不包含肿块。"
    )
    # other labels as before; without the mapping, the plain presence check
    assert answer_disagreement("Is there a consolidation?", "yes", "en", findings, VOCAB, unplaced) is None
    assert answer_disagreement("Is there a mass?", "no", "en", findings, VOCAB) is None
    assert answer_disagreement("Is there a mass?", "yes", "en", findings, VOCAB) == (
        "Note: the coded findings do not include mass."
    )


def test_an_suvmax_answer_is_checked_against_the_highest_measured() -> None:
    findings = [_finding("hypermetabolic_lesion", "liver"), _finding("hypermetabolic_lesion", "right_upper_lobe")]
    findings[0].suv_max, findings[1].suv_max = 6.6, 11.2
    assert answer_disagreement("What is the highest SUVmax?", "11.2", "en", findings, VOCAB) is None
    assert answer_disagreement("最高SUVmax是多少？", "11.2。", "zh", findings, VOCAB) is None
    assert answer_disagreement("What is the highest SUVmax?", "6.6", "en", findings, VOCAB) == (
        "Note: the highest SUVmax of the coded findings is 11.2."
    )
    assert answer_disagreement("最活跃的高代谢病灶SUVmax是多少？", "9", "zh", findings, VOCAB) == (
        "注意：编码所见的最高SUVmax为11.2。"
    )
    # not judged: a non-numeric answer
    assert answer_disagreement("What is the highest SUVmax?", "none", "en", findings, VOCAB) is None
    # a number where none was measured (no lesion found, or a series without weight or dose) is noted
    for f in findings:
        f.suv_max = None
    assert answer_disagreement("What is the highest SUVmax?", "0", "en", findings, VOCAB) == (
        "Note: no SUVmax was measured in this study (no lesion found, or the series gives no SUV)."
    )
    assert answer_disagreement("最高SUVmax是多少？", "6.6", "zh", [], VOCAB) == (
        "注意：本检查未测得SUVmax（未发现病灶，或该序列无法计算SUV）。"
    )


def test_a_ratio_answer_is_always_noted_as_an_estimate() -> None:
    """No finding carries a cardiothoracic ratio: whatever number the decoder gives is flagged, in its language."""
    findings = [_finding("cardiomegaly", None)]
    assert answer_disagreement("What is the cardiothoracic ratio?", "0.55", "en", findings, VOCAB) == (
        "Note: the coded findings carry no cardiothoracic ratio (it is not measured); this answer is the text "
        "decoder's estimate."
    )
    assert (
        answer_disagreement("心胸比是多少？", "0.48", "zh", [], VOCAB)
        == "注意：编码所见不含心胸比（未测量）；该回答为文本解码器的估计。"
    )
