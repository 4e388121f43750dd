"""Bilingual renderer and per-language parsers: same facts in EN and ZH; the phantoms' varied wording parsed back."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.parse import (
    asks_count,
    asks_largest,
    asks_ratio,
    asks_side,
    asks_size,
    asks_uptake,
    fact,
    facts,
    parse,
    question_labels,
    yes_no,
)
from dicom_agent.inference.render import CONTEXT_FINDINGS, NORMAL, context_text, prompt_findings, render
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary, project_vocabulary
from models.synthetic import make_case
from tests.runtime.findings import finding

VOCAB: Vocabulary = project_vocabulary()
FOCAL_LOCATIONS = [k for k in VOCAB.locations if not k.endswith("pleura")]


def _finding(rng: random.Random, label: str) -> Finding:
    spec = VOCAB.labels[label]
    size = rng.choice([None, round(rng.uniform(2.0, 9.9), 1), round(rng.uniform(10, 90), 1)])
    location = laterality = None
    if spec.focal:
        location = rng.choice([*FOCAL_LOCATIONS, None])
        laterality = VOCAB.locations[location].laterality if location else None
    elif label != "cardiomegaly":
        laterality = rng.choice(["right", "left"])
        location = f"{laterality}_pleura" if rng.random() < 0.5 else None
    return Finding(
        label=label,
        code=Code(*spec.code),
        name_en=spec.name_en,
        name_zh=spec.name_zh,
        probability=rng.random(),
        present=rng.random() < 0.8,
        critical=spec.critical,
        location=location,
        laterality=laterality,
        size_mm=size,
    )


def _expected(findings: list[Finding]) -> set:
    return {fact(VOCAB, f.label, f.location, f.laterality, f.size_mm) for f in findings if f.present}


@pytest.mark.parametrize("seed", range(300))
def test_rendered_en_and_zh_parse_to_the_same_structured_findings(seed: int) -> None:
    rng = random.Random(seed)
    labels = rng.sample(sorted(VOCAB.labels), rng.randint(0, 4))
    findings = [_finding(rng, label) for label in labels]
    text = render(findings, ("en", "zh"), VOCAB)
    expected = _expected(findings)
    got_en = facts(parse(text["en"], "en", VOCAB), VOCAB)
    got_zh = facts(parse(text["zh"], "zh", VOCAB), VOCAB)
    assert got_en == expected, text["en"]
    assert got_zh == expected, text["zh"]
    if not expected:
        assert text == NORMAL
    for f in findings:
        if f.present:
            assert facts(parse(f.text_en or "", "en", VOCAB), VOCAB) == facts(
                parse(f.text_zh or "", "zh", VOCAB), VOCAB
            )


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_parser_reads_the_phantoms_report_templates(kind: str) -> None:
    """Every phantom report (varied EN and ZH wording) parses back to its ground-truth findings, place and size."""
    try:
        cases = [
            make_case(kind, seed, size=64, depth=16) if kind != "cxr" else make_case(kind, seed, size=64)
            for seed in range(40)
        ]
    except (ImportError, ModuleNotFoundError):
        pytest.skip(f"the phantoms branch has no {kind} generator yet")
    checked = 0
    for case in cases:
        truth = set()
        for lesion in case.lesions:
            size = None if lesion.label == "cardiomegaly" else lesion.size_mm  # reported as a ratio, not in mm
            truth.add(fact(VOCAB, lesion.label, lesion.location, lesion.laterality, size))
        for lang in ("en", "zh"):
            got = facts(parse(case.report[lang], lang, VOCAB), VOCAB)
            assert got == truth, (lang, case.report[lang])
        checked += len(case.lesions)
    assert checked > 20  # the sample really exercised findings, not only normal reports


def test_negations_are_not_findings() -> None:
    cases_en = [
        "No pleural effusion.",
        "There is no pneumothorax or consolidation.",
        "Without nodule.",
        "Pleural effusion is not seen.",
    ]
    for text in cases_en:
        parsed = parse(text, "en", VOCAB)
        assert parsed and all(p.negated for p in parsed), text
    for text in ["未见胸腔积液。", "双肺未见结节及肿块。", "无气胸。", "没有实变。"]:
        parsed = parse(text, "zh", VOCAB)
        assert parsed and all(p.negated for p in parsed), text
    mixed = parse("Nodule in the right upper lobe, measuring 8 mm; no pleural effusion.", "en", VOCAB)
    assert [(p.label, p.negated, p.location, p.size_mm) for p in mixed] == [
        ("nodule", False, "right_upper_lobe", 8.0),
        ("pleural_effusion", True, None, None),
    ]


def test_centimetres_and_plurals() -> None:
    (p,) = parse("Masses in the left lower lobe, 2.5 cm.", "en", VOCAB)
    assert (p.label, p.location, p.size_mm) == ("mass", "left_lower_lobe", 25.0)
    (q,) = parse("左肺下叶见肿块，大小约2.5厘米。", "zh", VOCAB)
    assert (q.label, q.location, q.size_mm) == ("mass", "left_lower_lobe", 25.0)


def test_yes_no_answers() -> None:
    assert yes_no("Yes.", "en") is True and yes_no("no", "en") is False and yes_no("maybe", "en") is None
    assert yes_no("是", "zh") is True and yes_no("否", "zh") is False and yes_no("不确定", "zh") is False


def test_context_text_names_critical_first_then_largest_first_and_is_capped() -> None:
    """The decoder's findings text: "the largest nodule" is the first nodule named; at most CONTEXT_FINDINGS."""
    rng = random.Random(7)
    findings = [_finding(rng, "nodule") for _ in range(5)] + [_finding(rng, "pneumothorax")]
    for f in findings:
        f.present = True
        f.location, f.location_en, f.location_zh, f.laterality = None, None, None, None
    findings[2].size_mm = 99.0
    text = context_text(findings, "en", VOCAB)
    assert text.startswith("Pneumothorax")  # critical first
    nodules = [f for f in parse(text, "en", VOCAB) if f.label == "nodule"]
    assert nodules[0].size_mm == 99.0
    many = findings + [_finding(rng, "mass") for _ in range(4)]
    for f in many:
        f.present = True
    assert len(parse(context_text(many, "zh", VOCAB), "zh", VOCAB)) == CONTEXT_FINDINGS
    assert context_text([], "zh", VOCAB) == NORMAL["zh"]


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_training_context_states_the_ground_truth_as_the_runtime_would(kind: str) -> None:
    """Stage 2 writes the ground truth with the runtime's renderer: parsed back, it is the phantom's findings."""
    from models.context import findings_of, findings_text

    for seed in range(30):
        case = make_case(kind, 1_000 + seed)
        lesions = [
            (les.label, les.location, les.laterality, les.size_mm, les.attrs.get("suv_max")) for les in case.lesions
        ]
        for lang in ("en", "zh"):
            text = findings_text(findings_of(lesions), lang)
            got = sorted(f.label for f in parse(text, lang, VOCAB) if not f.negated)
            if len(lesions) <= CONTEXT_FINDINGS:
                assert got == sorted(les.label for les in case.lesions), (kind, seed, text)
            else:
                assert len(got) == CONTEXT_FINDINGS


