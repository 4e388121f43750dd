"""Deterministic bilingual text from structured findings: the report text of record.

Every sentence is built from the same fields (label, location, laterality, size, PET SUVmax) and the names in
the bundle's vocabulary, so the English and the Chinese text state exactly the same facts (a feasibility run measured
EN/ZH agreement 1.00 this way against 0.61 for a free-running decoder; see model notes). :mod:`parse` reads
these sentences back, and a test checks parse(EN) == parse(ZH) == the structured findings.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from dicom_agent.inference.parse import asks_count, asks_largest, asks_side, asks_uptake, question_labels
from dicom_agent.inference.types import LANGUAGES, Finding
from dicom_agent.inference.vocabulary import LATERALITY_EN, LATERALITY_ZH, Vocabulary

NORMAL = {"en": "No abnormality detected.", "zh": "未见明显异常。"}
ABSENT = {"en": "No {name}.", "zh": "未见{name}。"}  # a label a question names but the heads did not find
# the prompt wording of bundles trained on it (manifest ``prompts.context_answer_forms``): a count for "How many
# …?", both sides for "Which side …?" when a label's findings lie on both (the answer is then a word of the text)
COUNT = {"en": "{count} {names}.", "zh": "共有{count}个{name}。"}
BOTH_SIDES = {"en": "{Name} on both sides.", "zh": "双侧{name}。"}
CONTEXT_FINDINGS = 6  # findings in the decoder's prompt at most: it has 192 positions in all


def format_mm(size_mm: float) -> str:
    """Sizes in whole millimetres, as the Fleischner Society asks for nodules (2017: rounded to the nearest
    millimetre; a decimal claims a precision no measurement has) and as the phantoms' reports write them.
    The SR's NUM keeps the measured value to 0.1 mm."""
    return str(max(1, round(size_mm)))


def format_suv(suv_max: float) -> str:
    """SUVmax with one decimal, as PET reports state it."""
    return f"{suv_max:.1f}"


def plural_en(name: str, count: int) -> str:
    """An English finding name for ``count`` of them (the countable ones: nodules, masses, lesions)."""
    return name if count == 1 else name + ("es" if name.endswith("s") else "s")


def sentence(
    finding: Finding, lang: str, vocabulary: Vocabulary | None = None, uptake: bool = True, side_after: bool = False
) -> str:
    """One sentence for one present finding, in ``lang`` ("en" or "zh"); ``uptake``: with its SUVmax, if any;
    ``side_after``: an English side after the name ("Pleural effusion on the left"), as questions say it, not as
    the capital at the head of the sentence ("Left pleural effusion"), which is another token."""
    spec = vocabulary.labels.get(finding.label) if vocabulary else None
    location = vocabulary.location(finding.location) if vocabulary else None
    location_en = location.name_en if location else finding.location_en
    location_zh = location.name_zh if location else finding.location_zh
    laterality = finding.laterality or (location.laterality if location else None)
    if spec is not None and not spec.focal:  # pleural and global findings are named by their side only
        location_en = location_zh = None
    suv = format_suv(finding.suv_max) if uptake and finding.suv_max is not None else None
    if lang == "en":
        return _sentence_en(finding, location_en, laterality, suv, side_after)
    if lang == "zh":
        return _sentence_zh(finding, location_zh, laterality, suv)
    raise ValueError(f"unsupported report language {lang!r}")


def _sentence_en(
    finding: Finding, location: str | None, laterality: str | None, suv: str | None, side_after: bool
) -> str:
    name = finding.name_en
    if location:
        text = f"{name[:1].upper()}{name[1:]} in the {location}"
    elif side_after and laterality in LATERALITY_EN:
        side = "both sides" if laterality == "bilateral" else f"the {LATERALITY_EN[laterality]}"
        text = f"{name[:1].upper()}{name[1:]} on {side}"
    elif laterality in LATERALITY_EN:
        text = f"{LATERALITY_EN[laterality].capitalize()} {name.lower()}"
    else:
        text = f"{name[:1].upper()}{name[1:]}"
    if finding.size_mm is not None:
        text += f", measuring {format_mm(finding.size_mm)} mm"
    if suv is not None:
        text += f", SUVmax {suv}"
    return text + "."


