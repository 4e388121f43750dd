"""Reports and VQA: parsed back with the documented vocabulary, EN and ZH state the same facts as the truth."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

import pytest

from models.synthetic import Case, cases
from models.synthetic import text as T
from models.terminology import LABELS, LOCATIONS

SMALL = {"cxr": {"size": 128}, "ct": {"size": 64, "depth": 32}, "pet": {"size": 64, "depth": 48}}
N = {"cxr": 80, "ct": 12, "pet": 12}
PLEURAL = ("pleural_effusion", "pneumothorax")

Fact = tuple[str, str | None, str]


@cache
def batch(kind: str) -> tuple[Case, ...]:
    return tuple(cases(kind, N[kind], 500, **SMALL[kind]))


def _longest(sentence: str, names: dict[str, str]) -> str | None:
    hits = [key for key, name in names.items() if name in sentence]
    return max(hits, key=lambda key: len(names[key])) if hits else None


def parse(report: str, lang: str) -> list[Fact]:
    """A lexicon parser that relies only on the vocabulary documented in ``models.synthetic.text``."""
    facts: list[Fact] = []
    if lang == "en":
        sentences = [s for s in re.split(r"(?<=[.])\s+", report) if s]
        label_names = {k: v.name_en for k, v in LABELS.items()}
        loc_names = {k: v.name_en for k, v in LOCATIONS.items()}
    else:
        sentences = [s + "。" for s in report.split("。") if s]
        label_names = {k: v.name_zh for k, v in LABELS.items()}
        loc_names = {k: v.name_zh for k, v in LOCATIONS.items()}
    for sentence in sentences:
        low = sentence.lower() if lang == "en" else sentence
        label = _longest(low, label_names)
        if label is None:
            continue
        if label in PLEURAL:
            if lang == "en":
                side = re.search(r"\b(right|left)\b", low)
                where = side.group(1) if side else None
            else:
                where = "right" if "右侧" in low else "left" if "左侧" in low else None
        elif label == "cardiomegaly":
            where = None
        else:
            where = _longest(low, loc_names)
        if label == "cardiomegaly":
            number = re.search(r"(0\.\d\d)", low)
        elif lang == "en":
            number = re.search(r"(\d+) mm\b", low)
        else:
            number = re.search(r"(\d+)毫米", low)
        facts.append((label, where, number.group(1) if number else "?"))
    return sorted(facts, key=str)


def truth(case: Case) -> list[Fact]:
    facts: list[Fact] = []
    for lesion in case.lesions:
        if lesion.label == "cardiomegaly":
            facts.append((lesion.label, None, f"{lesion.attrs['ctr']:.2f}"))
        else:
            where = lesion.laterality if lesion.label in PLEURAL else lesion.location
            facts.append((lesion.label, where, str(T.mm(lesion.size_mm or 0))))
    return sorted(facts, key=str)


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_english_and_chinese_reports_state_the_same_facts_as_the_ground_truth(kind: str) -> None:
    for case in batch(kind):
        expected = truth(case)
        assert parse(case.report["en"], "en") == expected, case.report["en"]
        assert parse(case.report["zh"], "zh") == expected, case.report["zh"]


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_normal_studies_use_normal_wording_and_never_name_a_finding(kind: str) -> None:
    for case in batch(kind):
        if case.lesions:
            absent = set(LABELS) - case.labels
            for key in absent:
                assert LABELS[key].name_en not in case.report["en"].lower()
                assert LABELS[key].name_zh not in case.report["zh"]
        else:
            assert case.report["en"] in T.NORMAL_EN[kind]
            assert case.report["zh"] in T.NORMAL_ZH[kind]


def test_pet_reports_carry_the_suvmax_in_both_languages() -> None:
    for case in batch("pet"):
        for lesion in case.lesions:
            value = f"{lesion.attrs['suv_max']:.1f}"
            assert re.search(rf"SUVmax {re.escape(value)}\b", case.report["en"])
            assert re.search(rf"SUVmax\s*约?\s*{re.escape(value)}", case.report["zh"])


def test_wording_varies_across_cases() -> None:
    shapes: dict[str, Counter[str]] = {"en": Counter(), "zh": Counter()}
    for case in batch("cxr"):
        for lang in ("en", "zh"):
            for sentence in re.split(r"(?<=[.。])\s*", case.report[lang]):
                if "nodule" in sentence.lower() or "结节" in sentence:
                    shapes[lang][re.sub(r"\d+", "N", sentence)[:12]] += 1
    assert len(shapes["en"]) >= 3 and len(shapes["zh"]) >= 3


_YES = {"en": "yes", "zh": "是"}
_NO = {"en": "no", "zh": "否"}


def _largest(case: Case, label: str):  # type: ignore[no-untyped-def]
    return max((les for les in case.lesions if les.label == label), key=lambda les: les.size_mm or 0)


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_vqa_answers_agree_with_the_ground_truth(kind: str) -> None:
    kinds_seen: set[str] = set()
    for case in batch(kind):
        by_lang = Counter(q.lang for q in case.qa)
        assert by_lang["en"] == by_lang["zh"]  # every fact is asked in both languages
        for q in case.qa:
            kinds_seen.add(q.kind)
            assert q.kind in T.QA_KINDS
            names = {LABELS[k].name_en if q.lang == "en" else LABELS[k].name_zh: k for k in LABELS}
            label = (
                names[max((n for n in names if n in q.question), key=len)]
                if q.kind
                not in (
                    "normal",
                    "ratio",
                    "suv",
                )
                else None
            )
            if q.kind == "presence":
                assert q.answer == (_YES if label in case.labels else _NO)[q.lang]
            elif q.kind == "presence_side":
                side = "right" if ("right" in q.question or "右侧" in q.question) else "left"
                present = any(les.label == label and les.laterality == side for les in case.lesions)
                assert q.answer == (_YES if present else _NO)[q.lang]
            elif q.kind == "laterality":
                sides = {les.laterality for les in case.lesions if les.label == label}
                which = "bilateral" if len(sides) > 1 else sides.pop()
                assert q.answer == (T.SIDE_EN if q.lang == "en" else T.SIDE_ZH)[which]
            elif q.kind == "location":
                loc = LOCATIONS[_largest(case, label).location]
                assert q.answer == (loc.name_en if q.lang == "en" else loc.name_zh)
            elif q.kind == "size":
                n = T.mm(_largest(case, label).size_mm)
                assert q.answer == (f"{n} mm" if q.lang == "en" else f"{n}毫米")
            elif q.kind == "count":
                assert q.answer == str(sum(1 for les in case.lesions if les.label == label))
            elif q.kind == "normal":
                assert q.answer == (_NO if case.lesions else _YES)[q.lang]
            elif q.kind == "ratio":
                assert q.answer == f"{case.meta['ctr']:.2f}"
            elif q.kind == "suv":
                assert q.answer == f"{max(les.attrs['suv_max'] for les in case.lesions):.1f}"
    assert {"presence", "count", "normal"} <= kinds_seen
    if kind == "cxr":
        assert {"presence_side", "laterality", "location", "size", "ratio"} <= kinds_seen


def test_the_brief_examples_are_asked() -> None:
    questions = {q.question for case in batch("cxr") for q in case.qa}
    assert "Is there a pleural effusion?" in questions
    assert "左侧是否有胸腔积液？" in questions
    assert "Where is the largest nodule?" in questions
    assert "How large is the largest nodule?" in questions