def test_context_about_a_question_states_only_what_it_names() -> None:
    """For a question the prompt states the findings of the labels it names, or that there are none."""
    rng = random.Random(3)
    findings = [_finding(rng, "nodule"), _finding(rng, "nodule"), _finding(rng, "pleural_effusion")]
    for f in findings:
        f.present = True
    assert question_labels("How large is the largest nodule?", "en", VOCAB) == {"nodule"}
    assert question_labels("右侧是否有胸腔积液？", "zh", VOCAB) == {"pleural_effusion"}
    assert question_labels("Is this study normal?", "en", VOCAB) == set()
    text = context_text(findings, "en", VOCAB, question_labels("How many nodules are there?", "en", VOCAB))
    assert [f.label for f in parse(text, "en", VOCAB)] == ["nodule", "nodule"]
    assert context_text(findings, "en", VOCAB, {"mass"}) == "No mass."
    assert context_text(findings, "zh", VOCAB, {"mass"}) == "未见肿块。"
    assert context_text(findings, "en", VOCAB, set()) == context_text(findings, "en", VOCAB)


@pytest.mark.parametrize("seed", range(60))
def test_suvmax_round_trips_in_both_languages(seed: int) -> None:
    """A lesion's SUVmax is stated with one decimal in EN and ZH and parsed back to the same lesion."""
    rng = random.Random(seed)
    findings = [_finding(rng, "hypermetabolic_lesion") for _ in range(rng.randint(1, 3))]
    for f in findings:
        f.present = True
        f.suv_max = rng.choice([None, round(rng.uniform(1.0, 30.0), 1)])
    text = render(findings, ("en", "zh"), VOCAB)
    want = sorted((round(f.size_mm or 0.0), f.suv_max or 0.0) for f in findings)
    for lang in ("en", "zh"):
        got = sorted((round(p.size_mm or 0.0), p.suv_max or 0.0) for p in parse(text[lang], lang, VOCAB))
        assert got == want, text[lang]
    assert "SUVmax" not in context_text(findings, "en", VOCAB)  # older decoders' prompts stay as trained