def _sentence_zh(finding: Finding, location: str | None, laterality: str | None, suv: str | None) -> str:
    if location:
        text = f"{location}见{finding.name_zh}"
    elif laterality in LATERALITY_ZH:
        text = f"{LATERALITY_ZH[laterality]}见{finding.name_zh}"
    else:
        text = f"可见{finding.name_zh}"
    if finding.size_mm is not None:
        text += f"，大小约{format_mm(finding.size_mm)}毫米"
    if suv is not None:
        text += f"，SUVmax {suv}"
    return text + "。"


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Present findings, critical ones first, then by descending probability (stable and deterministic)."""
    present = [f for f in findings if f.present]
    return sorted(present, key=lambda f: (not f.critical, -round(f.probability, 6), f.label, f.location or ""))


def impression(findings: Iterable[Finding], lang: str, vocabulary: Vocabulary | None = None) -> str:
    """The impression: one sentence per present finding, or the normal-study sentence."""
    return _sentences(ordered(findings), lang, vocabulary)


def join_sentences(sentences: Iterable[str | None], lang: str) -> str:
    """Sentences as one text in ``lang``: spaced in English, unspaced in Chinese (each ends in 。); empty ones
    left out."""
    return (" " if lang == "en" else "").join(s for s in sentences if s)


def _sentences(
    present: list[Finding], lang: str, vocabulary: Vocabulary | None, uptake: bool = True, side_after: bool = False
) -> str:
    """The findings' sentences in the given order, or the normal-study sentence."""
    if not present:
        return NORMAL[lang]
    return join_sentences((sentence(f, lang, vocabulary, uptake, side_after) for f in present), lang)


def render(findings: list[Finding], languages: Iterable[str], vocabulary: Vocabulary | None = None) -> dict[str, str]:
    """Fills each present finding's ``text_en``/``text_zh`` and returns the impression per language."""
    languages = tuple(languages)
    for finding in findings:
        if finding.present:
            finding.text_en = sentence(finding, "en", vocabulary)
            finding.text_zh = sentence(finding, "zh", vocabulary)
    return {lang: impression(findings, lang, vocabulary) for lang in languages if lang in LANGUAGES}