def test_parser_reads_the_phantoms_suvmax() -> None:
    """The PET phantoms' varied report wording ("SUVmax 8.3", "SUVmax约8.3", "(SUVmax 8.3)") parses back."""
    checked = 0
    for seed in range(40):
        case = make_case("pet", seed, size=64, depth=16)
        truth = sorted(float(les.attrs["suv_max"]) for les in case.lesions)
        for lang in ("en", "zh"):
            got = sorted(p.suv_max for p in parse(case.report[lang], lang, VOCAB) if p.suv_max is not None)
            assert got == truth, (lang, case.report[lang])
        checked += len(truth)
    assert checked > 10


@pytest.mark.parametrize(
    ("asks", "kind"),
    [
        (asks_uptake, "suv"),
        (asks_ratio, "ratio"),
        (asks_count, "count"),
        (asks_size, "size"),
        (asks_side, "laterality"),
    ],
)
def test_only_questions_of_their_kind_are_recognised(asks: Callable[[str], bool], kind: str) -> None:
    """Every phantom question about the most active lesion ("suv"), the cardiothoracic ratio ("ratio"), how many
    findings ("count") or the largest's size ("size"), EN and ZH, is recognised as such, no question of another
    kind is."""
    kinds: dict[bool, set[str]] = {True: set(), False: set()}
    for seed in range(30):
        for phantom in ("cxr", "ct", "pet"):
            for qa in make_case(phantom, seed, size=64, depth=16).qa:
                kinds[asks(qa.question)].add(qa.kind)
    assert kinds[True] == {kind} and kind not in kinds[False]


def test_an_uptake_question_gets_the_hottest_lesion_first() -> None:
    """For "What is the highest SUVmax?" the prompt names the hottest lesion alone; otherwise the largest first."""
    rng = random.Random(5)
    findings = [_finding(rng, "hypermetabolic_lesion") for _ in range(3)]
    for f, size, suv in zip(findings, (30.0, 12.0, 20.0), (4.1, 11.7, 6.0), strict=True):
        f.present, f.size_mm, f.suv_max = True, size, suv
    for lang, question in (("en", "What is the highest SUVmax?"), ("zh", "最高SUVmax是多少？")):
        (only,) = parse(prompt_findings(findings, lang, VOCAB, question, uptake=True), lang, VOCAB)
        assert (only.size_mm, only.suv_max) == (12.0, 11.7)
        largest = parse(prompt_findings(findings, lang, VOCAB, "How large is it?", uptake=True), lang, VOCAB)[0]
        assert (largest.size_mm, largest.suv_max) == (30.0, 4.1)
        plain = parse(prompt_findings(findings, lang, VOCAB, question, uptake=False), lang, VOCAB)
        assert plain[0].size_mm == 30.0 and all(p.suv_max is None for p in plain)


def _present(label: str, *places: tuple[str | None, str | None, float]) -> list[Finding]:
    """Present findings of one label at (location, laterality, size) each."""
    critical = VOCAB.labels[label].critical
    return [finding(label, location=loc, laterality=side, size_mm=mm, critical=critical) for loc, side, mm in places]


def test_a_count_question_gets_how_many_when_the_bundle_takes_answer_forms() -> None:
    """ "How many …?" is answered by a number the text states (answer forms on); an absent finding is not
    counted; other questions get the sentences."""
    lesions = _present(
        "hypermetabolic_lesion", ("mediastinum", None, 15.0), ("liver", None, 12.0), ("right_upper_lobe", "right", 9.0)
    )
    lesions.append(_present("hypermetabolic_lesion", ("liver", None, 20.0))[0])
    lesions[-1].present = False
    asked = {"en": "How many hypermetabolic lesions are there?", "zh": "有几个高代谢病灶？"}
    said = {lang: prompt_findings(lesions, lang, VOCAB, q, answer_forms=True) for lang, q in asked.items()}
    assert said == {"en": "3 hypermetabolic lesions.", "zh": "共有3个高代谢病灶。"}
    plain = prompt_findings(lesions, "en", VOCAB, asked["en"])
    assert len(parse(plain, "en", VOCAB)) == 3 and "3" not in plain  # older bundles: the sentences they know
    one = _present("nodule", ("left_lower_lobe", "left", 6.0))
    assert prompt_findings(one, "en", VOCAB, "How many nodules are seen?", answer_forms=True) == "1 nodule."
    assert prompt_findings(one, "zh", VOCAB, "共有多少个肿块？", answer_forms=True) == "未见肿块。"
    other = prompt_findings(lesions, "en", VOCAB, "Is there a hypermetabolic lesion?", answer_forms=True)
    assert [f.location for f in parse(other, "en", VOCAB)] == ["mediastinum", "liver", "right_upper_lobe"]


def test_a_question_about_the_largest_gets_it_alone() -> None:
    """ "Where is the largest …?" / "最大的…有多大？" (answer forms on): the largest finding of the label alone."""
    lesions = _present("nodule", ("left_lower_lobe", "left", 6.0), ("right_middle_lobe", "right", 14.0))
    lesions += _present("mass", ("left_upper_lobe", "left", 40.0))
    for lang, question in (("en", "Where is the largest nodule?"), ("zh", "最大的结节有多大？")):
        assert asks_largest(question)
        (only,) = parse(prompt_findings(lesions, lang, VOCAB, question, answer_forms=True), lang, VOCAB)
        assert (only.label, only.location, only.size_mm) == ("nodule", "right_middle_lobe", 14.0)
        assert len(parse(prompt_findings(lesions, lang, VOCAB, question), lang, VOCAB)) == 2
    kinds = {
        qa.kind
        for seed in range(20)
        for qa in make_case("pet", seed, size=64, depth=16).qa
        if asks_largest(qa.question)
    }
    assert kinds == {"location", "size"}


def test_sides_are_stated_as_the_questions_ask_them() -> None:
    """With answer forms, an English side follows the finding's name ("on the left", the question's token, not
    the sentence-initial "Left"); "Which side …?" about an effusion found left and right states it on both sides.
    The parser reads each back; without answer forms the impression's sentences stay."""
    both = _present("pleural_effusion", (None, "left", 30.0), (None, "right", 20.0))
    sides = {"en": "Which side is the pleural effusion on?", "zh": "胸腔积液在哪一侧？"}
    for lang, question in sides.items():
        text = prompt_findings(both, lang, VOCAB, question, answer_forms=True)
        assert text == {"en": "Pleural effusion on both sides.", "zh": "双侧胸腔积液。"}[lang]
        assert {(f.label, f.laterality) for f in parse(text, lang, VOCAB)} == {("pleural_effusion", "bilateral")}
        assert len(parse(prompt_findings(both, lang, VOCAB, question), lang, VOCAB)) == 2
    asked = "Is there a left pleural effusion?"
    for found, side in ((both[:1], "left"), (both[1:], "right")):
        text = prompt_findings(found, "en", VOCAB, asked, answer_forms=True)
        assert text.startswith(f"Pleural effusion on the {side}, measuring")
        assert [f.laterality for f in parse(text, "en", VOCAB)] == [side]
        assert prompt_findings(found, "en", VOCAB, asked).startswith(f"{side.capitalize()} pleural effusion, ")
    text = prompt_findings(both, "en", VOCAB, "Is there a pleural effusion?", answer_forms=True)
    assert [f.laterality for f in parse(text, "en", VOCAB)] == ["left", "right"]
    narrative = prompt_findings(both, "en", VOCAB, None, answer_forms=True)  # trained on the impression's form
    assert narrative == prompt_findings(both, "en", VOCAB) and narrative.startswith("Left pleural effusion")