def context_text(
    findings: Iterable[Finding],
    lang: str,
    vocabulary: Vocabulary | None = None,
    about: Collection[str] | None = None,
    uptake: bool = False,
    hottest_first: bool = False,
    answer_forms: bool = False,
    question: str = "",
) -> str:
    """The findings text a decoder prompt starts with (bundles whose manifest has a ``context`` template), so
    answers bind to the heads' results: present findings, critical ones first, then grouped by label with the
    largest first (the answer to "the largest nodule" is the first one named), at most ``CONTEXT_FINDINGS``.

    ``uptake``: with each lesion's SUVmax (bundles trained on such text, manifest ``prompts.context_uptake``);
    ``hottest_first``: only the finding with the highest SUVmax (a question about the most active lesion: its
    answer is the one number after "SUVmax" in the text, which a copy head finds without telling lesions apart).

    ``about``: the labels a question names (:func:`dicom_agent.inference.parse.question_labels`); only their
    findings are stated, or "No <finding>." for each when there are none — the decoder reads a short relevant
    text instead of searching the whole impression (in a 400-step run it did not learn that search).

    ``answer_forms`` (bundles trained on it, manifest ``prompts.context_answer_forms``): each answer in the
    words the question asks it with, so that the decoder copies it. English sides after the finding's name
    ("Pleural effusion on the right"; the decoder of 0.12.0 answered "Is there a left pleural effusion?" alike
    for "Right pleural effusion." and "Left pleural effusion."); for a ``question`` asking how many, the count of
    each label it names instead of the sentences ("3 hypermetabolic lesions."; 0.12.0 answered "2" for 3 or 4
    listed lesions); for one asking which side, a label found on both as one sentence ("Pleural effusion on both
    sides."; 0.12.0 answered the first side named); for one asking about the largest, that finding of each label
    alone (0.12.0 answered "liver", a place the text did not name, to every text naming the mediastinum first;
    a decoder trained longer on the forms above answered "mediastinum" for that sentence alone, "liver" still
    when a lung lesion followed)."""
    present = sorted(
        (f for f in findings if f.present),
        key=lambda f: (not f.critical, f.label, -(f.size_mm or 0.0), f.location or ""),
    )
    if hottest_first:
        present = sorted(present, key=lambda f: -(f.suv_max if f.suv_max is not None else -1.0))[:1]
    if about:
        present = [f for f in present if f.label in about]
        if not present and vocabulary is not None:
            names = [vocabulary.labels[key] for key in sorted(about) if key in vocabulary.labels]
            return join_sentences((_absent(spec.name_en, spec.name_zh, lang) for spec in names), lang)
        if answer_forms and asks_count(question) and vocabulary is not None:
            return join_sentences((_count(vocabulary, key, present, lang) for key in sorted(about)), lang)
        if answer_forms and asks_side(question):
            return _sided(present[:CONTEXT_FINDINGS], lang, vocabulary, uptake)
        if answer_forms and asks_largest(question):  # the largest of each label: it is named first
            present = [f for i, f in enumerate(present) if i == 0 or present[i - 1].label != f.label]
    return _sentences(present[:CONTEXT_FINDINGS], lang, vocabulary, uptake, side_after=answer_forms)


def _absent(name_en: str, name_zh: str, lang: str) -> str:
    return ABSENT[lang].format(name=name_en if lang == "en" else name_zh)


def _count(vocabulary: Vocabulary, label: str, present: list[Finding], lang: str) -> str | None:
    """How many findings of ``label`` there are, as a sentence ("No <finding>." for none)."""
    spec = vocabulary.labels.get(label)
    if spec is None:
        return None
    count = sum(f.label == label for f in present)
    if count == 0:
        return _absent(spec.name_en, spec.name_zh, lang)
    name = spec.name_en if lang == "en" else spec.name_zh
    return COUNT[lang].format(count=count, names=plural_en(name, count), name=name)


def _sided(present: list[Finding], lang: str, vocabulary: Vocabulary | None, uptake: bool) -> str:
    """The findings' sentences, those of a label found on both sides as one "on both sides" sentence."""
    sides: dict[str, set[str | None]] = {}
    for f in present:
        sides.setdefault(f.label, set()).add(f.laterality)
    both = {key for key, seen in sides.items() if "bilateral" in seen or {"left", "right"} <= seen}
    said: set[str] = set()
    out: list[str] = []
    for f in present:
        if f.label not in both:
            out.append(sentence(f, lang, vocabulary, uptake, side_after=True))
        elif f.label not in said:
            said.add(f.label)
            name = f.name_en if lang == "en" else f.name_zh
            out.append(BOTH_SIDES[lang].format(Name=name[:1].upper() + name[1:], name=name))
    return join_sentences(out, lang)


def prompt_findings(
    findings: Iterable[Finding],
    lang: str,
    vocabulary: Vocabulary,
    question: str | None = None,
    uptake: bool = False,
    answer_forms: bool = False,
) -> str:
    """The findings text for a decoder prompt about ``question`` (or for the narrative when None): the one
    place that turns a question into :func:`context_text`'s choices, for the runtime and for training alike.
    Answer forms are for questions: the narrative's prompt keeps the impression's sentences, as in training."""
    about = question_labels(question, lang, vocabulary) if question else None
    hottest = bool(question) and uptake and asks_uptake(question or "")
    forms = bool(question) and answer_forms
    return context_text(findings, lang, vocabulary, about, uptake, hottest, answer_forms=forms, question=question or "")
